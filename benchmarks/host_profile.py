"""Where the host's time goes in a call that the GPU waits for (a host-bound call): the Python
functions that take it (cProfile, self time per call), and the synchronising torch operations
of one call (`torch.cuda.set_sync_debug_mode("warn")`: the host waits for the device there).
Used by profile_linear_memory.py; cProfile slows Python several-fold, so its figures rank
functions, they do not time the call."""
import cProfile
import os
import pstats
import warnings
from typing import Callable, List, Optional, Sequence

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _where(filename: str, line: int, name: str) -> str:
    """`function (file:line)`, the file relative to the repository or to site-packages."""
    if filename.startswith(REPO):
        filename = os.path.relpath(filename, REPO)
    elif "site-packages" in filename:
        filename = filename.split("site-packages" + os.sep, 1)[1]
    return name if filename == "~" else f"{name} ({filename}:{line})"


def _run(fn: Callable[[], None], leaves: Sequence[torch.Tensor]) -> None:
    for t in leaves:
        t.grad = None
    fn()


def python_hotspots(fn: Callable[[], None], leaves: Sequence[torch.Tensor], calls: int, top: int) -> List[str]:
    """A markdown table of the `top` functions by self time under cProfile over `calls` calls."""
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(calls):
        _run(fn, leaves)
    profiler.disable()
    stats = pstats.Stats(profiler).stats               # (file, line, name) -> (cc, ncalls, tottime, cumtime, callers)
    rows = sorted(stats.items(), key=lambda item: item[1][2], reverse=True)
    total = sum(row[1][2] for row in rows)
    lines = [f"Python self time under cProfile: {1e3 * total / calls:.3f} ms per call (slowed by the profiler)", "",
             "| function | calls per call | self ms per call | cumulative ms per call |", "|---|---:|---:|---:|"]
    for (filename, line, name), (_, ncalls, tottime, cumtime, _) in rows[:top]:
        where = _where(filename, line, name).replace("|", "\\|")
        lines.append(f"| `{where}` | {ncalls / calls:g} | {1e3 * tottime / calls:.3f} | {1e3 * cumtime / calls:.3f} |")
    return lines


def synchronising_ops(fn: Callable[[], None], leaves: Sequence[torch.Tensor]) -> Optional[List[str]]:
    """The messages of the synchronising torch operations of one call on CUDA (None on a CPU)."""
    if not torch.cuda.is_available():
        return None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            _run(fn, leaves)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return [str(w.message).splitlines()[0] for w in caught if "synchroniz" in str(w.message)]


def host_report(fn: Callable[[], None], leaves: Sequence[torch.Tensor], calls: int, top: int) -> List[str]:
    syncs = synchronising_ops(fn, leaves)
    if syncs is None:
        sync_line = "synchronising operations: not checked (no CUDA)"
    else:
        sync_line = f"synchronising operations in one call: {len(syncs)}" + "".join(f"\n* {s}" for s in syncs)
    return [sync_line, ""] + python_hotspots(fn, leaves, calls, top) + [""]
