"""What a Titans-style memory layer wraps around its memory op: projections, short causal
convolutions, L2-normalised queries and keys, gate heads and the gated, normalised output."""
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from .conv import ShortConvolution


class MemoryInputs(NamedTuple):
    q: torch.Tensor               # [B, T, H, K], L2-normalised
    k: torch.Tensor               # [B, T, H, K], L2-normalised
    v: torch.Tensor               # [B, T, H, V]
    lr: torch.Tensor              # [B, T, H]  η = lr_max · sigmoid(·)
    retention: torch.Tensor       # [B, T, H]  α = sigmoid(·)
    momentum: Optional[torch.Tensor]  # [B, T, H] μ = sigmoid(·), or None


class MemoryProjections(nn.Module):
    """x `[B, T, d_model]` -> the inputs of a memory op, per head; conv caches chain calls."""

    def __init__(self, d_model: int, num_heads: int, key_dim: int, value_dim: int, *,
                 momentum: bool = True, conv_size: int = 4, lr_max: float = 0.1, retention_bias: float = 4.0):
        super().__init__()
        self.num_heads, self.key_dim, self.value_dim, self.lr_max = num_heads, key_dim, value_dim, lr_max
        self.q_proj = nn.Linear(d_model, num_heads * key_dim, bias=False)
        self.k_proj = nn.Linear(d_model, num_heads * key_dim, bias=False)
        self.v_proj = nn.Linear(d_model, num_heads * value_dim, bias=False)
        self.convs = nn.ModuleList(ShortConvolution(n, conv_size) for n in
                                   (num_heads * key_dim, num_heads * key_dim, num_heads * value_dim))
        self.lr_proj = nn.Linear(d_model, num_heads)
        self.retention_proj = nn.Linear(d_model, num_heads)
        nn.init.constant_(self.retention_proj.bias, retention_bias)        # start close to full retention
        self.momentum_proj = nn.Linear(d_model, num_heads) if momentum else None

    def forward(self, x: torch.Tensor, conv_caches=None) -> Tuple[MemoryInputs, tuple]:
        B, T, _ = x.shape
        H = self.num_heads
        caches = conv_caches or (None, None, None)
        projected, new_caches = [], []
        for proj, conv, cache in zip((self.q_proj, self.k_proj, self.v_proj), self.convs, caches):
            y, new_cache = conv(proj(x), cache)
            projected.append(F.silu(y))
            new_caches.append(new_cache)
        q, k, v = projected
        q = F.normalize(q.view(B, T, H, self.key_dim), dim=-1)
        k = F.normalize(k.view(B, T, H, self.key_dim), dim=-1)
        v = v.view(B, T, H, self.value_dim)
        gates = (
            self.lr_max * torch.sigmoid(self.lr_proj(x).float()),
            torch.sigmoid(self.retention_proj(x).float()),
            None if self.momentum_proj is None else torch.sigmoid(self.momentum_proj(x).float()),
        )
        return MemoryInputs(q, k, v, *gates), tuple(new_caches)


class GatedOutput(nn.Module):
    """RMS-normalise each head's read, gate it with SiLU(x W_g) and project back to d_model."""

    def __init__(self, d_model: int, num_heads: int, value_dim: int):
        super().__init__()
        self.num_heads, self.value_dim = num_heads, value_dim
        self.norm = nn.RMSNorm(value_dim)
        self.gate_proj = nn.Linear(d_model, num_heads * value_dim, bias=False)
        self.o_proj = nn.Linear(num_heads * value_dim, d_model, bias=False)

    def forward(self, o: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        B, T = x.shape[:2]
        gate = F.silu(self.gate_proj(x)).view(B, T, self.num_heads, self.value_dim)
        return self.o_proj((self.norm(o.to(x.dtype)) * gate).reshape(B, T, self.num_heads * self.value_dim))
