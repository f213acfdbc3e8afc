"""Bad arguments of `mlp_memory` raise errors naming them (shared q/k/v/gate/cu_seqlens checks are
exercised in tests/linear_memory/test_linear_memory_errors.py)."""
import pytest
import torch

from nested_kernels import mlp_memory
from nested_kernels.mlp_memory import MLPMemoryState

B, T, H, K, Dh = 2, 10, 2, 4, 8


def good():
    return dict(
        q=torch.randn(B, T, H, K), k=torch.randn(B, T, H, K), v=torch.randn(B, T, H, K),
        lr=0.1, retention=0.9, momentum=0.5,
        initial_state=MLPMemoryState(torch.zeros(1, H, K, Dh), torch.zeros(1, H, Dh, K),
                                     torch.zeros(B, H, K, Dh), torch.zeros(B, H, Dh, K)),
        backend="torch",
    )


CASES = {
    "state-missing": (dict(initial_state=None), TypeError, "initial_state: expected an MLPMemoryState"),
    "w1-rank": (dict(initial_state=MLPMemoryState(torch.zeros(H, K, Dh), torch.zeros(1, H, Dh, K))), ValueError,
                r"initial_state.w1: expected a 4-d tensor \[N \| 1, H, K, Dh\], got shape \[2, 4, 8\]"),
    "w1-shape": (dict(initial_state=MLPMemoryState(torch.zeros(1, H, K + 1, Dh), torch.zeros(1, H, Dh, K))), ValueError,
                 r"initial_state.w1: expected shape \[\*, 2, 4, \*\]"),
    "w1-lead": (dict(initial_state=MLPMemoryState(torch.zeros(3, H, K, Dh), torch.zeros(3, H, Dh, K))), ValueError,
                "initial_state.w1: expected a leading dim of 1 or N = 2, got 3"),
    "w2-shape": (dict(initial_state=MLPMemoryState(torch.zeros(1, H, K, Dh), torch.zeros(1, H, Dh + 1, K))),
                 ValueError, r"initial_state.w2: expected shape \[1, 2, 8, 4\]"),
    "w2-dtype": (dict(initial_state=MLPMemoryState(torch.zeros(1, H, K, Dh), torch.zeros(1, H, Dh, K).half())),
                 TypeError, "initial_state.w2: expected dtype"),
    "s1-shape": (dict(initial_state=MLPMemoryState(torch.zeros(1, H, K, Dh), torch.zeros(1, H, Dh, K),
                                                   torch.zeros(1, H, K, Dh))), ValueError, "initial_state.s1: expected shape"),
    "s2-without-momentum": (dict(momentum=None, initial_state=MLPMemoryState(
        torch.zeros(1, H, K, Dh), torch.zeros(1, H, Dh, K), None, torch.zeros(B, H, Dh, K))),
        ValueError, "initial_state.s2: expected None when momentum=None"),
    "activation": (dict(activation="relu"), ValueError, r"activation: expected one of \['gelu', 'silu'\], got 'relu'"),
    "read": (dict(read="end"), ValueError, "read: expected one of"),
    "residual-type": (dict(residual="yes"), TypeError, "residual: expected a bool"),
    "residual-dims": (dict(v=torch.randn(B, T, H, K + 1)), ValueError, "residual: expected K == V"),
    "chunk": (dict(chunk_size=-1), ValueError, "chunk_size: expected an int >= 1, got -1"),
    "backend-cpp": (dict(backend="cpp"), NotImplementedError, "mlp_memory: backend 'cpp' is not implemented yet"),
}


@pytest.mark.parametrize("change,error,match", list(CASES.values()), ids=list(CASES))
def test_chunk_bad_argument(change, error, match):
    args = good()
    args.update(change)
    with pytest.raises(error, match=match):
        mlp_memory(**args)


def test_chunk_self_target_needs_square_memory():
    args = good()
    V = K + 2
    args.update(v=torch.randn(B, T, H, V), residual=False, initial_state=MLPMemoryState(
        torch.zeros(1, H, K, Dh), torch.zeros(1, H, Dh, V)), momentum=None, self_target=True)
    with pytest.raises(ValueError, match="self_target: expected K == V"):
        mlp_memory(**args)


def test_chunk_good_arguments_run():
    mlp_memory(**good())


@pytest.mark.parametrize("backend", ["reference", "torch"])
def test_chunk_longer_than_the_sequence(backend):
    """A chunk longer than the sequence is the whole sequence, not a padding of 2^31 tokens."""
    args = good()
    args["initial_state"] = MLPMemoryState(torch.randn(1, H, K, Dh) / 2, torch.randn(1, H, Dh, K) / 3,
                                           *args["initial_state"][2:])
    args.update(backend=backend, output_final_state=True)
    o, final = mlp_memory(**args, chunk_size=2**31)
    o_T, final_T = mlp_memory(**args, chunk_size=T)
    torch.testing.assert_close(o, o_T)
    torch.testing.assert_close(final.w1, final_T.w1)
