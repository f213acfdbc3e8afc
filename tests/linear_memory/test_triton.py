"""The triton backend of `linear_memory` against the reference (SPEC §2, §7). Without a GPU the
kernels run in Triton's interpreter on small shapes; the `gpu` tests run the full matrix."""
import itertools

import pytest
import torch

from nested_kernels import linear_memory
from nested_kernels.linear_memory import LinearMemoryState
from tests.helpers import gates, linear_state, qkv, rms_ratio

pytest.importorskip("triton")

NAMES = ("o", "memory", "momentum")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def forward(backend, q, k, v, lr, ret, mom, h0, dtype, **kw):
    cast = lambda x: None if x is None else x.to(DEVICE)
    h0 = None if h0 is None else LinearMemoryState(*(cast(x) for x in h0))
    o, state = linear_memory(*(cast(x.to(dtype)) for x in (q, k, v)), cast(lr), cast(ret), cast(mom),
                             initial_state=h0, output_final_state=True, backend=backend, **kw)
    return [o, *state]


def check_forward(B, T, H, K, V, C, use_mom, dgd, use_h0, cu_seqlens=None, dtype=torch.float32):
    N = B if cu_seqlens is None else len(cu_seqlens) - 1
    q, k, v = qkv(B, T, H, K, V, dtype=torch.float32)
    q, k, v = (x.to(dtype).float() for x in (q, k, v))                        # the kernel's rounded inputs
    lr, ret, mom = gates(B, T, H, momentum=use_mom, dtype=torch.float32)
    h0 = linear_state(N, H, K, V, momentum=use_mom, dtype=torch.float32) if use_h0 else None
    kw = dict(dgd=dgd, chunk_size=C, scale=K**-0.5, cu_seqlens=cu_seqlens)
    ref = forward("reference", q, k, v, lr, ret, mom, h0, torch.float64, **kw)
    out = forward("triton", q, k, v, lr, ret, mom, h0, dtype, **{**kw, "cu_seqlens": None if cu_seqlens is None
                                                                 else cu_seqlens.to(DEVICE)})
    assert out[0].dtype == dtype and all(s.dtype == torch.float32 for s in out[1:] if s is not None)
    bound = 1e-5 if dtype == torch.float32 else 5e-3
    for name, r, o in zip(NAMES, ref, out):
        if r is None:
            assert o is None, name
            continue
        assert not o.isnan().any(), name
        assert rms_ratio(r, o.cpu()) <= bound, (name, rms_ratio(r, o.cpu()))


SMALL = [
    # B, T, H, K, V, chunk, momentum, dgd, initial state
    (2, 40, 2, 16, 16, 16, True, True, True),
    (2, 40, 2, 20, 36, 16, True, False, False),
    (1, 70, 1, 16, 16, 32, False, True, True),
    (2, 64, 2, 8, 24, 64, False, False, True),
    (1, 100, 2, 32, 32, 64, True, True, False),
    (2, 1, 1, 16, 16, 16, True, True, True),
]


@pytest.mark.parametrize("B,T,H,K,V,C,use_mom,dgd,use_h0",
                         [pytest.param(*c, id="B{}-T{}-H{}-K{}-V{}-C{}-mom{}-dgd{}-h0{}".format(*c)) for c in SMALL])
def test_triton_fwd(B, T, H, K, V, C, use_mom, dgd, use_h0):
    check_forward(B, T, H, K, V, C, use_mom, dgd, use_h0)


@pytest.mark.parametrize("dgd", [False, True], ids=["plain", "dgd"])
def test_triton_fwd_varlen(dgd):
    """Packed sequences: one shorter than a chunk, one empty, one spanning chunks with a partial tail."""
    check_forward(1, 60, 2, 16, 16, 16, True, dgd, True, cu_seqlens=torch.tensor([0, 5, 5, 60]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_triton_fwd_half(dtype):
    check_forward(2, 50, 2, 32, 32, 16, True, True, True, dtype=dtype)


def test_triton_unsupported_chunk_size():
    q, k, v = qkv(1, 8, 1, 16, 16, dtype=torch.float32)
    with pytest.raises(NotImplementedError, match=r"chunk_size must be one of \(16, 32, 64\), got 8"):
        linear_memory(q, k, v, 0.1, 1.0, chunk_size=8, backend="triton")


def test_triton_refuses_training_until_backward_lands():
    q, k, v = qkv(1, 16, 1, 16, 16, dtype=torch.float32)
    with pytest.raises(NotImplementedError, match="backward"):
        linear_memory(q.requires_grad_(), k, v, 0.1, 1.0, chunk_size=16, backend="triton")


GPU_MATRIX = list(itertools.product((1, 63, 1000), ((64, 64), (128, 128), (100, 60), (256, 256)), (16, 32, 64),
                                    (False, True), (False, True)))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("T,KV,C,use_mom,dgd", [pytest.param(*c, id="T{}-KV{}-C{}-mom{}-dgd{}".format(*c))
                                                for c in GPU_MATRIX])
def test_triton_fwd_gpu(T, KV, C, use_mom, dgd, dtype):
    check_forward(2, T, 4, *KV, C, use_mom, dgd, True, dtype=dtype)
