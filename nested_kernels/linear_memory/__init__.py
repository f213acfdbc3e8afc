"""`linear_memory`: the Titans / HOPE linear associative memory (SPEC §2)."""
from typing import Optional, Tuple

import torch

from ..backends import OpBackends
from ..common.inputs import needs_grad
from ..common.validation import (
    check_chunk_size, check_cu_seqlens, check_flag, check_memory_gates, check_momentum_state, check_qkv,
    check_scale, check_state_tensor,
)
from .chunked import linear_memory_chunked
from .decode import LinearMemoryDecodeState, linear_memory_step
from .cpp import linear_memory_cpp, unsupported_reason as _cpp_unsupported
from .cuda import auto_reason as _cuda_auto, linear_memory_cuda, unsupported_reason as _cuda_unsupported
from .reference import linear_memory_reference
from .state import LinearMemoryState
from ..common.triton_backend import auto_reason as _triton_auto
from .triton import linear_memory_triton, unsupported_reason as _triton_unsupported

__all__ = ["linear_memory", "LinearMemoryState", "BACKENDS", "linear_memory_step", "LinearMemoryDecodeState"]

BACKENDS = OpBackends("linear_memory")
BACKENDS.register("reference", linear_memory_reference)
BACKENDS.register("torch", linear_memory_chunked)
BACKENDS.register("triton", linear_memory_triton, _triton_unsupported, _triton_auto)
BACKENDS.register("cuda", linear_memory_cuda, _cuda_unsupported, _cuda_auto)
BACKENDS.register("cpp", linear_memory_cpp, _cpp_unsupported)


def _check(q, k, v, lr, retention, momentum, dgd, chunk_size, scale, initial_state, output_final_state, cu_seqlens):
    B, T, H, K, V = check_qkv(q, k, v)
    check_memory_gates(lr, retention, momentum, B, T, H, q.device)
    check_flag("dgd", dgd)
    check_flag("output_final_state", output_final_state)
    check_chunk_size(chunk_size)
    check_scale(scale)
    N = check_cu_seqlens(cu_seqlens, B, T, q.device)
    if initial_state is not None:
        if not isinstance(initial_state, LinearMemoryState):
            raise TypeError(f"initial_state: expected a LinearMemoryState, got {type(initial_state).__name__}")
        dims = "[N, H, K, V]"
        check_state_tensor("initial_state.memory", initial_state.memory, (N, H, K, V), dims, q.device)
        check_momentum_state("initial_state.momentum", initial_state.momentum, momentum, (N, H, K, V), dims, q.device)


def linear_memory(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lr,
    retention,
    momentum=None,
    *,
    dgd: bool = False,
    chunk_size: int = 64,
    scale: float = 1.0,
    initial_state: Optional[LinearMemoryState] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
    backend: str = "auto",
) -> Tuple[torch.Tensor, Optional[LinearMemoryState]]:
    r"""Linear associative memory trained in context by chunked gradient descent (SPEC §2).

    Per sequence and head, with `M^c` the memory at the start of the token's chunk:
    `r_t = k_t M^c − v_t`, `S_t = μ_t S_{t−1} − η_t k_tᵀ r_t`,
    `M_t = α_t M_{t−1} + S_t − [dgd] η_t k_tᵀ (k_t M_{t−1})`, `o_t = scale · q_t M_t`.
    The read happens after the token's own write. Retention multiplies the old state beside
    the update (Titans), unlike fla's gated delta rule, which decays before the error; the
    two agree when `retention = 1`.

    Args:
        q (torch.Tensor): queries of shape `[B, T, H, K]`.
        k (torch.Tensor): keys of shape `[B, T, H, K]` (L2-normalise them for a stable memory).
        v (torch.Tensor): values of shape `[B, T, H, V]`.
        lr (float | torch.Tensor): inner learning rate η ≥ 0, a float or `[B, T, H]`.
        retention (float | torch.Tensor): α ∈ [0, 1], multiplies the old state, a float or `[B, T, H]`.
        momentum (float | torch.Tensor, Optional): μ ∈ [0, 1], a float or `[B, T, H]`.
            Default: `None` (no momentum state).
        dgd (bool): apply HOPE's Delta Gradient Descent preconditioner `(α_t I − η_t k_tᵀk_t)`
            to the running state. Default: `False`.
        chunk_size (int): tokens per chunk, counted from the start of each sequence; every
            inner gradient is taken at the chunk-start state. 1 is exact online GD. Default: `64`.
        scale (float): factor of the read. Default: `1.0`.
        initial_state (LinearMemoryState, Optional): `memory [N, H, K, V]`, `momentum [N, H, K, V]`
            or None; zeros when absent. `N = B`, or the number of sequences with `cu_seqlens`.
        output_final_state (bool): return the state after the last token. Default: `False`.
        cu_seqlens (torch.LongTensor, Optional): `[N + 1]` offsets of the sequences packed in a
            batch of one, as in fla. They are read on the host (validation and layout), so a call
            with `cu_seqlens` is not traceable by `torch.compile(fullgraph=True)`; dense calls are.
            Default: `None`.
        backend (str): `"reference" | "torch" | "triton" | "cuda" | "cpp" | "auto"`. Default: `"auto"`.

    Returns:
        o (torch.Tensor): `[B, T, H, V]` in the dtype of `v`.
        final_state (LinearMemoryState): `[N, H, K, V]` tensors, fp32 (fp64 for fp64 inputs), if
            `output_final_state`, else `None`.

    A NaN or inf in the inputs of token t stays in the outputs it reaches (t's own, and later ones
    through the memory) and never reaches another sequence. In the torch and triton tiers it can
    also reach the outputs of earlier tokens of its chunk, whose masked products multiply it by zero
    (triton_kernels/linear_memory/README.md, "Precision").

    Examples::
        >>> B, T, H, K, V = 2, 100, 4, 64, 64
        >>> q, k, v = torch.randn(B, T, H, K), F.normalize(torch.randn(B, T, H, K), dim=-1), torch.randn(B, T, H, V)
        >>> lr, retention = torch.rand(B, T, H) * 0.1, torch.ones(B, T, H)
        >>> o, state = linear_memory(q, k, v, lr, retention, momentum=0.9, output_final_state=True)
        # the same two sequences packed with cu_seqlens
        >>> cu_seqlens = torch.tensor([0, T, 2 * T])
        >>> o_var, state_var = linear_memory(q.flatten(0, 1)[None], k.flatten(0, 1)[None], v.flatten(0, 1)[None],
        ...     lr.flatten(0, 1)[None], retention.flatten(0, 1)[None], momentum=0.9,
        ...     output_final_state=True, cu_seqlens=cu_seqlens)
    """
    _check(q, k, v, lr, retention, momentum, dgd, chunk_size, scale, initial_state, output_final_state, cu_seqlens)
    scale = float(scale)                                                      # a NumPy scalar too
    call = {
        "device": q.device, "dtype": q.dtype, "K": q.shape[-1], "V": v.shape[-1], "chunk_size": chunk_size,
        "requires_grad": needs_grad(q, k, v, lr, retention, momentum, *(initial_state or ())),
    }
    impl = BACKENDS.resolve(backend, call)
    return impl(
        q, k, v, lr, retention, momentum, dgd=dgd, chunk_size=chunk_size, scale=scale,
        initial_state=initial_state, output_final_state=output_final_state, cu_seqlens=cu_seqlens,
    )
