"""The `CMS` module (SPEC §4): a chain of `cms_level`s, fastest first."""
import pytest
import torch

from nested_kernels.cms import CMSState, cms_level
from nested_kernels.modules.cms import CMS

D = 8
LEVELS = [(12, 2), (10, 4)]


def make_module(dtype=torch.float64, backend="torch", **kw):
    torch.manual_seed(42)
    return CMS(D, LEVELS, lr=0.05, retention=0.95, backend=backend, **kw).to(dtype)


def test_forward_backward_reaches_every_level():
    cms = make_module(torch.float32)
    x = torch.randn(2, 11, D, requires_grad=True)
    y, state = cms(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    assert len(state) == len(LEVELS)
    for s, (hidden, _) in zip(state, LEVELS):
        assert isinstance(s, CMSState)
        assert s.w1.shape == (2, D, hidden) and s.w2.shape == (2, hidden, D)
    (y.square().sum() + sum(s.w1.sum() + s.w2.sum() for s in state)).backward()
    for name, p in cms.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
        assert torch.isfinite(p.grad).all(), name
    assert x.grad is not None and torch.isfinite(x.grad).all()


def test_levels_chain_fastest_first():
    """The module is level 0 then level 1 of `cms_level`, each reconstructing its own input."""
    cms = make_module()
    x = torch.randn(2, 9, D, dtype=torch.float64)
    y, _ = cms(x)
    h = x
    for i, (_, period) in enumerate(LEVELS):
        lr = cms.inner_lr()[i].expand(2, 9)
        h, _ = cms_level(h, cms.w1[i], cms.w2[i], period=period, lr=lr, retention=0.95, target=h)
    torch.testing.assert_close(y, h, atol=1e-12, rtol=1e-12)


def test_init_is_near_identity_and_lr_as_given():
    cms = make_module(torch.float32)
    torch.testing.assert_close(cms.inner_lr(), torch.full((2,), 0.05))
    x = torch.randn(2, 5, D)
    y, _ = cms(x)
    assert (y - x).abs().max() < 0.5


@pytest.mark.parametrize("split", [4, 8])
@pytest.mark.parametrize("teach", ["self", "grad_y"])
def test_state_chaining(split, teach):
    """Two calls split at a multiple of every period, state passed on, equal one call."""
    cms = make_module()
    x = torch.randn(2, 12, D, dtype=torch.float64)
    g = torch.randn(2, 12, D, dtype=torch.float64) if teach == "grad_y" else None
    kw = lambda sl: {} if g is None else {"grad_y": g[:, sl]}
    y, state = cms(x, **kw(slice(None)))
    y1, s1 = cms(x[:, :split], **kw(slice(None, split)))
    y2, s2 = cms(x[:, split:], state=s1, **kw(slice(split, None)))
    torch.testing.assert_close(torch.cat([y1, y2], 1), y, atol=1e-12, rtol=1e-12)
    for a, b in zip(s2, state):
        torch.testing.assert_close(a.w1, b.w1, atol=1e-12, rtol=1e-12)
        torch.testing.assert_close(a.w2, b.w2, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("teach", ["self", "target", "grad_y"])
def test_backends_agree(teach):
    ref, fast = make_module(backend="reference"), make_module(backend="torch")
    x = torch.randn(2, 7, D, dtype=torch.float64)
    signal = {} if teach == "self" else {teach: torch.randn(2, 7, D, dtype=torch.float64)}
    outs = []
    for m in (ref, fast):
        y, state = m(x, **signal)
        (y.sin().sum() + sum((s.w1.cos().sum() + s.w2.cos().sum()) for s in state)).backward()
        outs.append((y, state, {n: p.grad for n, p in m.named_parameters()}))
    (y_r, s_r, g_r), (y_t, s_t, g_t) = outs
    torch.testing.assert_close(y_t, y_r, atol=1e-10, rtol=1e-10)
    for a, b in zip(s_t, s_r):
        torch.testing.assert_close(a.w1, b.w1, atol=1e-10, rtol=1e-10)
        torch.testing.assert_close(a.w2, b.w2, atol=1e-10, rtol=1e-10)
    for name in g_r:
        torch.testing.assert_close(g_t[name], g_r[name], atol=1e-10, rtol=1e-10, msg=lambda m, n=name: f"{n}: {m}")


def test_bad_arguments():
    with pytest.raises(ValueError, match="levels"):
        CMS(D, [])
    with pytest.raises(ValueError, match="lr"):
        CMS(D, LEVELS, lr=0.0)
    cms = make_module()
    x = torch.randn(2, 4, D, dtype=torch.float64)
    with pytest.raises(ValueError, match="state"):
        cms(x, state=[None])
