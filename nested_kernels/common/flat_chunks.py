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
    chunk_offsets: torch.Tensor       # [N + 1] int32
    last_rows: torch.Tensor           # [NC] int32
    num_tokens: int                   # B · T

    def flatten(self, x: torch.Tensor, pad_value: float = 0.0) -> torch.Tensor:
        """[B, T, H, ·] or gates [B, T, H] -> [T', H, ·]."""
        rows = x.flatten(0, 1)
        if self.index is None:
            return rows
        padded = torch.cat([rows, rows.new_full((1, *rows.shape[1:]), pad_value)], 0)
        return padded[self.index]                                            # −1 picks the padding row

    def unflatten(self, x: torch.Tensor, B: int, T: int) -> torch.Tensor:
        """[T', H, ·] -> [B, T, H, ·] (drops the padding)."""
        if self.index is None:
            return x.unflatten(0, (B, T))
        out = x.new_empty(self.num_tokens, *x.shape[1:])
        valid = self.index >= 0
        out[self.index[valid]] = x[valid]
        return out.unflatten(0, (B, T))

    def to_chunk_major(self, x: torch.Tensor) -> torch.Tensor:
        """Flat gates [T', H] -> [H, NC, C] (the layout of `chunk_gates`)."""
        return x.t().unflatten(1, (-1, self.chunk_size))


def flat_chunks(B: int, T: int, chunk_size: int, cu_seqlens: Optional[torch.Tensor], device) -> FlatChunks:
    bounds = sequence_bounds(B, T, cu_seqlens)
    counts = [num_chunks(end - start, chunk_size) for _, start, end in bounds]
    offsets = [0]
    for n in counts:
        offsets.append(offsets[-1] + n)
    last_rows, index = [], []
    for (b, start, end), n in zip(bounds, counts):
        length = end - start
        last_rows += [min(chunk_size, length - c * chunk_size) for c in range(n)]
        slots = torch.full((n * chunk_size,), -1, dtype=torch.long)
        slots[:length] = torch.arange(b * T + start, b * T + end)
        index.append(slots)
    aligned = cu_seqlens is None and T % chunk_size == 0
    as_int32 = lambda xs: torch.tensor(xs, dtype=torch.int32, device=device)
    return FlatChunks(
        chunk_size,
        None if aligned else torch.cat(index).to(device),
        as_int32(offsets),
        as_int32(last_rows),
        B * T,
    )
