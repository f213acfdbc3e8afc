"""Cutting [B, T, H, ·] sequences into chunks laid out [B, H, NT, C, ·] for the torch tier."""
from typing import Optional

import torch
import torch.nn.functional as F


def num_chunks(T: int, chunk_size: int) -> int:
    return -(-T // chunk_size)


def to_chunks(x: torch.Tensor, chunk_size: int, pad_value: float = 0.0) -> torch.Tensor:
    """[B, T, H, D] -> [B, H, NT, C, D], or gates [B, T, H] -> [B, H, NT, C]; the tail is padded."""
    B, T, H = x.shape[:3]
    NT = num_chunks(T, chunk_size)
    x = x.movedim(2, 1)
    pad = NT * chunk_size - T
    if pad:
        spec = (0, 0) * (x.dim() - 3) + (0, pad)
        x = F.pad(x, spec, value=pad_value)
    return x.reshape(B, H, NT, chunk_size, *x.shape[3:])


def from_chunks(x: torch.Tensor, T: int) -> torch.Tensor:
    """[B, H, NT, C, D] -> [B, T, H, D] (drops the padding)."""
    B, H, NT, C = x.shape[:4]
    return x.reshape(B, H, NT * C, *x.shape[4:])[:, :, :T].movedim(1, 2)


def last_row(T: int, chunk_size: int, c: int) -> int:
    """How many tokens chunk c holds: the row of its end state in the gate matrices."""
    return min(chunk_size, T - c * chunk_size)


def optional_stack(xs, dim: int) -> Optional[torch.Tensor]:
    return None if xs[0] is None else torch.stack(xs, dim)
