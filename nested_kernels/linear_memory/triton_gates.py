"""The gates of `linear_memory`'s triton backend inside its custom ops, without autograd between
them: η, α, μ cut into the rows of the chunk-gates kernels (one chunk each), the gate matrices
those kernels build for the chunk kernels, and the rows' gradients from the chunk kernels' gate
gradients (`triton_kernels/common/chunk_gates.py`, SPEC §2 kernel notes).

The matrices are kept in their stored form (`StoredGates`: each tensor once, since the outputs of a
custom op may not alias one another) and handed to the kernels as `kernel_gates` lays them out."""
from typing import NamedTuple, Optional, Tuple

import torch

from ..common.chunk_gates_triton import chunk_gates_vjp
from ..common.flat_chunks import FlatChunks


class GateRows(NamedTuple):
    """η, α, μ `[H · NC, C]` fp32, row h · NC + c for chunk c of head h; padding η = 0, α = μ = 1."""
    lr: torch.Tensor
    retention: torch.Tensor
    momentum: Optional[torch.Tensor]


class StoredGates(NamedTuple):
    """The chunk kernels' gates over `[H, NC, ...]` fp32, each stored once."""
    decay: torch.Tensor                      # β [.., C+1]
    carry: Optional[torch.Tensor]            # f [.., C+1], with momentum
    write: Optional[torch.Tensor]            # G [.., C+1, C], with momentum
    e_matrix: Optional[torch.Tensor]         # E [.., C+1, C]: without momentum the write, with it DGD's alone
    mom_decay_last: Optional[torch.Tensor]   # m[C] [..], with momentum
    mom_write_last: Optional[torch.Tensor]   # N[C, :] [.., C], with momentum


def gate_rows(layout: FlatChunks, lr: torch.Tensor, retention: torch.Tensor,
              momentum: Optional[torch.Tensor]) -> GateRows:
    """η, α, μ `[B, T, H]` fp32 as chunk rows (new tensors, never views of the inputs). Padding
    tokens get η = 0, α = μ = 1 (as `padded_chunk_gates`): they change nothing before them."""
    def rows(x: torch.Tensor, pad: float) -> torch.Tensor:
        chunk_major = layout.to_chunk_major(layout.flatten(x, pad))          # [H, NC, C], strided
        out = x.new_empty(chunk_major.shape[0] * chunk_major.shape[1], layout.chunk_size)
        out.view(chunk_major.shape).copy_(chunk_major)
        return out
    return GateRows(rows(lr, 0.0), rows(retention, 1.0), None if momentum is None else rows(momentum, 1.0))


def gate_matrices(rows: GateRows, H: int, NC: int, dgd: bool) -> StoredGates:
    """The gates of every chunk from its rows, by the chunk-gates kernel (one program per chunk). E
    only where a kernel reads it: without momentum (it is the write) or with DGD."""
    from ..triton_kernels.common.chunk_gates import chunk_gates_fwd

    C = rows.lr.shape[1]
    decay, carry, write, mom_decay, mom_write, e_matrix = chunk_gates_fwd(
        rows.lr, rows.retention, rows.momentum, dgd_write=dgd, mom_write_last_row=True)
    vec = lambda x: None if x is None else x.view(H, NC, C + 1)
    mat = lambda x: None if x is None else x.view(H, NC, C + 1, C)
    if rows.momentum is None:
        return StoredGates(vec(decay), None, None, mat(e_matrix), None, None)
    # of m and N the kernels read the last token's row, row C: the padding after it has η = 0, μ = 1
    return StoredGates(vec(decay), vec(carry), mat(write), mat(e_matrix), mom_decay[:, C].contiguous().view(H, NC),
                       mom_write.view(H, NC, C))


def kernel_gates(gates: StoredGates, dgd: bool) -> Tuple[Optional[torch.Tensor], ...]:
    """(decay, carry, write, dgd_write, mom_decay_last, mom_write_last) as `linear_memory_fwd` and
    `linear_memory_bwd` take them: without momentum E is the write, and DGD's E too."""
    write = gates.e_matrix if gates.write is None else gates.write
    return (gates.decay, gates.carry, write, gates.e_matrix if dgd else None, gates.mom_decay_last,
            gates.mom_write_last)


def _total(*xs: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
    present = [x for x in xs if x is not None]
    return sum(present[1:], present[0]) if present else None


def gate_row_grads(rows: GateRows, d_gates, d_e_extra: Optional[torch.Tensor]) -> GateRows:
    """The gradients of the rows (None for absent momentum) from `d_gates`, those of
    `kernel_gates`'s six tensors (None where absent, as `linear_memory_bwd` returns them), plus
    `d_e_extra`, E's gradient through the DGD inverse (or None)."""
    d_decay, d_carry, d_write, d_dgd_write, d_mom_decay_last, d_mom_write_last = d_gates
    n, C = rows.lr.shape
    if rows.momentum is None:                                                 # E: the write, and DGD's E
        cotangents = (d_decay, None, None, None, None, _total(d_write, d_dgd_write, d_e_extra))
    else:
        d_mom_decay = d_mom_decay_last.new_zeros(n, C + 1)                   # m's gradient: row C alone
        d_mom_decay[:, C] = d_mom_decay_last.reshape(n)
        cotangents = (d_decay, d_carry, d_write, d_mom_decay, d_mom_write_last.reshape(n, C),
                      _total(d_dgd_write, d_e_extra))
    return GateRows(*chunk_gates_vjp(rows.lr, rows.retention, rows.momentum, cotangents))
