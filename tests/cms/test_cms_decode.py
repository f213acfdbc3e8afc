"""`cms_level_step` (SPEC §4 continued from any position): any split of a stream equals one
`cms_level` call — outputs, running weights, gradients — and bad states are refused."""
import pytest
import torch

from nested_kernels.cms import CMSDecodeState, CMSState, cms_level, cms_level_step
from tests.helpers import split_sizes

B, T, D, DH = 2, 23, 6, 10


def make_inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "x": torch.randn(B, T, D, generator=g, dtype=torch.float64),
        "signal": torch.randn(B, T, D, generator=g, dtype=torch.float64),
        "w1": torch.randn(D, DH, generator=g, dtype=torch.float64) / D ** 0.5,
        "w2": torch.randn(DH, D, generator=g, dtype=torch.float64) * 0.3,
        "lr": torch.rand(B, T, generator=g, dtype=torch.float64) * 0.1,
    }


def stream(inp, period, sizes, teach, retention):
    """Outputs over the stream fed to `cms_level_step` in calls of `sizes`, and the last state."""
    state = CMSDecodeState.from_state((inp["w1"], inp["w2"]), period, batch_size=B)
    ys, lo = [], 0
    for n in sizes:
        signal = {("grad_y" if teach else "target"): inp["signal"][:, lo:lo + n]}
        y, state = cms_level_step(inp["x"][:, lo:lo + n], state, lr=inp["lr"][:, lo:lo + n], retention=retention,
                                  **signal)
        ys.append(y)
        lo += n
    return torch.cat(ys, 1), state


@pytest.mark.parametrize("period", [1, 4, 5, 30])
@pytest.mark.parametrize("teach", [False, True], ids=["target", "grad_y"])
@pytest.mark.parametrize("pattern", [(1,), (3, 1, 7, 0, 12), (23,)], ids=str)
def test_any_split_equals_one_call(period, teach, pattern):
    inp = {k: v.requires_grad_() for k, v in make_inputs().items()}
    signal = {("grad_y" if teach else "target"): inp["signal"]}
    y_ref, final = cms_level(inp["x"], inp["w1"], inp["w2"], period=period, lr=inp["lr"], retention=0.9,
                             output_final_state=True, backend="reference", **signal)
    y, state = stream(inp, period, split_sizes(T, pattern), teach, 0.9)
    assert state.position == T % period
    for name, a, b in (("y", y, y_ref), ("w1", state.w1, final.w1), ("w2", state.w2, final.w2)):
        assert (a - b).abs().max().item() < 1e-12, name
    leaves = list(inp.values())
    cot = torch.randn_like(y_ref)
    g_ref = torch.autograd.grad((y_ref * cot).sum() + final.w1.sum(), leaves)
    g = torch.autograd.grad((y * cot).sum() + state.w1.sum(), leaves)
    for name, a, b in zip(inp, g, g_ref):
        assert (a - b).abs().max().item() < 1e-11, f"grad {name}"


def test_boundary_state_converts():
    inp = make_inputs()
    _, state = stream(inp, 4, [8], False, 1.0)
    assert isinstance(state.to_state(), CMSState)
    _, state = stream(inp, 4, [6], False, 1.0)
    with pytest.raises(ValueError, match="state.position: expected 0"):
        state.to_state()


def test_bad_state():
    inp = make_inputs()
    with pytest.raises(TypeError, match="state: expected a CMSDecodeState"):
        cms_level_step(inp["x"], CMSState(inp["w1"], inp["w2"]), lr=0.1, target=inp["x"])
    with pytest.raises(ValueError, match="position: expected 0 <= position < period = 4, got 4"):
        CMSDecodeState.in_chunk((inp["w1"], inp["w2"]), (inp["w1"], inp["w2"]), 4, 4, batch_size=B)
    state = CMSDecodeState.from_state((inp["w1"], inp["w2"]), 4, batch_size=B + 1)
    with pytest.raises(ValueError, match="w1"):
        cms_level_step(inp["x"], state, lr=0.1, target=inp["x"])
