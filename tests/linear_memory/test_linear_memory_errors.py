"""Every bad argument of `linear_memory` raises an error naming it (DEVELOPERS.md, issue 2 §7)."""
import numpy as np
import pytest
import torch

from nested_kernels import linear_memory
from nested_kernels.linear_memory import LinearMemoryState

B, T, H, K, V = 2, 10, 2, 4, 6


def good():
    return dict(
        q=torch.randn(B, T, H, K), k=torch.randn(B, T, H, K), v=torch.randn(B, T, H, V),
        lr=torch.rand(B, T, H), retention=torch.rand(B, T, H), momentum=torch.rand(B, T, H),
        initial_state=LinearMemoryState(torch.zeros(B, H, K, V), torch.zeros(B, H, K, V)),
        backend="torch",
    )


def packed():
    args = good()
    args.update(
        {name: args[name][:1] for name in ("q", "k", "v", "lr", "retention", "momentum")},
        cu_seqlens=torch.tensor([0, 4, 10]),
    )
    return args


CASES = {
    "q-not-tensor": (dict(q=[1.0]), TypeError, "q: expected a torch.Tensor"),
    "q-int-dtype": (dict(q=torch.ones(B, T, H, K, dtype=torch.int32)), TypeError, "q: expected dtype"),
    "q-3d": (dict(q=torch.randn(B, T, K)), ValueError, r"q: expected a 4-d tensor \[B, T, H, K\]"),
    "k-shape": (dict(k=torch.randn(B, T, H, K + 1)), ValueError, r"k: expected shape \[2, 10, 2, 4\]"),
    "v-shape": (dict(v=torch.randn(B, T + 1, H, V)), ValueError, "v: expected shape"),
    "v-dtype-mismatch": (dict(v=torch.randn(B, T, H, V, dtype=torch.float64)), TypeError, "q/k/v: expected one dtype"),
    "v-device": (dict(v=torch.randn(B, T, H, V, device="meta")), ValueError, "v: expected a tensor on cpu"),
    "lr-rank": (dict(lr=torch.rand(B, T)), ValueError, r"lr: expected a 3-d tensor \[B, T, H\]"),
    "lr-shape": (dict(lr=torch.rand(B, T, H + 1)), ValueError, r"lr: expected shape \[2, 10, 2\]"),
    "lr-type": (dict(lr="0.1"), TypeError, "lr: expected a float or a tensor"),
    "retention-dtype": (dict(retention=torch.ones(B, T, H, dtype=torch.int64)), TypeError, "retention: expected dtype"),
    "momentum-shape": (dict(momentum=torch.rand(B, T, H, 1)), ValueError, "momentum: expected a 3-d tensor"),
    "chunk-zero": (dict(chunk_size=0), ValueError, "chunk_size: expected an int >= 1, got 0"),
    "chunk-float": (dict(chunk_size=16.0), TypeError, "chunk_size: expected an int"),
    "chunk-beyond-int64": (dict(chunk_size=2**63), ValueError, r"chunk_size: expected an int <= 2\^63 - 1"),
    "scale-type": (dict(scale="1"), TypeError, "scale: expected a float"),
    "scale-numpy-bool": (dict(scale=np.bool_(True)), TypeError, "scale: expected a float, got numpy.bool"),
    "dgd-type": (dict(dgd=1), TypeError, "dgd: expected a bool"),
    "dgd-numpy-bool": (dict(dgd=np.bool_(True)), TypeError, "dgd: expected a bool, got numpy.bool"),
    "state-type": (dict(initial_state=torch.zeros(B, H, K, V)), TypeError, "initial_state: expected a LinearMemoryState"),
    "state-memory-shape": (dict(initial_state=LinearMemoryState(torch.zeros(B, H, V, K))), ValueError,
                           r"initial_state.memory: expected shape \[2, 2, 4, 6\]"),
    "state-memory-dtype": (dict(initial_state=LinearMemoryState(torch.zeros(B, H, K, V, dtype=torch.bfloat16))),
                           TypeError, "initial_state.memory: expected dtype"),
    "state-momentum-shape": (dict(initial_state=LinearMemoryState(torch.zeros(B, H, K, V), torch.zeros(1, H, K, V))),
                             ValueError, "initial_state.momentum: expected shape"),
    "state-momentum-without-gate": (dict(momentum=None), ValueError,
                                    "initial_state.momentum: expected None when momentum=None"),
    "backend-unknown": (dict(backend="jax"), ValueError, "backend: expected one of"),
    "backend-cuda": (dict(backend="cuda"), NotImplementedError, "backend 'cuda' cannot run this call"),
}

VARLEN_CASES = {
    "cu-dtype": (dict(cu_seqlens=torch.tensor([0.0, 4.0, 10.0])), TypeError, "cu_seqlens: expected dtype"),
    "cu-2d": (dict(cu_seqlens=torch.tensor([[0, 4, 10]])), ValueError, r"cu_seqlens: expected a 1-d tensor \[N \+ 1\]"),
    "cu-batch": (dict(cu_seqlens=torch.tensor([0, 4, 10]), q=torch.randn(B, T, H, K)), ValueError,
                 "cu_seqlens: expected batch size B == 1"),
    "cu-end": (dict(cu_seqlens=torch.tensor([0, 4, 9])), ValueError, "cu_seqlens: expected to start at 0 and end at T = 10"),
    "cu-start": (dict(cu_seqlens=torch.tensor([1, 4, 10])), ValueError, "cu_seqlens: expected to start at 0"),
    "cu-decreasing": (dict(cu_seqlens=torch.tensor([0, 6, 4, 10])), ValueError, "cu_seqlens: expected non-decreasing"),
    "cu-short": (dict(cu_seqlens=torch.tensor([0])), ValueError, "cu_seqlens: expected at least 2 entries"),
    "cu-state-count": (dict(cu_seqlens=torch.tensor([0, 2, 4, 10])), ValueError,
                       r"initial_state.memory: expected shape \[3, 2, 4, 6\]"),
}


@pytest.mark.parametrize("change,error,match", list(CASES.values()), ids=list(CASES))
def test_chunk_bad_argument(change, error, match):
    args = good()
    args.update(change)
    with pytest.raises(error, match=match):
        linear_memory(**args)


@pytest.mark.parametrize("change,error,match", list(VARLEN_CASES.values()), ids=list(VARLEN_CASES))
def test_chunk_varlen_bad_argument(change, error, match):
    args = packed()
    args.update(change)
    if change.get("q") is not None:                                           # a dense batch with cu_seqlens
        args.update(k=torch.randn(B, T, H, K), v=torch.randn(B, T, H, V), lr=0.1, retention=1.0, momentum=0.5)
    with pytest.raises(error, match=match):
        linear_memory(**args)


def test_chunk_packed_good_arguments_run():
    """The base cases of the error tables are themselves valid calls."""
    linear_memory(**good())
    linear_memory(**packed())


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_chunk_longer_than_the_sequence(backend):
    """A chunk longer than the sequence is the whole sequence: the torch tier padded to it (2^31 tokens
    asked the allocator for 256 GiB)."""
    args = dict(good(), backend=backend, output_final_state=True)
    o, final = linear_memory(**args, chunk_size=2**31)
    o_T, final_T = linear_memory(**args, chunk_size=T)
    torch.testing.assert_close(o, o_T)
    torch.testing.assert_close(final.memory, final_T.memory)


def test_numpy_scale_is_a_float():
    """A NumPy scalar scale (np.float32 was refused, np.float64 passed as it is) reads as its float."""
    args = good()
    o_np, _ = linear_memory(**args, scale=np.float32(0.5))
    o, _ = linear_memory(**args, scale=0.5)
    torch.testing.assert_close(o_np, o, rtol=0, atol=0)


def test_auto_picks_a_runnable_fast_backend(monkeypatch):
    """auto: cpp for CPU inference when built (never the interpreted triton), torch for training."""
    from nested_kernels._extension import has_cpp_op
    from nested_kernels.linear_memory import BACKENDS

    args = good()
    args.pop("backend")
    picked = []
    for name in ("torch", "cpp", "triton"):
        impl = BACKENDS._impls.get(name)
        if impl is not None:
            monkeypatch.setitem(BACKENDS._impls, name, impl._replace(fn=lambda *a, _n=name, **k: picked.append(_n)))
    linear_memory(**args, backend="auto")
    assert picked == (["cpp"] if has_cpp_op("linear_memory_recurrent") else ["torch"])
    args["q"] = args["q"].requires_grad_()
    linear_memory(**args, backend="auto")
    assert picked[-1] == "torch"
