"""`MLPMemoryDecodeState`: what `mlp_memory_step` needs to continue a chunked `mlp_memory`
(SPEC §3) a few tokens at a time, with the same outputs and states."""
from typing import NamedTuple, Optional

import torch

from ..common.validation import check_chunk_size
from .state import MLPMemoryState


def _per_sequence(state: MLPMemoryState, batch_size: Optional[int], *, momentum: bool = False,
                  weights_only: bool = False):
    """(w1, w2, s1, s2) of `state` as `[N, ...]` contiguous copies in fp32 (fp64 for fp64 states),
    shared weights expanded to N sequences (N: `batch_size`, else the leading dim of `s1`, else of
    `w1`); zero momenta where `momentum` and `state.s1` is None; no momenta with `weights_only`."""
    if not isinstance(state, MLPMemoryState):
        raise TypeError(f"state: expected an MLPMemoryState, got {type(state).__name__}")
    N = batch_size or (state.w1.shape[0] if state.s1 is None else state.s1.shape[0])
    if state.w1.shape[0] not in (1, N) or state.w2.shape[0] != state.w1.shape[0]:
        raise ValueError(f"state.w1/w2: expected a leading dim of 1 or N = {N}, got "
                         f"{state.w1.shape[0]} and {state.w2.shape[0]}")
    dtype = torch.float64 if state.w1.dtype == torch.float64 else torch.float32

    def copy(x):
        return x.expand(N, *x.shape[1:]).to(dtype).clone(memory_format=torch.contiguous_format)

    w1, w2 = copy(state.w1), copy(state.w2)
    s1 = s2 = None
    if not weights_only and (state.s1 is not None or momentum):
        s1 = torch.zeros_like(w1) if state.s1 is None else copy(state.s1)
        s2 = torch.zeros_like(w2) if state.s2 is None else copy(state.s2)
    return w1, w2, s1, s2


class MLPMemoryDecodeState(NamedTuple):
    """Decode state of an MLP memory, per sequence and head; `mlp_memory_step` updates it in place.

    Every field is exact: token t of a chunk needs the chunk-start weights `W^c` for its
    residual, gradients and (with `read="chunk_start"`) its read, the running weights
    `W_{t−1}` for the decay, the dgd term and the `read="current"` read, and the running
    momenta `S_{t−1}` (SPEC §3).

    w1: `[N, H, K, Dh]` fp32 (fp64 for fp64 oracles), the running `W1_t`; w2: `[N, H, Dh, V]`, `W2_t`.
        Per sequence: shared initial weights (a leading 1) are expanded by `from_state`.
    chunk_w1, chunk_w2: `W1^c`, `W2^c` of the current chunk; stale while `position == 0`
        (the next token starts a chunk and snapshots w1, w2 first).
    position: `[N]` int64, tokens of the current chunk already written, in `[0, chunk_size)`;
        sequences of one batch may sit at different positions.
    chunk_size: tokens per chunk, as `mlp_memory(chunk_size=...)`.
    s1: `[N, H, K, Dh]`, s2: `[N, H, Dh, V]`, the running momenta, or None for calls without momentum.
    """

    w1: torch.Tensor
    w2: torch.Tensor
    chunk_w1: torch.Tensor
    chunk_w2: torch.Tensor
    position: torch.Tensor
    chunk_size: int
    s1: Optional[torch.Tensor] = None
    s2: Optional[torch.Tensor] = None

    @classmethod
    def from_state(cls, state: MLPMemoryState, chunk_size: int, *, batch_size: Optional[int] = None,
                   momentum: bool = False) -> "MLPMemoryDecodeState":
        """The decode state at the start of a chunk whose state is `state` (copied, never aliased).

        Shared weights (`w1 [1, H, K, Dh]`) are expanded to N sequences: N is `batch_size`, else
        the leading dim of `s1`, else of `w1`. `momentum=True` starts zero momenta where
        `state.s1` is None (as `mlp_memory` does); a state with momenta keeps them.
        """
        check_chunk_size(chunk_size)
        w1, w2, s1, s2 = _per_sequence(state, batch_size, momentum=momentum)
        position = torch.zeros(w1.shape[0], dtype=torch.int64, device=w1.device)
        return cls(w1, w2, w1.clone(), w2.clone(), position, chunk_size, s1, s2)

    @classmethod
    def in_chunk(cls, running: MLPMemoryState, chunk_start: MLPMemoryState, position: int, chunk_size: int, *,
                 batch_size: int, momentum: bool = False) -> "MLPMemoryDecodeState":
        """The decode state `position` tokens into a chunk that started at `chunk_start` and whose
        running weights and momenta are `running` (e.g. `mlp_memory`'s final state of a call
        ending there: the end of a call is a chunk boundary for its outputs, not for the stream)."""
        if not 0 <= position < chunk_size:
            raise ValueError(f"position: expected 0 <= position < chunk_size = {chunk_size}, got {position}")
        check_chunk_size(chunk_size)
        w1, w2, s1, s2 = _per_sequence(running, batch_size, momentum=momentum)
        chunk_w1, chunk_w2, _, _ = _per_sequence(chunk_start, batch_size, weights_only=True)
        position_t = torch.full((w1.shape[0],), position, dtype=torch.int64, device=w1.device)
        return cls(w1, w2, chunk_w1, chunk_w2, position_t, chunk_size, s1, s2)

    def at_chunk_boundary(self) -> bool:
        """Whether every sequence sits at the start of a chunk (reads `position` on the host)."""
        return bool((self.position == 0).all())

    def to_state(self) -> MLPMemoryState:
        """The per-sequence `MLPMemoryState` to pass as `mlp_memory(initial_state=...)` (copies).

        Only at a chunk boundary of every sequence: mid-chunk, the next tokens still depend on
        `chunk_w1`/`chunk_w2`, which an `MLPMemoryState` cannot carry.
        """
        if not self.at_chunk_boundary():
            raise ValueError(
                f"state.position: expected 0 for every sequence (a chunk boundary) to convert to an "
                f"MLPMemoryState, got {self.position.tolist()}"
            )
        return MLPMemoryState(*(None if x is None else x.clone() for x in (self.w1, self.w2, self.s1, self.s2)))
