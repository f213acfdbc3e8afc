"""`LinearMemoryDecodeState`: what `linear_memory_step` needs to continue a chunked
`linear_memory` (SPEC §2) a few tokens at a time, with the same outputs and states."""
from typing import NamedTuple, Optional

import torch

from ..common.validation import check_chunk_size
from .state import LinearMemoryState


class LinearMemoryDecodeState(NamedTuple):
    """Decode state of a linear memory, per sequence and head; `linear_memory_step` updates it in place.

    Every field is exact, not an approximation: token t of a chunk needs the chunk-start
    memory `M^c` for its residual `r_t = k_t M^c − v_t`, the running memory `M_{t−1}` for the
    decay and the dgd term, and the running momentum `S_{t−1}` (SPEC §2).

    memory: `[N, H, K, V]` fp32 (fp64 for fp64 oracles), the running memory `M_t`.
    chunk_memory: `[N, H, K, V]`, `M^c` of the current chunk; stale while `position == 0`
        (the next token starts a chunk and snapshots `memory` first).
    position: `[N]` int64, tokens of the current chunk already written, in `[0, chunk_size)`;
        sequences of one batch may sit at different positions.
    chunk_size: tokens per chunk, as `linear_memory(chunk_size=...)`.
    momentum: `[N, H, K, V]`, the running momentum `S_t`, or None for calls without momentum.
    """

    memory: torch.Tensor
    chunk_memory: torch.Tensor
    position: torch.Tensor
    chunk_size: int
    momentum: Optional[torch.Tensor] = None

    @classmethod
    def from_state(cls, state: LinearMemoryState, chunk_size: int) -> "LinearMemoryDecodeState":
        """The decode state at the start of a chunk whose state is `state` (copied, never aliased)."""
        if not isinstance(state, LinearMemoryState):
            raise TypeError(f"state: expected a LinearMemoryState, got {type(state).__name__}")
        check_chunk_size(chunk_size)
        dtype = torch.float64 if state.memory.dtype == torch.float64 else torch.float32
        memory = state.memory.to(dtype, copy=True).contiguous()
        momentum = None if state.momentum is None else state.momentum.to(dtype, copy=True).contiguous()
        position = torch.zeros(memory.shape[0], dtype=torch.int64, device=memory.device)
        return cls(memory, memory.clone(), position, chunk_size, momentum)

    @classmethod
    def zeros(cls, N: int, H: int, K: int, V: int, *, chunk_size: int, momentum: bool = False,
              device=None, dtype: torch.dtype = torch.float32) -> "LinearMemoryDecodeState":
        """The decode state of `linear_memory` without `initial_state`: zero memory (and momentum)."""
        memory = torch.zeros(N, H, K, V, device=device, dtype=dtype)
        return cls.from_state(LinearMemoryState(memory, torch.zeros_like(memory) if momentum else None), chunk_size)

    def at_chunk_boundary(self) -> bool:
        """Whether every sequence sits at the start of a chunk (reads `position` on the host)."""
        return bool((self.position == 0).all())

    def to_state(self) -> LinearMemoryState:
        """The `LinearMemoryState` to pass as `linear_memory(initial_state=...)` (copies).

        Only at a chunk boundary of every sequence: mid-chunk, the next tokens' residuals still
        depend on `chunk_memory`, which a `LinearMemoryState` cannot carry.
        """
        if not self.at_chunk_boundary():
            raise ValueError(
                f"state.position: expected 0 for every sequence (a chunk boundary) to convert to a "
                f"LinearMemoryState, got {self.position.tolist()}"
            )
        return LinearMemoryState(self.memory.clone(), None if self.momentum is None else self.momentum.clone())
