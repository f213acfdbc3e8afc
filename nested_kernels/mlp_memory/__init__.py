"""`mlp_memory`: the deep (2-layer MLP) memory of Titans and of every HOPE memory (SPEC §3)."""
from typing import Optional, Tuple

import torch

from ..backends import OpBackends
from ..common.inputs import needs_grad
from ..common.validation import (
    check_chunk_size, check_cu_seqlens, check_flag, check_memory_gates, check_momentum_state, check_qkv,
    check_state_tensor,
)
from .chunked import mlp_memory_chunked
from .decode import MLPMemoryDecodeState, mlp_memory_step
from .options import READ_MODES, check_mlp_options
from .reference import mlp_memory_reference
from .state import MLPMemoryState
from ..common.triton_backend import auto_reason as _triton_auto
from .triton import mlp_memory_triton, unsupported_reason as _triton_unsupported

__all__ = ["mlp_memory", "MLPMemoryState", "BACKENDS", "READ_MODES", "mlp_memory_step", "MLPMemoryDecodeState"]

BACKENDS = OpBackends("mlp_memory")
BACKENDS.register("reference", mlp_memory_reference)
BACKENDS.register("torch", mlp_memory_chunked)
BACKENDS.register("triton", mlp_memory_triton, _triton_unsupported, _triton_auto)


def _check(q, k, v, lr, retention, momentum, initial_state, activation, residual, dgd, self_target, read,
           chunk_size, output_final_state, cu_seqlens):
    B, T, H, K, V = check_qkv(q, k, v)
    check_memory_gates(lr, retention, momentum, B, T, H, q.device)
    check_mlp_options(activation, residual, dgd, self_target, read, K, V)
    check_flag("output_final_state", output_final_state)
    check_chunk_size(chunk_size)
    N = check_cu_seqlens(cu_seqlens, B, T, q.device)
    if not isinstance(initial_state, MLPMemoryState):
        raise TypeError(f"initial_state: expected an MLPMemoryState (it is required), got {type(initial_state).__name__}")
    w1 = initial_state.w1
    check_state_tensor("initial_state.w1", w1, (None, H, K, None), "[N | 1, H, K, Dh]", q.device)
    Dh = w1.shape[-1]
    if w1.shape[0] not in (1, N):
        raise ValueError(f"initial_state.w1: expected a leading dim of 1 or N = {N}, got {w1.shape[0]}")
    check_state_tensor("initial_state.w2", initial_state.w2, (w1.shape[0], H, Dh, V),
                       "[N | 1, H, Dh, V] (the leading dim of w1)", q.device)
    check_momentum_state("initial_state.s1", initial_state.s1, momentum, (N, H, K, Dh), "[N, H, K, Dh]", q.device)
    check_momentum_state("initial_state.s2", initial_state.s2, momentum, (N, H, Dh, V), "[N, H, Dh, V]", q.device)


def mlp_memory(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lr,
    retention,
    momentum=None,
    *,
    initial_state: MLPMemoryState,
    activation: str = "silu",
    residual: bool = True,
    dgd: bool = False,
    self_target: bool = False,
    read: str = "current",
    chunk_size: int = 16,
    output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
    backend: str = "auto",
) -> Tuple[torch.Tensor, Optional[MLPMemoryState]]:
    r"""Two-layer MLP memory `f_W(x) = [x +] φ(x W1) W2` trained in context (SPEC §3).

    Per sequence and head, with `W^c` the weights at the start of the token's chunk:
    `r_t = f_{W^c}(k_t) − target_t` (`target_t = f_{W^c}(v_t)` if `self_target` else `v_t`,
    not detached), `δ_t = (r_t W2^cᵀ) ⊙ φ'(k_t W1^c)`; momenta `S1_t = μ_t S1_{t−1} − η_t k_tᵀ δ_t`,
    `S2_t = μ_t S2_{t−1} − η_t a_tᵀ r_t`; `W1_t = α_t W1_{t−1} + S1_t − [dgd] η_t k_tᵀ (k_t W1_{t−1})`,
    `W2_t = α_t W2_{t−1} + S2_t`. Reads: `f_{W_t}(q_t)` after the write (`read="current"`) or
    `f_{W^c}(q_t)` (`read="chunk_start"`, HOPE eq. 90). The backward is the exact gradient,
    with the second-order (φ'') terms the inner gradient brings.

    Args:
        q (torch.Tensor): queries `[B, T, H, K]`.
        k (torch.Tensor): keys `[B, T, H, K]`.
        v (torch.Tensor): values `[B, T, H, V]`.
        lr (float | torch.Tensor): η ≥ 0, a float or `[B, T, H]`.
        retention (float | torch.Tensor): α ∈ [0, 1], a float or `[B, T, H]`.
        momentum (float | torch.Tensor, Optional): μ ∈ [0, 1], a float or `[B, T, H]`. Default: `None`.
        initial_state (MLPMemoryState): required; `w1 [N | 1, H, K, Dh]`, `w2 [N | 1, H, Dh, V]` (a
            leading 1 broadcasts, and its gradient sums over the batch), `s1 [N, H, K, Dh]`,
            `s2 [N, H, Dh, V]` or None (zeros).
        activation (str): `"silu"` or `"gelu"` (tanh approximation). Default: `"silu"`.
        residual (bool): add the input, `f(x) = x + φ(x W1) W2`; needs K == V. Default: `True`.
        dgd (bool): DGD preconditioner on the input-side weight W1. Default: `False`.
        self_target (bool): HOPE's self-generated values `f_{W^c}(v_t)` as targets. Default: `False`.
        read (str): `"current"` or `"chunk_start"`. Default: `"current"`.
        chunk_size (int): tokens per chunk, counted from the start of each sequence. Default: `16`.
        output_final_state (bool): return the state after the last token. Default: `False`.
        cu_seqlens (torch.LongTensor, Optional): `[N + 1]` offsets, batch of one. Default: `None`.
        backend (str): `"reference" | "torch" | "triton" | "cuda" | "cpp" | "auto"`. Default: `"auto"`.

    Returns:
        o (torch.Tensor): `[B, T, H, V]` in the dtype of `v`.
        final_state (MLPMemoryState): fp32 per-sequence `[N, ...]` tensors if `output_final_state`, else `None`.

    Examples::
        >>> B, T, H, D = 2, 64, 4, 32
        >>> state = MLPMemoryState(torch.randn(1, H, D, 4 * D) * 0.02, torch.zeros(1, H, 4 * D, D))
        >>> q, k, v = torch.randn(B, T, H, D), F.normalize(torch.randn(B, T, H, D), dim=-1), torch.randn(B, T, H, D)
        >>> o, final = mlp_memory(q, k, v, 0.1, 0.99, 0.9, initial_state=state, output_final_state=True)
        >>> cu_seqlens = torch.tensor([0, 10, 64])
        >>> o_var, _ = mlp_memory(q[:1], k[:1], v[:1], 0.1, 0.99, initial_state=state, cu_seqlens=cu_seqlens)
    """
    _check(q, k, v, lr, retention, momentum, initial_state, activation, residual, dgd, self_target, read,
           chunk_size, output_final_state, cu_seqlens)
    call = {
        "device": q.device, "dtype": q.dtype, "K": q.shape[-1], "V": v.shape[-1], "Dh": initial_state.w1.shape[-1],
        "chunk_size": chunk_size, "requires_grad": needs_grad(q, k, v, lr, retention, momentum, *initial_state),
    }
    impl = BACKENDS.resolve(backend, call)
    return impl(
        q, k, v, lr, retention, momentum, initial_state=initial_state, activation=activation,
        residual=residual, dgd=dgd, self_target=self_target, read=read, chunk_size=chunk_size,
        output_final_state=output_final_state, cu_seqlens=cu_seqlens,
    )
