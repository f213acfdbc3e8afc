"""Continuing a chunked op's stream from any position, without recomputing past tokens.

A chunked op (SPEC §1) counts chunks from the start of each call, so a call that begins
mid-chunk must first finish the current chunk with the op's decode step; from that chunk
boundary the chunked op runs the whole chunks, then the partial last one, whose start state
and end state together make the next decode state. Outputs and states equal one call over
the whole stream.
"""
from typing import Any, Callable, List, Tuple


def continue_stream(
    T: int,
    position: int,
    chunk_size: int,
    *,
    step: Callable[[int, int, Any], Tuple[Any, Any]],
    boundary_state: Callable[[Any], Any],
    chunked: Callable[[int, int, Any], Tuple[Any, Any]],
    decode_state: Callable[[Any, Any, int], Any],
    state: Any,
) -> Tuple[List[Any], Any]:
    """Run T new tokens of an op whose decode `state` is `position` tokens into its current chunk.

    step(lo, hi, state) -> (out, state): tokens [lo, hi) by the decode step, within the current chunk;
    boundary_state(state) -> the op's chunk-boundary state (e.g. an `MLPMemoryState`) of a decode
    state at position 0 (or of None: the initial state);
    chunked(lo, hi, start) -> (out, end state): tokens [lo, hi) by the chunked op from `start`;
    decode_state(running, chunk_start, position) -> the decode state after the call.
    Returns the outputs of the pieces, in order, and the new decode state.
    """
    head = min(T, -position % chunk_size)                     # tokens that finish the current chunk
    parts = []
    if head:
        out, state = step(0, head, state)
        parts.append(out)
    if head == T and (head or state is not None):             # still in (or just closed) the same chunk
        return parts, state
    start = boundary_state(state)
    aligned = head + (T - head) // chunk_size * chunk_size
    if aligned > head:
        out, start = chunked(head, aligned, start)
        parts.append(out)
    running = start
    if T > aligned:
        out, running = chunked(aligned, T, start)
        parts.append(out)
    return parts, decode_state(running, start, T - aligned)
