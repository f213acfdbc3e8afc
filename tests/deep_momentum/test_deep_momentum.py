"""`deep_momentum` (DMGD, SPEC §5) and the `DeepMomentum` optimiser: the torch tier against the
definition, finite differences of the gradient and of the gradient-of-gradient, the optimiser
and its functional form against a plain loop, state round trips, meta-learning, bad arguments."""
import io

import pytest
import torch

from nested_kernels.deep_momentum import MLPMemoryState, deep_momentum, mlp_read
from nested_kernels.optim.deep_momentum import DeepMomentum, DMGDMeta, DMGDParamState, default_phi0, functional_step
from tests.helpers import F64, assert_all_close, grads, leaves, loss_with_state, rms_ratio, state_leaves

NAMES = ("update", "w1", "w2", "s1", "s2")
GRAD_NAMES = ("dgrad", "dw1", "dw2", "ds1", "ds2", "dlr_inner", "dretention", "dlr", "dmomentum")


@pytest.fixture(autouse=True)
def one_thread():
    """These ops are tiny: a second CPU thread only adds synchronisation (10× slower on a loaded 2-core box)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def phi_state(batch, d, Dh, *, momentum, shared, dtype=F64):
    lead = () if shared else tuple(batch)
    return MLPMemoryState(
        torch.randn(*lead, d, Dh, dtype=dtype) / d**0.5,
        torch.randn(*lead, Dh, d, dtype=dtype) / Dh**0.5,
        0.1 * torch.randn(*batch, d, Dh, dtype=dtype) if momentum else None,
        0.1 * torch.randn(*batch, Dh, d, dtype=dtype) if momentum else None,
    )


def gate_values(batch, *, per_matrix, momentum, dtype=F64):
    shape = tuple(batch) if per_matrix else ()
    eta = 0.5 * torch.rand(shape, dtype=dtype)
    alpha = 0.5 + 0.5 * torch.rand(shape, dtype=dtype)
    lr = 0.1 + torch.rand(shape, dtype=dtype)
    mu = 0.9 * torch.rand(shape, dtype=dtype) if momentum else None
    return eta, alpha, lr, mu


def run(backend, g, state, eta, alpha, lr, mu, activation="silu"):
    g, eta, alpha, lr, mu = leaves(g, eta, alpha, lr, mu)
    state = state_leaves(state)
    update, new = deep_momentum(g, state, lr_inner=eta, retention=alpha, lr=lr, momentum=mu,
                                activation=activation, backend=backend)
    dx = grads(loss_with_state(update, new), [g, *state, eta, alpha, lr, mu])
    return (update, *new), dx


CASES = [
    # batch, n, d, Dh, momentum, shared φ, per-matrix gates, activation
    ((), 5, 4, 6, False, True, False, "silu"),
    ((), 7, 3, 8, True, True, False, "gelu"),
    ((3,), 4, 5, 3, True, True, True, "silu"),
    ((2, 2), 3, 4, 4, False, False, True, "gelu"),
    ((2,), 1, 6, 5, True, False, False, "silu"),
]


@pytest.mark.parametrize("batch,n,d,Dh,use_mom,shared,per_matrix,act", [
    pytest.param(*c, id="batch{}-n{}-d{}-Dh{}-mom{}-shared{}-gates{}-{}".format(*c)) for c in CASES])
def test_deep_momentum(batch, n, d, Dh, use_mom, shared, per_matrix, act):
    """The torch tier (one mlp_memory chunk step) against the definition, outputs and every gradient."""
    g = torch.randn(*batch, n, d, dtype=F64)
    state = phi_state(batch, d, Dh, momentum=use_mom, shared=shared)
    gates = gate_values(batch, per_matrix=per_matrix, momentum=use_mom)
    ref_out, ref_grads = run("reference", g, state, *gates, activation=act)
    out, out_grads = run("torch", g, state, *gates, activation=act)
    assert out[1].shape == (*batch, d, Dh) and out[2].shape == (*batch, Dh, d)
    assert_all_close(NAMES, ref_out, out)
    assert_all_close(GRAD_NAMES, ref_grads, out_grads)


def _gradcheck_inputs(momentum):
    batch, n, d, Dh = (2,), 3, 2, 3
    g = torch.randn(*batch, n, d, dtype=F64)
    state = phi_state(batch, d, Dh, momentum=momentum, shared=True)
    eta, alpha, lr, mu = gate_values(batch, per_matrix=True, momentum=momentum)
    return leaves(g, eta, alpha, lr, mu, *state)


def _fn(activation, backend="torch"):
    def fn(g, eta, alpha, lr, mu, w1, w2, s1, s2):
        update, new = deep_momentum(g, MLPMemoryState(w1, w2, s1, s2), lr_inner=eta, retention=alpha, lr=lr,
                                    momentum=mu, activation=activation, backend=backend)
        return (update, *(x for x in new if x is not None))
    return fn


@pytest.mark.parametrize("act", ["silu", "gelu"])
@pytest.mark.parametrize("use_mom", [False, True], ids=["mom0", "mom1"])
def test_deep_momentum_gradcheck(act, use_mom):
    """Finite differences w.r.t. grad, φ (w1, w2, s1, s2), η, α, lr and μ, both tiers."""
    inputs = _gradcheck_inputs(use_mom)
    assert torch.autograd.gradcheck(_fn(act), inputs)
    assert torch.autograd.gradcheck(_fn(act, "reference"), inputs)


@pytest.mark.parametrize("act", ["silu", "gelu"])
def test_deep_momentum_gradgradcheck(act):
    """Second derivatives (the meta-gradient of a meta-gradient) by finite differences."""
    inputs = _gradcheck_inputs(True)
    assert torch.autograd.gradgradcheck(_fn(act), inputs)


def test_deep_momentum_special_cases():
    """B = 0 makes m the identity and freezes the memory (plain SGD); η = 0, α = 1 keeps φ."""
    n, d, Dh = 4, 3, 5
    g = torch.randn(n, d, dtype=F64)
    w1 = torch.randn(d, Dh, dtype=F64)
    update, new = deep_momentum(g, MLPMemoryState(w1, torch.zeros(Dh, d, dtype=F64)), lr_inner=0.3,
                                retention=0.8, lr=0.1)
    assert_all_close(("update", "w1", "w2"), (0.1 * g, 0.8 * w1, torch.zeros(Dh, d, dtype=F64)), (update, *new[:2]))
    w2 = torch.randn(Dh, d, dtype=F64)
    update, new = deep_momentum(g, MLPMemoryState(w1, w2), lr_inner=0.0, retention=1.0, lr=0.1)
    assert_all_close(("update", "w1", "w2"), (0.1 * mlp_read(g, w1, w2), w1, w2), (update, *new[:2]))


def test_deep_momentum_batch_is_independent_matrices():
    """A batch [..., n, d] with a shared φ_0 is one call per matrix; the shared gradient sums over them."""
    batch, n, d, Dh = 3, 4, 3, 6
    g = torch.randn(batch, n, d, dtype=F64)
    w1, w2 = leaves(*phi_state((), d, Dh, momentum=False, shared=True)[:2])
    update, new = deep_momentum(g, MLPMemoryState(w1, w2), lr_inner=0.2, retention=0.9, lr=0.3, momentum=0.5)
    total = (update.sum() + new.w1.pow(2).sum() + new.s2.sum())
    dw1 = torch.autograd.grad(total, w1)[0]
    expected = torch.zeros_like(dw1)
    for b in range(batch):
        u_b, n_b = deep_momentum(g[b], MLPMemoryState(w1, w2), lr_inner=0.2, retention=0.9, lr=0.3, momentum=0.5)
        assert_all_close(NAMES, (u_b, *n_b), (update[b], *(x[b] for x in new)))
        expected += torch.autograd.grad(u_b.sum() + n_b.w1.pow(2).sum() + n_b.s2.sum(), w1)[0]
    torch.testing.assert_close(dw1, expected, atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_deep_momentum_low_precision(dtype):
    """fp32 state and accumulation for fp32/bf16 gradients; the update has the gradient's dtype."""
    n, d, Dh = 16, 8, 16
    g = torch.randn(4, n, d)
    state = phi_state((4,), d, Dh, momentum=True, shared=True, dtype=torch.float32)
    ref_u, ref_s = deep_momentum(g.double(), MLPMemoryState(*(x.double() for x in state)), lr_inner=0.1,
                                 retention=0.9, lr=0.1, momentum=0.9, backend="reference")
    update, new = deep_momentum(g.to(dtype), state, lr_inner=0.1, retention=0.9, lr=0.1, momentum=0.9)
    assert update.dtype == dtype and all(x.dtype == torch.float32 for x in new)
    bound = 1e-5 if dtype == torch.float32 else 1e-2
    for name, r, o in zip(NAMES, (ref_u, *ref_s), (update, *new)):
        assert rms_ratio(r, o) <= bound, (name, rms_ratio(r, o))


# --- the optimiser ----------------------------------------------------------------------------

def _grads(w, b, x, y):
    """∂/∂(W, b) of ½ mean ‖x Wᵀ + b − y‖², in closed form."""
    r = (x @ w.T + b - y) / x.shape[0]
    return r.T @ x, r.sum(0)


def _regression(seed=0, n=4, d=5, N=16):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(N, d, generator=gen, dtype=F64)
    y = torch.randn(N, n, generator=gen, dtype=F64)
    w0 = torch.randn(n, d, generator=gen, dtype=F64) * 0.3
    return x, y, w0, torch.zeros(n, dtype=F64)


def _loss(w, b, x, y):
    return 0.5 * (x @ w.T + b - y).pow(2).sum(-1).mean()


@pytest.mark.parametrize("use_mom", [False, True], ids=["mom0", "mom1"])
def test_deep_momentum_optimizer_three_steps(use_mom):
    """3 optimiser steps = 3 steps of the plain definition (reference tier) on W and heavy ball on b,
    for DeepMomentum.step, functional_step and the torch tier."""
    x, y, w0, b0 = _regression()
    d, Dh, lr, beta = w0.shape[1], 6, 0.2, 0.7
    phi0 = default_phi0(d, Dh, init_scale=0.5, dtype=F64)
    mu = 0.6 if use_mom else None
    gates = dict(lr_inner=0.3, retention=0.95, lr=lr, momentum=mu)

    # plain loop of the definitions
    w, b, phi, buf, expected = w0.clone(), b0.clone(), MLPMemoryState(*phi0), None, []
    for _ in range(3):
        gw, gb = _grads(w, b, x, y)
        update, phi = deep_momentum(gw, phi, **gates, backend="reference")
        buf = gb if buf is None else beta * buf + gb
        w, b = w - update, b - lr * buf
        expected.append((w, b, *phi))

    # the optimiser
    W, B = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(b0.clone())
    opt = DeepMomentum([W, B], lr=lr, lr_inner=0.3, retention=0.95, momentum=mu, phi0=phi0, fallback_momentum=beta)
    for i in range(3):
        opt.zero_grad()
        _loss(W, B, x, y).backward()
        opt.step()
        st = opt.state[W]
        assert_all_close(("w", "b", "w1", "w2", "s1", "s2"), expected[i],
                         (W.detach(), B.detach(), st["w1"], st["w2"], st.get("s1"), st.get("s2")))

    # the functional form, from a DMGDMeta
    params, states = [w0.clone(), b0.clone()], None
    meta = DMGDMeta(*phi0, **gates)
    for i in range(3):
        params, states = functional_step(params, list(_grads(*params, x, y)), meta, states, fallback_momentum=beta)
        assert_all_close(("w", "b", "w1", "w2", "s1", "s2"), expected[i], (*params, *states[0].phi))
    assert states[1].buf is not None and states[0].step == 3

    # the torch tier alone (b follows the plain loop)
    w, b, phi = w0.clone(), b0.clone(), MLPMemoryState(*phi0)
    for i in range(3):
        update, phi = deep_momentum(_grads(w, b, x, y)[0], phi, **gates, backend="torch")
        w, b = w - update, expected[i][1]
        assert_all_close(("w", "w1", "w2", "s1", "s2"), (expected[i][0], *expected[i][2:]), (w, *phi))


def test_deep_momentum_optimizer_state_dict():
    """Save after 2 steps, load into a fresh optimiser on copies, 2 more steps: identical; the
    memory's fp32 state stays fp32 for a bf16 parameter; >2-d params are [shape[0], -1] matrices."""
    torch.manual_seed(0)
    shapes = [(4, 6), (3, 2, 3), (5,)]

    def make():
        ps = [torch.nn.Parameter(torch.randn(s, generator=torch.Generator().manual_seed(i))) for i, s in enumerate(shapes)]
        ps.append(torch.nn.Parameter(torch.randn(4, 8).bfloat16()))
        return ps

    def step(opt, ps, k):
        for i in range(k):
            opt.zero_grad()
            sum((p.float() * torch.cos(p.float() + i)).sum() for p in ps).backward()
            opt.step()

    kw = dict(lr=0.05, lr_inner=0.2, retention=0.9, momentum=0.5, hidden=8, precondition="rms")
    ps = make()
    opt = DeepMomentum(ps, **kw)
    step(opt, ps, 2)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    copies = [torch.nn.Parameter(p.detach().clone()) for p in ps]
    opt2 = DeepMomentum(copies, **dict(kw, lr=1.0, seed=5))                  # loaded state and groups win
    buffer.seek(0)
    opt2.load_state_dict(torch.load(buffer))
    assert opt2.state[copies[3]]["w1"].dtype == torch.float32
    assert opt.state[ps[1]]["w1"].shape == (6, 8)                             # [3, 2, 3] viewed as [3, 6]
    step(opt, ps, 2)
    step(opt2, copies, 2)
    for p, q in zip(ps, copies):
        torch.testing.assert_close(q, p, atol=0, rtol=0)
        for key, value in opt.state[p].items():
            torch.testing.assert_close(opt2.state[q][key], value, atol=0, rtol=0, msg=lambda m: f"{key}: {m}")


# --- meta-learning ----------------------------------------------------------------------------

def test_deep_momentum_meta_learning():
    """Learning φ_0 by a few outer Adam steps through K = 5 inner DMGD steps lowers the loss after
    the inner loop on held-out tasks of an ill-conditioned regression family (fixed seeds)."""
    d, n, N, K, Dh = 6, 3, 24, 5, 12
    gen = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=F64))
    root = q @ torch.diag(torch.logspace(0, -1.5, d, dtype=F64).sqrt()) @ q.T    # Σ^{1/2}, cond 10^1.5

    def tasks(num, gen):
        x = torch.randn(num, N, d, generator=gen, dtype=F64) @ root
        return x, x @ torch.randn(num, n, d, generator=gen, dtype=F64).transpose(-1, -2)

    def loss_after_inner_loop(w1, w2, x, y):
        meta = DMGDMeta(w1, w2, lr_inner=0.1, retention=1.0, lr=0.5)
        xx, yx = x.transpose(-1, -2) @ x / N, y.transpose(-1, -2) @ x / N
        w, states = x.new_zeros(x.shape[0], n, d), None
        for _ in range(K):
            (w,), states = functional_step([w], [w @ xx - yx], meta, states)    # each task its own matrix
        return 0.5 * (x @ w.transpose(-1, -2) - y).pow(2).sum(-1).mean()

    w1, w2 = leaves(*default_phi0(d, Dh, dtype=F64))
    x_test, y_test = tasks(64, torch.Generator().manual_seed(3))
    with torch.no_grad():
        before = loss_after_inner_loop(w1, w2, x_test, y_test).item()
    outer, train = torch.optim.Adam([w1, w2], lr=0.02), torch.Generator().manual_seed(2)
    for _ in range(25):
        loss = loss_after_inner_loop(w1, w2, *tasks(16, train))
        outer.zero_grad()
        loss.backward()
        outer.step()
    with torch.no_grad():
        after = loss_after_inner_loop(w1, w2, x_test, y_test).item()
    assert after < 0.6 * before, (before, after)


# --- bad arguments ----------------------------------------------------------------------------

def good():
    return dict(grad=torch.randn(2, 5, 4),
                state=MLPMemoryState(torch.zeros(4, 6), torch.zeros(6, 4), torch.zeros(2, 4, 6), torch.zeros(2, 6, 4)),
                lr_inner=0.1, retention=0.9, lr=0.01, momentum=0.5)


ERRORS = {
    "grad-type": (dict(grad=[[1.0]]), TypeError, "grad: expected a torch.Tensor, got list"),
    "grad-rank": (dict(grad=torch.randn(5)), ValueError, r"grad: expected a gradient matrix \[n, d\]"),
    "grad-empty": (dict(grad=torch.randn(2, 0, 4)), ValueError, "grad: expected non-empty dims"),
    "grad-int": (dict(grad=torch.ones(2, 5, 4, dtype=torch.int64)), TypeError, "grad: expected dtype"),
    "state-type": (dict(state=(torch.zeros(4, 6), torch.zeros(6, 4))), TypeError, "state: expected an MLPMemoryState"),
    "w1-width": (dict(state=MLPMemoryState(torch.zeros(3, 6), torch.zeros(6, 3))), ValueError,
                 r"state.w1: expected \[..., d, Dh\] with d = 4"),
    "w1-lead": (dict(state=MLPMemoryState(torch.zeros(3, 4, 6), torch.zeros(3, 6, 4))), ValueError,
                r"state.w1: expected leading dims \[\] or \[2\]"),
    "w1-dtype": (dict(state=MLPMemoryState(torch.zeros(4, 6).half(), torch.zeros(6, 4))), TypeError,
                 "state.w1: expected dtype"),
    "w2-shape": (dict(state=MLPMemoryState(torch.zeros(4, 6), torch.zeros(5, 4))), ValueError,
                 r"state.w2: expected shape \[6, 4\]"),
    "s1-shape": (dict(state=MLPMemoryState(torch.zeros(4, 6), torch.zeros(6, 4), torch.zeros(4, 6))), ValueError,
                 "state.s1: expected a 3-d tensor"),
    "s2-without-momentum": (dict(momentum=None), ValueError, "state.s1: expected None when momentum=None"),
    "lr_inner-negative": (dict(lr_inner=-0.1), ValueError, r"lr_inner: expected a finite value >= 0.0, got -0.1"),
    "retention-range": (dict(retention=1.5), ValueError, r"retention: expected a finite value in \[0.0, 1.0\], got 1.5"),
    "lr-type": (dict(lr="fast"), TypeError, "lr: expected a float or a tensor of shape"),
    "lr-shape": (dict(lr=torch.ones(3)), ValueError, r"lr: expected a tensor of shape \[\] or \[2\]"),
    "momentum-range": (dict(momentum=-1.0), ValueError, "momentum: expected a finite value in"),
    "activation": (dict(activation="relu"), ValueError, r"activation: expected one of \['gelu', 'silu'\], got 'relu'"),
    "backend": (dict(backend="cuda"), NotImplementedError, "deep_momentum: backend 'cuda' is not implemented yet"),
}


@pytest.mark.parametrize("change,error,match", list(ERRORS.values()), ids=list(ERRORS))
def test_deep_momentum_bad_argument(change, error, match):
    args = good()
    args.update(change)
    grad, state = args.pop("grad"), args.pop("state")
    with pytest.raises(error, match=match):
        deep_momentum(grad, state, **args)


OPT_ERRORS = {
    "lr": (dict(lr=-1.0), ValueError, r"lr: expected a value >= 0.0, got -1.0"),
    "retention": (dict(retention=2.0), ValueError, r"retention: expected a value in \[0.0, 1.0\], got 2.0"),
    "momentum-type": (dict(momentum="0.9"), TypeError, "momentum: expected a float, got str"),
    "hidden": (dict(hidden=0), ValueError, "hidden: expected an int >= 1, got 0"),
    "precondition": (dict(precondition="adam"), ValueError, r"precondition: expected one of \[None, 'rms'\], got 'adam'"),
    "phi0-type": (dict(phi0=torch.zeros(4, 6)), TypeError, "phi0: expected a pair of tensors"),
    "phi0-shape": (dict(phi0=(torch.zeros(4, 6), torch.zeros(4, 6))), ValueError,
                   r"phi0: expected w1 \[d, Dh\] and w2 \[Dh, d\]"),
}


@pytest.mark.parametrize("change,error,match", list(OPT_ERRORS.values()), ids=list(OPT_ERRORS))
def test_deep_momentum_optimizer_bad_argument(change, error, match):
    with pytest.raises(error, match=match):
        DeepMomentum([torch.nn.Parameter(torch.zeros(3, 4))], **change)


def test_deep_momentum_optimizer_phi0_width():
    p = torch.nn.Parameter(torch.randn(3, 5))
    opt = DeepMomentum([p], phi0=(torch.zeros(4, 6), torch.zeros(6, 4)))
    p.grad = torch.ones_like(p)
    match = r"phi0: expected w1 \[d, Dh\] with d = 5 \(the row width of a parameter of shape \[3, 5\]\)"
    with pytest.raises(ValueError, match=match):
        opt.step()


def test_functional_step_bad_argument():
    p, meta = torch.zeros(3, 4), DMGDMeta(torch.zeros(4, 6), torch.zeros(6, 4))
    with pytest.raises(TypeError, match="meta: expected a DMGDMeta"):
        functional_step([p], [p], (torch.zeros(4, 6), torch.zeros(6, 4)))
    with pytest.raises(ValueError, match=r"meta.w1: expected a 2-d tensor \(\[d, Dh\]\), got shape \[4\]"):
        functional_step([p], [p], DMGDMeta(torch.zeros(4), torch.zeros(6, 4)))
    with pytest.raises(ValueError, match=r"grads\[0\]: expected the shape of params\[0\] \[3, 4\], got \[4, 3\]"):
        functional_step([p], [p.T], meta)
    with pytest.raises(ValueError, match=r"states: expected one state per parameter \(1\), got 2"):
        functional_step([p], [p], meta, [DMGDParamState()] * 2)
