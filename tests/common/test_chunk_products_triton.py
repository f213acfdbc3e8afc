"""The Triton chunk products (triton_kernels/common/chunk_products.py) against their definition in
float64: tril(Q Kᵀ) ⊙ G_{1..C}, tril(Q Kᵀ) ⊙ E_{1..C} and (K Kᵀ) ⊙ G_{0..C−1} per chunk and head."""
import pytest
import torch

pytest.importorskip("triton")

from nested_kernels.common.chunk_gates import chunk_gates  # noqa: E402
from nested_kernels.triton_kernels.common.chunk_products import chunk_products  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


pytestmark = pytest.mark.usefixtures("interpreter_memcheck")   # tests/conftest.py


def _expected(q, k, g, C):
    chunks = lambda x: x.unflatten(0, (-1, C)).permute(2, 0, 1, 3)          # [T', H, K] -> [H, NC, C, K]
    qk, kk = chunks(q) @ chunks(k).transpose(-1, -2), chunks(k) @ chunks(k).transpose(-1, -2)
    return (qk * g.write[:, :, 1:]).tril(), (qk * g.dgd_write[:, :, 1:]).tril(), kk * g.write[:, :, :C]


@pytest.mark.parametrize("reads, dgd", [(True, True), (True, False), (False, True), (False, False)],
                         ids=["reads-dgd", "reads", "dgd", "none"])
@pytest.mark.parametrize("C, K", [(16, 20), (32, 72)], ids=lambda x: str(x))
def test_chunk_products(C, K, reads, dgd):
    """K not a power of two and wider than the key tile (72 = 64 + 8); absent products are None."""
    gen = torch.Generator().manual_seed(C + K)
    H, NC = 2, 3
    q, k = (torch.randn(NC * C, H, K, generator=gen, dtype=torch.float64) for _ in range(2))
    g = chunk_gates(*(torch.rand(H, NC, C, generator=gen, dtype=torch.float64) for _ in range(3)))
    expected = _expected(q, k, g, C)
    f32 = lambda x: x.float().contiguous().to(DEVICE)
    out = chunk_products(f32(q), f32(k), f32(g.write), f32(g.dgd_write), reads=reads, dgd=dgd, precision="ieee")
    wanted = (reads, reads and dgd, dgd)
    for name, want, e, o in zip(("qk_write", "qk_dgd_write", "kk_write"), wanted, expected, out):
        if not want:
            assert o is None, name
            continue
        assert o.shape == e.shape and not o.isnan().any(), name
        torch.testing.assert_close(o.cpu().double(), e, atol=1e-5, rtol=1e-5, msg=name)
