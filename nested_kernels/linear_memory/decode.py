"""`linear_memory_step`: fused decoding of `linear_memory` (SPEC §2), a few tokens per call."""
import torch

from ..backends import OpBackends
from ..common.compiled_step import decode_state_facts
from ..common.inputs import needs_grad
from ..common.validation import (
    check_decode_position, check_flag, check_memory_gates, check_qkv, check_scale, check_state_memory,
    check_state_tensor,
)
from .decode_compiled import cpp_unsupported_reason, cuda_unsupported_reason, linear_memory_step_compiled
from .decode_state import LinearMemoryDecodeState
from .decode_torch import linear_memory_step_torch

__all__ = ["linear_memory_step", "LinearMemoryDecodeState", "STEP_BACKENDS"]

STEP_BACKENDS = OpBackends("linear_memory_step")
STEP_BACKENDS.register("torch", linear_memory_step_torch)
STEP_BACKENDS.register("cuda", linear_memory_step_compiled, cuda_unsupported_reason)
STEP_BACKENDS.register("cpp", linear_memory_step_compiled, cpp_unsupported_reason)


def _check(q, k, v, lr, retention, momentum, state, dgd, scale):
    B, T, H, K, V = check_qkv(q, k, v)
    check_memory_gates(lr, retention, momentum, B, T, H, q.device)
    check_flag("dgd", dgd)
    check_scale(scale)
    if not isinstance(state, LinearMemoryDecodeState):
        raise TypeError(f"state: expected a LinearMemoryDecodeState, got {type(state).__name__}")
    dims = "[N, H, K, V] (N = B)"
    memory = check_state_tensor("state.memory", state.memory, (B, H, K, V), dims, q.device)
    for name in ("chunk_memory", "momentum"):
        t = getattr(state, name)
        if t is not None or name == "chunk_memory":
            check_state_tensor(f"state.{name}", t, (B, H, K, V), dims, q.device)
            if t.dtype != memory.dtype:
                raise TypeError(f"state.{name}: expected the dtype of state.memory ({memory.dtype}), got {t.dtype}")
    if (momentum is None) != (state.momentum is None):
        raise ValueError(
            f"state.momentum: expected {'None' if momentum is None else 'a tensor [N, H, K, V]'} with "
            f"momentum={'None' if momentum is None else 'given'}, got "
            f"{'None' if state.momentum is None else 'a tensor'} (build the state with momentum=...)"
        )
    check_decode_position(state, B, q.device)
    check_state_memory(state)


def linear_memory_step(q, k, v, lr, retention, momentum, state: LinearMemoryDecodeState, *,
                       dgd: bool = False, scale: float = 1.0, backend: str = "auto") -> torch.Tensor:
    r"""Decode T new tokens of each of N sequences with a linear memory, updating `state` in place (SPEC §2).

    Exactly the chunked `linear_memory`: feeding a stream through any split into calls of
    `linear_memory_step` gives the outputs and final state of one `linear_memory(...,
    chunk_size=state.chunk_size)` call on the whole stream, up to fp rounding. Chunks are counted
    per sequence (`state.position`), so the sequences of a batch may sit at different positions.

    Args:
        q (torch.Tensor): queries of shape `[N, T, H, K]`, T ≥ 0 (any T, not only ≤ chunk_size).
        k (torch.Tensor): keys of shape `[N, T, H, K]`.
        v (torch.Tensor): values of shape `[N, T, H, V]`.
        lr (float | torch.Tensor): inner learning rate η, a float or `[N, T, H]`.
        retention (float | torch.Tensor): α, a float or `[N, T, H]`.
        momentum (float | torch.Tensor, Optional): μ, a float or `[N, T, H]`; None iff `state.momentum` is None.
        state (LinearMemoryDecodeState): updated in place; build it with
            `LinearMemoryDecodeState.from_state(...)` or `.zeros(...)`.
        dgd (bool): HOPE's Delta Gradient Descent preconditioner. Default: `False`.
        scale (float): factor of the read. Default: `1.0`.
        backend (str): `"torch" | "cpp" | "cuda" | "auto"`. Default: `"auto"`.

    Returns:
        o (torch.Tensor): `[N, T, H, V]` in the dtype of `v`, read after each token's write.

    Examples::
        >>> N, T, H, K, V = 2, 128, 4, 64, 64
        >>> q, k, v = torch.randn(N, T, H, K), F.normalize(torch.randn(N, T, H, K), dim=-1), torch.randn(N, T, H, V)
        >>> lr, retention, mom = 0.1 * torch.ones(N, T, H), 0.99 * torch.ones(N, T, H), 0.9 * torch.ones(N, T, H)
        >>> state = LinearMemoryDecodeState.zeros(N, H, K, V, chunk_size=64, momentum=True)
        >>> for t in range(T):
        ...     o_t = linear_memory_step(q[:, t:t+1], k[:, t:t+1], v[:, t:t+1], lr[:, t:t+1],
        ...                              retention[:, t:t+1], mom[:, t:t+1], state)
        >>> if state.at_chunk_boundary():  # T = 128 is: a LinearMemoryState
        ...     final = state.to_state()
    """
    _check(q, k, v, lr, retention, momentum, state, dgd, scale)
    scale = float(scale)                                                      # a NumPy scalar too
    call = {
        "device": q.device, "dtype": q.dtype, "K": q.shape[-1], "V": v.shape[-1], "chunk_size": state.chunk_size,
        "requires_grad": needs_grad(q, k, v, lr, retention, momentum, state.memory, state.chunk_memory,
                                    state.momentum),
        **decode_state_facts(state),
    }
    impl = STEP_BACKENDS.resolve(backend, call)
    return impl(q, k, v, lr, retention, momentum, state, dgd=dgd, scale=scale)
