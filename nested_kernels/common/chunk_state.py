"""One chunk of a linear layer X (K×V) trained in context: its DGD pseudo-values, its
reads after every token, and its end-of-chunk state, from the gates of `chunk_gates.py`.

A layer is given by its keys κ_j (C×K), errors ε_j (C×V) with per-token gradient
u_j = κ_jᵀ ε_j taken at the chunk start, chunk-start state X^c and momentum S^c.
For `linear_memory` κ = k and ε = r; for the MLP memory's first layer κ = k and ε = δ,
for its second κ = a and ε = r. Shapes are [..., C, ·] with any leading dims.
"""
from typing import Optional, Tuple

import torch

from .chunk_gates import ChunkGates


def _diag_rows(weights: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    return weights[..., :, None] * x


def dgd_inverse(gates: ChunkGates, kk: torch.Tensor) -> torch.Tensor:
    """(I + L)^{-1} with L_tj = (k_t·k_j) E_{t−1, j} strictly lower: the DGD system of a chunk."""
    C = kk.shape[-1]
    lower = kk * gates.dgd_write[..., :C, :]                                   # row t−1 of E for token t
    eye = torch.eye(C, dtype=kk.dtype, device=kk.device)
    return torch.linalg.solve_triangular(eye + lower, eye.expand_as(lower), upper=False, unitriangular=True)


def dgd_pseudo_values(
    gates: ChunkGates,
    dgd_inv: torch.Tensor,
    kk: torch.Tensor,
    kx0: torch.Tensor,
    ks0: Optional[torch.Tensor],
    err: torch.Tensor,
) -> torch.Tensor:
    """w_t = k_t X_{t−1}, the DGD term's read of the running state, for every token of the chunk.

    X_{t−1} = β_{t−1} X^c + f_{t−1} S^c − Σ_{j<t} G_{t−1,j} κ_jᵀ ε_j − Σ_{j<t} E_{t−1,j} k_jᵀ w_j,
    so (I + L) W = diag(β) K X^c + diag(f) K S^c − ((K Kᵀ) ⊙ G_prev) E (a unit-triangular system).
    """
    C = kk.shape[-1]
    rhs = _diag_rows(gates.decay[..., :C], kx0) - (kk * gates.write[..., :C, :]) @ err
    if ks0 is not None:
        rhs = rhs + _diag_rows(gates.carry[..., :C], ks0)
    return dgd_inv @ rhs


def chunk_read(
    gates: ChunkGates,
    qk: torch.Tensor,
    qx0: torch.Tensor,
    qs0: Optional[torch.Tensor],
    err: torch.Tensor,
    pseudo: Optional[torch.Tensor],
) -> torch.Tensor:
    """Rows ρ_i X_i for every token i after its write (the dual form):
    diag(β) ρ X^c + diag(f) ρ S^c − ((ρ κᵀ) ⊙ G) ε − [dgd] ((ρ kᵀ) ⊙ E) W."""
    out = _diag_rows(gates.decay[..., 1:], qx0) - (qk * gates.write[..., 1:, :]) @ err
    if qs0 is not None:
        out = out + _diag_rows(gates.carry[..., 1:], qs0)
    if pseudo is not None:
        out = out - (qk * gates.dgd_write[..., 1:, :]) @ pseudo
    return out


def chunk_end_state(
    gates: ChunkGates,
    row: int,
    keys: torch.Tensor,
    x0: torch.Tensor,
    s0: Optional[torch.Tensor],
    err: torch.Tensor,
    pseudo: Optional[torch.Tensor],
) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(X, S) after token `row` of the chunk (row = C, or the length of a partial last chunk)."""
    def weighted(w):                                                           # Σ_j w_j κ_jᵀ ε_j
        return keys.transpose(-1, -2) @ _diag_rows(w[..., row, :], err)

    x = gates.decay[..., row, None, None] * x0 - weighted(gates.write)
    if pseudo is not None:
        x = x - keys.transpose(-1, -2) @ _diag_rows(gates.dgd_write[..., row, :], pseudo)
    if s0 is None:
        return x, None
    x = x + gates.carry[..., row, None, None] * s0
    s = gates.mom_decay[..., row, None, None] * s0 - weighted(gates.mom_write)
    return x, s
