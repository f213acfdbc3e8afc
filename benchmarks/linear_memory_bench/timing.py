"""Timing: `triton.testing.do_bench` (or CUDA events) on CUDA, `time.perf_counter` on the CPU."""
import gc
import math
import time
from typing import Callable, List, Optional, Sequence, Tuple

import torch

from .settings import SLOW_CALL_S

Fn = Callable[[], object]


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else ""


def _percentiles(xs: Sequence[float], qs=(0.5, 0.2, 0.8)) -> List[float]:
    """Linear-interpolated percentiles (numpy's default) of a small sample."""
    s = sorted(xs)
    out = []
    for q in qs:
        pos = q * (len(s) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        out.append(s[lo] + (s[hi] - s[lo]) * (pos - lo))
    return out


def _clear_grads(leaves: Sequence[torch.Tensor]) -> None:
    for t in leaves:
        t.grad = None


def time_cuda(fn: Fn, leaves: Sequence[torch.Tensor], *, warmup_ms: float, rep_ms: float,
              max_call_s: float) -> Tuple[Optional[List[float]], str, Optional[int], Optional[str]]:
    """(ms quantiles (0.5, 0.2, 0.8), method, peak bytes, skip reason) of one CUDA callable."""
    from triton.testing import do_bench

    def one_call() -> float:
        _clear_grads(leaves)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    first = one_call()                                       # warm-up: compiles, autotunes, allocates
    if first > max_call_s:
        return None, "", None, f"skipped: one call took {first:.1f} s (> {max_call_s:g} s)"
    estimate = one_call()
    if estimate > max_call_s:
        return None, "", None, f"skipped: one call takes {estimate:.1f} s (> {max_call_s:g} s)"
    if estimate > SLOW_CALL_S:
        times = []
        for _ in range(3):
            _clear_grads(leaves)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        ms, method = _percentiles(times), "cuda events ×3"
    else:
        ms = do_bench(fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=list(leaves) or None, quantiles=(0.5, 0.2, 0.8))
        method = "do_bench"
    _clear_grads(leaves)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    _clear_grads(leaves)
    return list(ms), method, peak, None


def time_cpu(fn: Fn, leaves: Sequence[torch.Tensor], *, min_runs: int, budget_s: float, max_row_s: float,
             max_runs: int = 50) -> List[float]:
    """ms quantiles (0.5, 0.2, 0.8) of `time.perf_counter` runs after one warm-up call.

    At least `min_runs` runs and `budget_s` seconds, but no run is started after `max_row_s`
    seconds once there is one (a loaded machine must not stretch the run past its minute)."""
    _clear_grads(leaves)
    fn()
    times: List[float] = []

    def more() -> bool:
        spent = sum(times) * 1e-3
        if not times:
            return True
        if len(times) >= max_runs or spent >= max_row_s:
            return False
        return len(times) < min_runs or spent < budget_s

    while more():
        _clear_grads(leaves)
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return _percentiles(times)


def _release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def time_row(fn: Fn, leaves: Sequence[torch.Tensor], *, cuda: bool, max_call_s: float, cpu_min_runs: int = 3,
             cpu_budget_s: float = 2.0) -> Tuple[Optional[List[float]], Optional[float], str]:
    """(ms quantiles (0.5, 0.2, 0.8) or None, peak MiB on a GPU, why it was not timed) of one row of
    the standalone benchmarks (bench_mlp_memory, bench_decode, bench_hope_layer): `time_cuda` with
    25/100 ms warm-up/repetitions on a GPU, `time_cpu` on a CPU; running out of memory is reported."""
    try:
        if cuda:
            ms, _, peak, skip = time_cuda(fn, leaves, warmup_ms=25, rep_ms=100, max_call_s=max_call_s)
            return (None, None, skip) if ms is None else ([float(m) for m in ms], peak / 2**20, "")
        ms = time_cpu(fn, leaves, min_runs=cpu_min_runs, budget_s=cpu_budget_s, max_row_s=max_call_s,
                      max_runs=max(50, cpu_min_runs))
        return [float(m) for m in ms], None, ""
    except torch.OutOfMemoryError:
        return None, None, "OOM"
