"""`self_modifying_titans`: the self-modifying memories of HOPE's Titans layer (SPEC §6)."""
from typing import NamedTuple, Optional, Tuple

import torch

from ..common.activations import ACTIVATIONS
from ..mlp_memory import MLPMemoryState
from .chunked import self_modifying_titans_chunked
from .decode import self_modifying_step
from .memories import split_memories, stack_memories
from .reference import self_modifying_titans_reference

__all__ = ["self_modifying_titans", "SelfModifyingState", "BACKENDS", "self_modifying_step", "stack_memories",
           "split_memories"]

BACKENDS = {"reference": self_modifying_titans_reference, "torch": self_modifying_titans_chunked}


class SelfModifyingState(NamedTuple):
    """The four memories `M_k, M_v, M_η, M_α`, each an `MLPMemoryState` with K = V = D:
    w1 `[N | 1, H, D, Dh]`, w2 `[N | 1, H, Dh, D]`, s1/s2 `[N, H, ·, ·]` or None."""

    k: MLPMemoryState
    v: MLPMemoryState
    lr: MLPMemoryState
    retention: MLPMemoryState


def _check(x_tilde, states, chunk_size, lr_max, momentum, activation, backend, lr_bias, retention_bias):
    if x_tilde.dim() != 4:
        raise ValueError(f"x_tilde: expected [B, T, H, D], got shape {tuple(x_tilde.shape)}")
    B, T, H, D = x_tilde.shape
    if len(states) != 4 or not all(isinstance(s, MLPMemoryState) for s in states):
        raise TypeError("states: expected four MLPMemoryState (M_k, M_v, M_η, M_α)")
    for name, s in zip(SelfModifyingState._fields, states):
        if s.w1.dim() != 4 or s.w1.shape[1:3] != (H, D) or s.w2.shape[1] != H or s.w2.shape[-1] != D:
            raise ValueError(f"states.{name}: expected w1 [N | 1, {H}, {D}, Dh] and w2 [N | 1, {H}, Dh, {D}], "
                             f"got {tuple(s.w1.shape)} and {tuple(s.w2.shape)}")
        if (s.s1 is None) != (states[0].s1 is None):
            raise ValueError("states: expected momenta s1/s2 on all four memories or on none")
    if not (isinstance(chunk_size, int) and chunk_size >= 1):
        raise ValueError(f"chunk_size: expected an int >= 1, got {chunk_size!r}")
    if not lr_max > 0:
        raise ValueError(f"lr_max: expected a float > 0, got {lr_max}")
    for name, g in (("momentum", momentum), ("lr_bias", lr_bias), ("retention_bias", retention_bias)):
        if g is not None and tuple(g.shape) != (H,):
            raise ValueError(f"{name}: expected a per-head tensor [{H}] or None, got shape {tuple(g.shape)}")
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation: expected one of {sorted(ACTIVATIONS)}, got {activation!r}")
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {sorted(BACKENDS)}, got {backend!r}")


def self_modifying_titans(
    x_tilde: torch.Tensor,
    states,
    *,
    chunk_size: int = 16,
    lr_max: float = 0.1,
    momentum: Optional[torch.Tensor] = None,
    dgd: bool = True,
    activation: str = "silu",
    lr_bias: Optional[torch.Tensor] = None,
    retention_bias: Optional[torch.Tensor] = None,
    backend: str = "torch",
) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, SelfModifyingState]:
    r"""HOPE's self-modifying memories `M_k, M_v, M_η, M_α` (SPEC §6).

    Chunks of `chunk_size` tokens count from the start of the call. For token t of chunk c,
    with `W^c_□` the weights after chunk c−1 (residual MLPs `f(x) = x + φ(x W1) W2`):
    `k_t = L2norm(M_k(x̃_t))`, `v_t = M_v(x̃_t)`, `η_t = lr_max·σ(mean(M_η(x̃_t)) + b_η)`,
    `α_t = σ(mean(M_α(x̃_t)) + b_α)`. Then each memory takes the `mlp_memory` step of SPEC §3
    with keys k_t, values v_t (its own target `M_□(v_t)` at `W^c_□`, not detached), rates η_t,
    α_t, per-head momentum μ and DGD. Differentiable end to end (states, x̃, μ, biases).

    Args:
        x_tilde (torch.Tensor): x̃ per head `[B, T, H, D]`.
        states (SelfModifyingState): four `MLPMemoryState`s `(M_k, M_v, M_η, M_α)`, w1
            `[N | 1, H, D, Dh]`, w2 `[N | 1, H, Dh, D]`, momenta `[N, H, ·, ·]` or None (zeros).
        chunk_size (int): C_aux. Default: `16`.
        lr_max (float): the largest inner learning rate. Default: `0.1`.
        momentum (torch.Tensor, Optional): μ per head `[H]`; None = no momentum. Default: `None`.
        dgd (bool): DGD on W1 of every memory. Default: `True`.
        activation (str): `"silu"` or `"gelu"`. Default: `"silu"`.
        lr_bias, retention_bias (torch.Tensor, Optional): `[H]` added inside the sigmoids of η and
            α; None = 0 (SPEC's formula). Default: `None`.
        backend (str): `"reference"` (token loop) or `"torch"` (chunk loop). Default: `"torch"`.

    Returns:
        k, v (torch.Tensor): `[B, T, H, D]`; lr, retention (torch.Tensor): `[B, T, H]`, fp32 (fp64 for fp64 x̃);
        final_state (SelfModifyingState): per-sequence `[B, ...]` states after the last token.

    Examples::
        >>> B, T, H, D = 2, 40, 2, 16
        >>> mem = MLPMemoryState(torch.randn(1, H, D, D) / 4, torch.randn(1, H, D, D) * 0.02)
        >>> states = SelfModifyingState(mem, mem, mem, mem)
        >>> k, v, lr, ret, final = self_modifying_titans(torch.randn(B, T, H, D), states, chunk_size=16)
    """
    _check(x_tilde, states, chunk_size, lr_max, momentum, activation, backend, lr_bias, retention_bias)
    k, v, lr, retention, final = BACKENDS[backend](
        x_tilde, tuple(states), chunk_size=chunk_size, lr_max=lr_max, momentum=momentum, dgd=dgd,
        activation=activation, lr_bias=lr_bias, retention_bias=retention_bias,
    )
    return k, v, lr, retention, SelfModifyingState(*final)
