"""Gate algebra of one chunk (SPEC §2 kernel notes), shared by every chunked memory.

Within a chunk of C tokens, index 0 is the chunk start and i = 1..C the state after token i.
With segment products P^α[i, l] = Π_{l<s≤i} α_s and P^μ[i, l] = Π_{l<s≤i} μ_s (zero for l > i):
    β_i = P^α[i, 0]                          decay of the chunk-start state M^c
    m_i = P^μ[i, 0]                          decay of the chunk-start momentum S^c
    f_i = Σ_{l≤i} P^α[i, l] m_l              weight of S^c in M_i
    G_ij = η_j Σ_{j≤l≤i} P^α[i, l] P^μ[l, j]   weight of −u_j in M_i
    N_ij = η_j P^μ[i, j]                     weight of −u_j in S_i
    E_ij = η_j P^α[i, j]                     weight of the DGD term −k_jᵀ(k_j M_{j−1}) in M_i
so that S_i = m_i S^c − Σ_j N_ij u_j and M_i = β_i M^c + f_i S^c − Σ_j G_ij u_j [− Σ_j E_ij k_jᵀ w_j].
Without momentum (μ ≡ 0) P^μ = I, hence f = 0 and G = E.

Segment products are cumulative products of masked gate matrices rather than ratios of
prefix products, so a retention of exactly 0 stays exact, in value and in gradient.
"""
from typing import Callable, NamedTuple, Optional

import torch


class ChunkGates(NamedTuple):
    decay: torch.Tensor                 # β  [..., C+1]
    carry: Optional[torch.Tensor]       # f  [..., C+1]       (None without momentum)
    write: torch.Tensor                 # G  [..., C+1, C]
    mom_decay: Optional[torch.Tensor]   # m  [..., C+1]       (None without momentum)
    mom_write: Optional[torch.Tensor]   # N  [..., C+1, C]    (None without momentum)
    dgd_write: Optional[torch.Tensor]   # E  [..., C+1, C]    (None where not asked for: triton_chunk_gates)

    def chunk(self, c: int) -> "ChunkGates":
        """The gates of chunk c, from gates laid out as [B, H, NT, ...]."""
        return ChunkGates(*(None if g is None else g[:, :, c] for g in self))


def segment_products(g: torch.Tensor) -> torch.Tensor:
    """P[..., i, l] = Π_{l<s≤i} g_s for 0 ≤ l ≤ i ≤ C (zero above the diagonal); g is [..., C]."""
    C = g.shape[-1]
    padded = torch.cat([g.new_ones(g.shape[:-1] + (1,)), g], -1)               # g_0 := 1 (never used)
    idx = torch.arange(C + 1, device=g.device)
    after = idx[None, :] > idx[:, None]                                         # s > l
    factors = torch.where(after, padded[..., None, :], torch.ones_like(padded[..., None, :]))
    prods = torch.cumprod(factors, dim=-1)                                      # [l, i] = Π_{l<s≤i} g_s
    return prods.transpose(-1, -2).tril()


def chunk_gates(lr: torch.Tensor, retention: torch.Tensor, momentum: Optional[torch.Tensor]) -> ChunkGates:
    """Gate matrices of chunks whose gates η, α, μ are laid out [..., C]."""
    p_alpha = segment_products(retention)
    decay = p_alpha[..., :, 0]
    dgd_write = p_alpha[..., :, 1:] * lr[..., None, :]
    if momentum is None:
        return ChunkGates(decay, None, dgd_write, None, None, dgd_write)
    p_mu = segment_products(momentum)
    mom_decay = p_mu[..., :, 0]
    carry = (p_alpha[..., :, 1:] @ mom_decay[..., 1:, None]).squeeze(-1)
    write = (p_alpha[..., :, 1:] @ p_mu[..., 1:, 1:]) * lr[..., None, :]
    mom_write = p_mu[..., :, 1:] * lr[..., None, :]
    return ChunkGates(decay, carry, write, mom_decay, mom_write, dgd_write)


def padded_chunk_gates(lr, retention, momentum, chunk: Callable[[torch.Tensor, float], torch.Tensor],
                       gates: Callable[..., ChunkGates] = chunk_gates) -> ChunkGates:
    """`gates` (`chunk_gates`, or its Triton twin) of per-token gates cut into chunks by
    `chunk(gate, pad_value)`. Padding tokens (the tail of a partial chunk) get η = 0 and
    α = μ = 1, so they change nothing before them."""
    return gates(chunk(lr, 0.0), chunk(retention, 1.0), None if momentum is None else chunk(momentum, 1.0))
