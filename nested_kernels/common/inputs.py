"""Normalisation of already-validated inputs, shared by the reference and torch tiers."""
from typing import List, Optional, Tuple, Union

import torch

Gate = Union[float, torch.Tensor]


def compute_dtype(*tensors: torch.Tensor) -> torch.dtype:
    """fp32 accumulation and state (SPEC §1), fp64 when the inputs are fp64 (the oracle tests)."""
    return torch.float64 if any(t.dtype == torch.float64 for t in tensors) else torch.float32


def as_gate(gate: Gate, like: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A per-token, per-head gate `[B, T, H]` in `dtype`; a Python float broadcasts."""
    B, T, H = like.shape[:3]
    if isinstance(gate, torch.Tensor):
        return gate.to(dtype)
    return torch.full((B, T, H), float(gate), dtype=dtype, device=like.device)


def memory_inputs(q, k, v, lr, retention, momentum):
    """q, k, v and the gates η, α, μ of a memory op in its compute dtype; returns
    (output dtype, compute dtype, q, k, v, η, α, μ or None)."""
    out_dtype, dtype = v.dtype, compute_dtype(q, k, v)
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    mu = None if momentum is None else as_gate(momentum, q, dtype)
    return out_dtype, dtype, q, k, v, as_gate(lr, q, dtype), as_gate(retention, q, dtype), mu


def sequence_bounds(B: int, T: int, cu_seqlens: Optional[torch.Tensor]) -> List[Tuple[int, int, int]]:
    """(batch row, start, end) of every sequence: B dense rows, or the N varlen sequences of row 0."""
    if cu_seqlens is None:
        return [(b, 0, T) for b in range(B)]
    offsets = cu_seqlens.tolist()
    return [(0, offsets[n], offsets[n + 1]) for n in range(len(offsets) - 1)]


def stack_sequences(per_sequence: List[torch.Tensor], empty: torch.Tensor) -> torch.Tensor:
    """The per-sequence tensors stacked on a new leading axis; `empty` (leading size 0) when a call has
    no sequence (B = 0), which torch.stack cannot give."""
    return torch.stack(per_sequence, 0) if per_sequence else empty


def needs_grad(*xs) -> bool:
    """Whether autograd will record a call on these inputs (decides which backends can run it)."""
    if not torch.is_grad_enabled():
        return False
    return any(isinstance(x, torch.Tensor) and x.requires_grad for x in xs)
