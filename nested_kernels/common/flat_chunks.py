"""The flat chunk layout of the Triton tier: every sequence (a batch row, or a `cu_seqlens`
sequence) padded to whole chunks and the sequences concatenated, `[T', H, ·]` with
T' = NC · chunk_size. Chunk c of the layout belongs to one sequence; `chunk_offsets[n]` is the
first chunk of sequence n and `last_rows[c]` the number of real tokens in chunk c."""
from typing import NamedTuple, Optional

import torch

from .chunking import num_chunks
from .inputs import sequence_bounds


class FlatChunks(NamedTuple):
    chunk_size: int
    index: Optional[torch.Tensor]     # [T'] source token (row-major over B, T) of each slot, −1 for padding; None: a view
    slots: Optional[torch.Tensor]     # [B · T] the slot of each token (the inverse of `index`); None: a view
    chunk_offsets: torch.Tensor       # [N + 1] int32
    last_rows: torch.Tensor           # [NC] int32

    def flatten(self, x: torch.Tensor, pad_value: float = 0.0) -> torch.Tensor:
        """[B, T, H, ·] or gates [B, T, H] -> [T', H, ·]."""
        rows = x.flatten(0, 1)
        if self.index is None:
            return rows
        padded = torch.cat([rows, rows.new_full((1, *rows.shape[1:]), pad_value)], 0)
        return padded[self.index]                                            # −1 picks the padding row

    def unflatten(self, x: torch.Tensor, B: int, T: int) -> torch.Tensor:
        """[T', H, ·] -> [B, T, H, ·] (drops the padding): a gather, no host synchronisation."""
        if self.slots is None:
            return x.unflatten(0, (B, T))
        return x[self.slots].unflatten(0, (B, T))

    def to_chunk_major(self, x: torch.Tensor) -> torch.Tensor:
        """Flat gates [T', H] -> [H, NC, C] (the layout of `chunk_gates`)."""
        return x.t().unflatten(1, (-1, self.chunk_size))


def flat_chunks(B: int, T: int, chunk_size: int, cu_seqlens: Optional[torch.Tensor], device) -> FlatChunks:
    """The layout of B rows of T tokens, or of the `cu_seqlens` sequences of row 0. Without
    `cu_seqlens` it is built on `device` from its shape alone (no host-to-device copy: such a copy
    from pageable memory waits for the GPU, which then idles while the host prepares the next
    launches); `cu_seqlens` is read on the host."""
    if cu_seqlens is None:
        return _batch_chunks(B, T, chunk_size, device)
    bounds = sequence_bounds(B, T, cu_seqlens)
    counts = [num_chunks(end - start, chunk_size) for _, start, end in bounds]
    offsets = [0]
    for n in counts:
        offsets.append(offsets[-1] + n)
    last_rows, index = [], []
    for (b, start, end), n in zip(bounds, counts):
        length = end - start
        last_rows += [min(chunk_size, length - c * chunk_size) for c in range(n)]
        seq_index = torch.full((n * chunk_size,), -1, dtype=torch.long)
        seq_index[:length] = torch.arange(b * T + start, b * T + end)
        index.append(seq_index)
    index = torch.cat(index)
    slots = torch.empty(B * T, dtype=torch.long)
    real = index >= 0
    slots[index[real]] = torch.arange(index.numel())[real]
    as_int32 = lambda xs: torch.tensor(xs, dtype=torch.int32, device=device)
    return FlatChunks(chunk_size, index.to(device), slots.to(device), as_int32(offsets), as_int32(last_rows))


def _batch_chunks(B: int, T: int, chunk_size: int, device) -> FlatChunks:
    """B rows of T tokens, each padded to n whole chunks, from device arithmetic."""
    n = num_chunks(T, chunk_size)
    offsets = (torch.arange(0, (B + 1) * n, n, dtype=torch.int32, device=device) if n
               else torch.zeros(B + 1, dtype=torch.int32, device=device))
    last_rows = torch.full((B, n), chunk_size, dtype=torch.int32, device=device)
    index = slots = None
    if T % chunk_size:                                                        # a partial last chunk
        last_rows[:, -1] = T % chunk_size
        padded = n * chunk_size
        slot = torch.arange(B * padded, device=device)
        row, t = slot // padded, slot % padded
        index = torch.where(t < T, row * T + t, -1)
        token = torch.arange(B * T, device=device)
        slots = token // T * padded + token % T
    return FlatChunks(chunk_size, index, slots, offsets, last_rows.flatten())
