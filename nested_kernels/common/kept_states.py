"""Whether the kernel backwards recompute the chunk-start states or keep them from the forward.

By default a kernel backend's forward stores only its inputs and small per-chunk tensors, and its
backward recomputes the chunk-start states (one state-sized tensor per chunk) — SPEC §2's
memory-lean choice. Inside `keep_chunk_states()` the forward keeps them for the backward instead:
a faster backward for one fp32 state per chunk (and the chunk residuals) held in memory.
"""
import contextlib
import threading
from typing import Iterator

_flags = threading.local()


def keeping_chunk_states() -> bool:
    """Whether a forward that runs now keeps its chunk-start states for its backward."""
    return getattr(_flags, "keep", False)


@contextlib.contextmanager
def keep_chunk_states(enabled: bool = True) -> Iterator[None]:
    """Forwards of the `triton` backend inside this block keep their chunk-start states for the backward.

    Examples::
        >>> with nested_kernels.keep_chunk_states():
        ...     o, _ = linear_memory(q, k, v, lr, retention, backend="triton")
        >>> o.sum().backward()           # no recomputation of the chunk states
    """
    before = keeping_chunk_states()
    _flags.keep = bool(enabled)
    try:
        yield
    finally:
        _flags.keep = before
