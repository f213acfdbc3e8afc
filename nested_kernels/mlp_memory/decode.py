"""`mlp_memory_step`: decoding of `mlp_memory` (SPEC §3), a few tokens per call."""
import torch

from ..backends import OpBackends
from ..common.compiled_step import decode_state_facts
from ..common.inputs import needs_grad
from ..common.validation import (
    check_decode_position, check_memory_gates, check_qkv, check_state_memory, check_state_tensor,
)
from .decode_compiled import cpp_unsupported_reason, cuda_unsupported_reason, mlp_memory_step_compiled
from .decode_state import MLPMemoryDecodeState
from .decode_torch import mlp_memory_step_torch
from .options import check_mlp_options

__all__ = ["mlp_memory_step", "MLPMemoryDecodeState", "STEP_BACKENDS"]

STEP_BACKENDS = OpBackends("mlp_memory_step")
STEP_BACKENDS.register("torch", mlp_memory_step_torch)
STEP_BACKENDS.register("cuda", mlp_memory_step_compiled, cuda_unsupported_reason)
STEP_BACKENDS.register("cpp", mlp_memory_step_compiled, cpp_unsupported_reason)


def _check(q, k, v, lr, retention, momentum, state, activation, residual, dgd, self_target, read):
    B, T, H, K, V = check_qkv(q, k, v)
    check_memory_gates(lr, retention, momentum, B, T, H, q.device)
    check_mlp_options(activation, residual, dgd, self_target, read, K, V)
    if not isinstance(state, MLPMemoryDecodeState):
        raise TypeError(f"state: expected an MLPMemoryDecodeState, got {type(state).__name__}")
    w1 = check_state_tensor("state.w1", state.w1, (B, H, K, None), "[N, H, K, Dh] (N = B)", q.device)
    Dh = w1.shape[-1]
    shapes = {"w1": ((B, H, K, Dh), "[N, H, K, Dh]"), "w2": ((B, H, Dh, V), "[N, H, Dh, V]")}
    fields = [("w2", "w2"), ("chunk_w1", "w1"), ("chunk_w2", "w2")]
    if (momentum is None) != (state.s1 is None and state.s2 is None):
        raise ValueError(
            f"state.s1/s2: expected {'None' if momentum is None else 'tensors'} with "
            f"momentum={'None' if momentum is None else 'given'}, got "
            f"{'None' if state.s1 is None else 'a tensor'} and {'None' if state.s2 is None else 'a tensor'} "
            f"(build the state with momentum=...)"
        )
    if momentum is not None:
        fields += [("s1", "w1"), ("s2", "w2")]
    for name, like in fields:
        t = check_state_tensor(f"state.{name}", getattr(state, name), *shapes[like], q.device)
        if t.dtype != w1.dtype:
            raise TypeError(f"state.{name}: expected the dtype of state.w1 ({w1.dtype}), got {t.dtype}")
    check_decode_position(state, B, q.device)
    check_state_memory(state)


def mlp_memory_step(q, k, v, lr, retention, momentum, state: MLPMemoryDecodeState, *, activation: str = "silu",
                    residual: bool = True, dgd: bool = False, self_target: bool = False, read: str = "current",
                    backend: str = "auto") -> torch.Tensor:
    r"""Decode T new tokens of each of N sequences with an MLP memory, updating `state` in place (SPEC §3).

    Exactly the chunked `mlp_memory`: feeding a stream through any split into calls of
    `mlp_memory_step` gives the outputs and final state of one `mlp_memory(...,
    chunk_size=state.chunk_size)` call on the whole stream, up to fp rounding. Chunks are counted
    per sequence (`state.position`), so the sequences of a batch may sit at different positions.
    Gradients and reads use the chunk-start weights `W^c` (`state.chunk_w1/chunk_w2`), the decay
    and the dgd term the running ones (`state.w1/w2`).

    Args:
        q (torch.Tensor): queries of shape `[N, T, H, K]`, T ≥ 0 (any T, not only ≤ chunk_size).
        k (torch.Tensor): keys of shape `[N, T, H, K]`.
        v (torch.Tensor): values of shape `[N, T, H, V]`.
        lr (float | torch.Tensor): inner learning rate η, a float or `[N, T, H]`.
        retention (float | torch.Tensor): α, a float or `[N, T, H]`.
        momentum (float | torch.Tensor, Optional): μ, a float or `[N, T, H]`; None iff `state.s1` is None.
        state (MLPMemoryDecodeState): updated in place; build it with `MLPMemoryDecodeState.from_state(...)`.
        activation (str): `"silu"` or `"gelu"` (tanh approximation). Default: `"silu"`.
        residual (bool): `f(x) = x + φ(x W1) W2`; needs K == V. Default: `True`.
        dgd (bool): DGD preconditioner on W1. Default: `False`.
        self_target (bool): targets `f_{W^c}(v_t)`. Default: `False`.
        read (str): `"current"` (`f_{W_t}(q_t)`) or `"chunk_start"` (`f_{W^c}(q_t)`). Default: `"current"`.
        backend (str): `"torch" | "cpp" | "cuda" | "auto"`. Default: `"auto"`.

    Returns:
        o (torch.Tensor): `[N, T, H, V]` in the dtype of `v`.

    Examples::
        >>> state = MLPMemoryDecodeState.from_state(MLPMemoryState(w1, w2), chunk_size=16, batch_size=N,
        ...                                         momentum=True)
        >>> for t in range(T):
        ...     o_t = mlp_memory_step(q[:, t:t+1], k[:, t:t+1], v[:, t:t+1], lr[:, t:t+1],
        ...                           retention[:, t:t+1], mom[:, t:t+1], state)
        >>> final = state.to_state()  # at a chunk boundary: an MLPMemoryState
    """
    _check(q, k, v, lr, retention, momentum, state, activation, residual, dgd, self_target, read)
    call = {
        "device": q.device, "dtype": q.dtype, "chunk_size": state.chunk_size,
        "requires_grad": needs_grad(q, k, v, lr, retention, momentum, *state[:4], state.s1, state.s2),
        **decode_state_facts(state),
    }
    impl = STEP_BACKENDS.resolve(backend, call)
    return impl(q, k, v, lr, retention, momentum, state, activation=activation, residual=residual, dgd=dgd,
                self_target=self_target, read=read)
