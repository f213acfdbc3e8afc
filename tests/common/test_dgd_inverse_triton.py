"""The Triton DGD inverse (triton_kernels/common/dgd_inverse.py) against `dgd_inverse` in float64:
the inverse, and the gradients of the keys and of E through it (the backward kernel)."""
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("triton")

from nested_kernels.common.chunk_gates import ChunkGates, chunk_gates  # noqa: E402
from nested_kernels.common.chunk_state import dgd_inverse  # noqa: E402
from nested_kernels.common.dgd_inverse_triton import dgd_inverse_triton  # noqa: E402
from tests.helpers import rms_ratio  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


pytestmark = pytest.mark.usefixtures("interpreter_memcheck")   # tests/conftest.py


def _inputs(C, K, H=2, NC=3):
    gen = torch.Generator().manual_seed(C * K)
    k = F.normalize(torch.randn(NC * C, H, K, generator=gen, dtype=torch.float64), dim=-1)
    gates = [torch.rand(H, NC, C, generator=gen, dtype=torch.float64) for _ in range(3)]
    gates[0] = 0.8 * gates[0]                                                 # lr
    gates[1][0, 1, 4] = 0.0                                                   # a retention of 0
    return k, chunk_gates(*gates).dgd_write


def _check(C, K, input_dtype):
    """Inverse and gradients for keys of the op's `input_dtype`, as fp32 copies (the precision of the
    products follows it: K Kᵀ on tf32 for 16-bit inputs, exact for their values, and exact fp32 for
    fp32 ones; the backward's others tf32 for 16-bit inputs, three-pass tf32 for fp32 ones)."""
    k, e = _inputs(C, K)
    k = k.to(input_dtype).double()                                            # values the input dtype holds
    H, NC = e.shape[:2]
    k_ref, e_ref = k.clone().requires_grad_(), e.clone().requires_grad_()
    kc = k_ref.unflatten(0, (NC, C)).permute(2, 0, 1, 3)
    ref = dgd_inverse(ChunkGates(None, None, None, None, None, e_ref), kc @ kc.transpose(-1, -2))  # reads E only
    k_out, e_out = k.float().to(DEVICE).requires_grad_(), e.float().to(DEVICE).requires_grad_()
    out = dgd_inverse_triton(k_out, e_out, input_dtype)
    torch.testing.assert_close(out.cpu().double(), ref.detach(), atol=1e-6, rtol=1e-5)
    cot = torch.randn(ref.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    for r, o in zip(torch.autograd.grad((ref * cot).sum(), [k_ref, e_ref]),
                    torch.autograd.grad((out * cot.to(out)).sum(), [k_out, e_out])):
        # the interpreter's products ignore input_precision: there the tf32 ones run in fp32 too
        if input_dtype == torch.float32 or not torch.cuda.is_available():
            assert ((o.cpu().double() - r).abs().max() / r.abs().max()).item() < 1e-5
        else:
            assert rms_ratio(r, o.cpu()) < 5e-3


SHAPES = [(16, 16), (32, 40), (64, 24)]
INPUT_DTYPES = [torch.float32, torch.bfloat16]


@pytest.mark.parametrize("input_dtype", INPUT_DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("C,K", SHAPES, ids=lambda x: str(x))
def test_inverse_and_gradients(C, K, input_dtype):
    _check(C, K, input_dtype)


def _check_kk_write(C, K, input_dtype):
    from nested_kernels.triton_kernels.common.dgd_inverse import dgd_inverse_fwd

    k, e = _inputs(C, K)
    k = k.to(input_dtype)
    H, NC = e.shape[:2]
    g = chunk_gates(*(torch.rand(H, NC, C, generator=torch.Generator().manual_seed(K), dtype=torch.float64)
                      for _ in range(3)))
    kc = k.double().unflatten(0, (NC, C)).permute(2, 0, 1, 3)
    expected = (kc @ kc.transpose(-1, -2)) * g.write[:, :, :C]
    dev = lambda x: x.to(DEVICE).contiguous()
    inv, kk_write = dgd_inverse_fwd(dev(k), dev(e.float()), write=dev(g.write.float()))
    torch.testing.assert_close(kk_write.cpu().double(), expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(inv, dgd_inverse_fwd(dev(k), dev(e.float())), atol=0, rtol=0)


@pytest.mark.parametrize("input_dtype", INPUT_DTYPES, ids=["fp32", "bf16"])
@pytest.mark.parametrize("C,K", SHAPES, ids=lambda x: str(x))
def test_kk_write_with_the_inverse(C, K, input_dtype):
    """With `write`, the forward also returns linear_memory's DGD product (K Kᵀ) ⊙ G_{0..C−1} from its
    own K Kᵀ (as `chunk_products`' kk_write), and the same inverse as without it."""
    _check_kk_write(C, K, input_dtype)


@pytest.mark.parametrize("C", [16, 32, 64])
def test_inverse_nearly_parallel_keys(C):
    """Keys within 1 % of one direction and no decay: L close to the all-ones strictly lower
    matrix, whose inverse alternates in sign; the blocked inverse (16 × 16 tiles) stays at fp32
    accuracy (about 5e-7 here; the row-by-row substitution it replaced, 3e-7)."""
    gen = torch.Generator().manual_seed(C)
    H, NC, K = 1, 2, 32
    base = F.normalize(torch.randn(K, generator=gen, dtype=torch.float64), dim=0)
    k = F.normalize(base + 0.01 * torch.randn(NC * C, H, K, generator=gen, dtype=torch.float64), dim=-1)
    ones = torch.ones(H, NC, C, dtype=torch.float64)
    e = chunk_gates(0.9 * ones, ones, ones).dgd_write
    kc = k.unflatten(0, (NC, C)).permute(2, 0, 1, 3)
    ref = dgd_inverse(ChunkGates(None, None, None, None, None, e), kc @ kc.transpose(-1, -2))
    out = dgd_inverse_triton(k.float().to(DEVICE), e.float().to(DEVICE), torch.float32).cpu().double()
    assert ref.abs().max() >= 0.5 and (out - ref).abs().max() <= 2e-6 * ref.abs().max()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("input_dtype", INPUT_DTYPES, ids=["fp32-tf32x3", "bf16-tf32"])
@pytest.mark.parametrize("C,K", SHAPES + [(64, 128), (64, 256)], ids=lambda x: str(x))
def test_inverse_and_gradients_gpu(C, K, input_dtype):
    """On the card the products run at the chosen precision (the interpreter computes fp32): K Kᵀ
    on the matrix units for bf16 keys (tf32, exact products), K Kᵀ ⊙ G with the inverse too."""
    _check(C, K, input_dtype)
    _check_kk_write(C, K, input_dtype)


def test_opcheck():
    k, e = _inputs(16, 16)
    args = (k.float().to(DEVICE).requires_grad_(), e.float().to(DEVICE).requires_grad_(), torch.bfloat16)
    torch.library.opcheck(torch.ops.nested_kernels.dgd_inverse_triton.default, args)
    inv = dgd_inverse_triton(*args).detach()
    torch.library.opcheck(torch.ops.nested_kernels.dgd_inverse_triton_bwd.default,
                          (args[0].detach(), args[1].detach(), inv, torch.randn_like(inv), torch.bfloat16))
