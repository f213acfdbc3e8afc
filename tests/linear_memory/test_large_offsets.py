"""Inputs of more than 2^31 elements (SPEC §2 kernel notes: int64 offsets). With `cu_seqlens`, a
long first sequence puts a short second one past element 2^31 of q, k and v; the kernel tiers must
give the second sequence the outputs and final state it gets alone (torch tier). A 32-bit offset
anywhere in the token or state indexing reads or writes the wrong place there. GPU only: the
inputs are 4 GiB each; the test skips when the device has too little free memory."""
import pytest
import torch

from nested_kernels import linear_memory
from tests.helpers import rms_ratio

H, K = 16, 64
HEAD = 2**31 // (H * K) + 37         # tokens of the first sequence: the second starts past element 2^31
TAIL = 300                           # tokens of the second sequence (partial last chunk at 64)
FREE_BYTES = 72 * 2**30              # what one forward of the kernel tiers needs, about


def _inputs():
    gen = torch.Generator(device="cuda").manual_seed(0)
    T = HEAD + TAIL
    q, k, v = (torch.randn(1, T, H, K, device="cuda", dtype=torch.bfloat16, generator=gen) for _ in range(3))
    k = torch.nn.functional.normalize(k, dim=-1)
    lr = 0.3 * torch.rand(1, T, H, device="cuda", generator=gen)
    retention = 0.5 + 0.5 * torch.rand(1, T, H, device="cuda", generator=gen)
    momentum = 0.9 * torch.rand(1, T, H, device="cuda", generator=gen)
    return q, k, v, lr, retention, momentum


@pytest.mark.gpu
@pytest.mark.bigmem
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("backend", ["triton", "cuda"])
@pytest.mark.parametrize("dgd", [False, True], ids=["plain", "dgd"])
def test_sequence_past_element_2pow31(backend, dgd):
    if torch.cuda.mem_get_info()[0] < FREE_BYTES:
        pytest.skip(f"needs about {FREE_BYTES / 2**30:.0f} GiB of free GPU memory")
    inputs = _inputs()
    cu_seqlens = torch.tensor([0, HEAD, HEAD + TAIL], device="cuda")
    kw = dict(dgd=dgd, chunk_size=64, output_final_state=True)
    with torch.no_grad():
        o, final = linear_memory(*inputs, cu_seqlens=cu_seqlens, backend=backend, **kw)
        tail_o = o[:, HEAD:].float()
        tail_memory = final.memory[1].float()
        del o, final
        tail = [x[:, HEAD:].float() for x in inputs]
        ref_o, ref_final = linear_memory(*tail, backend="torch", **kw)
    assert rms_ratio(ref_o, tail_o) < 5e-3
    assert rms_ratio(ref_final.memory[0], tail_memory) < 5e-3
