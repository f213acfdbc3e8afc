"""tests/triton_memcheck.py catches what it is for: loads and stores outside a launch's tensors."""
import pytest
import torch

triton = pytest.importorskip("triton")
import triton.language as tl  # noqa: E402

from tests.triton_memcheck import memcheck  # noqa: E402

pytestmark = pytest.mark.skipif(torch.cuda.is_available(), reason="checks Triton's interpreter (CPU only)")


@triton.jit
def _shifted_copy(x, y, shift, N: tl.constexpr, MASKED: tl.constexpr):
    o = tl.arange(0, N)
    if MASKED:
        tl.store(y + o, tl.load(x + o + shift, mask=o + shift < N, other=0.0))
    else:
        tl.store(y + o + shift, tl.load(x + o))


@pytest.mark.parametrize("shift,masked,stray", [
    (0, False, None), (1, True, None), (3, False, "store"), (-2, True, "load"),
], ids=["in-bounds", "masked-tail", "store-past-end", "load-before-start"])
def test_memcheck(shift, masked, stray):
    x, y = torch.arange(64.0), torch.zeros(64 + 64)[64:]          # y's storage starts 64 floats earlier
    big = torch.zeros(10_000)                                      # keeps other storages away from x
    with memcheck():
        if stray is None:
            _shifted_copy[(1,)](x, y, shift, N=64, MASKED=masked)
            return
        with pytest.raises(Exception, match=f"{stray} outside every argument of _shifted_copy"):
            _shifted_copy[(1,)](x, y, shift, N=64, MASKED=masked)
    del big


@triton.jit
def _rows_before(x, y, N: tl.constexpr):
    """y[i] = Σ x[i − 1, :] (0 at i = 0), rows in reverse: the load of row −1 is masked off by a
    scalar condition."""
    o = tl.arange(0, N)
    for r in range(N):
        i = N - 1 - r
        row = tl.load(x + (i - 1) * N + o, mask=(o >= 0) & (i >= 1), other=0.0)
        tl.store(y + i, tl.sum(row, axis=0))


def test_memcheck_scalar_condition_mask():
    """A mask that combines a tensor with a scalar condition reaches the interpreter as integers:
    the checker must read it as a mask, not as indices (it flagged this fully masked-off load)."""
    x, y = torch.ones(16 * 16), torch.zeros(16)
    with memcheck():
        _rows_before[(1,)](x, y, N=16)
    torch.testing.assert_close(y, torch.tensor([0.0] + [16.0] * 15))
