"""The gates of `linear_memory`'s triton backend inside its custom ops, without autograd between
them: the gate matrices the chunk-gates kernels build for the chunk kernels from η, α, μ `[B, T, H]`
as the op takes them (the kernels read each chunk's tokens through the layout's padding index,
`TokenGates`: no rows cut and copied on the host), and η, α, μ's gradients, written by the
backward kernel in that same layout (`triton_kernels/common/chunk_gates.py`, SPEC §2 kernel notes).

The matrices are kept in their stored form (`StoredGates`: each tensor once, since the outputs of a
custom op may not alias one another) and handed to the kernels as `kernel_gates` lays them out."""
from typing import NamedTuple, Optional, Tuple

import torch

from ..common.chunk_gates_triton import kernel_cotangents
from ..common.flat_chunks import FlatChunks


class StoredGates(NamedTuple):
    """The chunk kernels' gates over `[H, NC, ...]` fp32, each stored once."""
    decay: torch.Tensor                      # β [.., C+1]
    carry: Optional[torch.Tensor]            # f [.., C+1], with momentum
    write: Optional[torch.Tensor]            # G [.., C+1, C], with momentum
    e_matrix: Optional[torch.Tensor]         # E [.., C+1, C]: without momentum the write, with it DGD's alone
    mom_decay_last: Optional[torch.Tensor]   # m[C] [..], with momentum
    mom_write_last: Optional[torch.Tensor]   # N[C, :] [.., C], with momentum


def _contiguous(*gates: Optional[torch.Tensor]) -> Tuple[Optional[torch.Tensor], ...]:
    """The gates as the kernels address them (row-major `[B, T, H]`; the op's callers pass them so,
    the op itself may be called with any strides)."""
    return tuple(None if g is None else g.contiguous() for g in gates)


def token_gates(layout: FlatChunks, H: int):
    """Where the chunk-gates kernels find the gates `[B, T, H]` (contiguous) of the layout's chunks:
    chunk c of head h is row h · NC + c of the gate matrices; padding slots are η = 0, α = μ = 1
    (as `padded_chunk_gates`): they change nothing before them. A `TokenGates`."""
    from ..triton_kernels.common.chunk_gates import TokenGates

    return TokenGates(layout.chunk_size, H, layout.last_rows.shape[0], layout.index)


def gate_matrices(layout: FlatChunks, lr: torch.Tensor, retention: torch.Tensor, momentum: Optional[torch.Tensor],
                  dgd: bool) -> StoredGates:
    """The gates of every chunk from η, α, μ `[B, T, H]` fp32 contiguous, by the chunk-gates kernel
    (one program per chunk and head). E only where a kernel reads it: without momentum (it is the
    write) or with DGD."""
    from ..triton_kernels.common.chunk_gates import chunk_gates_fwd

    lr, retention, momentum = _contiguous(lr, retention, momentum)
    tokens = token_gates(layout, lr.shape[-1])
    H, NC, C = tokens.heads, tokens.chunks, tokens.chunk_size
    decay, carry, write, mom_decay, mom_write, e_matrix = chunk_gates_fwd(
        lr, retention, momentum, dgd_write=dgd, mom_write_last_row=True, tokens=tokens)
    vec = lambda x: None if x is None else x.view(H, NC, C + 1)
    mat = lambda x: None if x is None else x.view(H, NC, C + 1, C)
    if momentum is None:
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


def gate_grads(layout: FlatChunks, lr: torch.Tensor, retention: torch.Tensor, momentum: Optional[torch.Tensor],
               d_gates, d_e_extra: Optional[torch.Tensor]) -> Tuple[torch.Tensor, torch.Tensor, Optional[torch.Tensor]]:
    """The gradients of η, α, μ `[B, T, H]` (None for absent momentum) from `d_gates`, those of
    `kernel_gates`'s six tensors (None where absent, as `linear_memory_bwd` returns them), plus
    `d_e_extra`, E's gradient through the DGD inverse (or None)."""
    from ..triton_kernels.common.chunk_gates import chunk_gates_bwd

    lr, retention, momentum = _contiguous(lr, retention, momentum)
    d_decay, d_carry, d_write, d_dgd_write, d_mom_decay_last, d_mom_write_last = d_gates
    tokens = token_gates(layout, lr.shape[-1])
    n, C = tokens.heads * tokens.chunks, tokens.chunk_size
    if momentum is None:                                                      # E: the write, and DGD's E
        cotangents = (d_decay, None, None, None, None, _total(d_write, d_dgd_write, d_e_extra))
    else:
        d_mom_decay = d_mom_decay_last.new_zeros(n, C + 1)                   # m's gradient: row C alone
        d_mom_decay[:, C] = d_mom_decay_last.reshape(n)
        cotangents = (d_decay, d_carry, d_write, d_mom_decay, d_mom_write_last.reshape(n, C),
                      _total(d_dgd_write, d_e_extra))
    return chunk_gates_bwd(lr, retention, momentum, *kernel_cotangents(cotangents, n, C, lr, momentum is not None),
                           tokens=tokens)
