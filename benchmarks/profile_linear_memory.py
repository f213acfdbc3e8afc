"""Where the time of one `linear_memory` call goes: torch.profiler over a few calls of the triton
(or torch) tier, kernels ranked by device time per call, and the share of our own Triton kernels
(`linear_memory_*`) against everything around them (gate algebra, DGD inverse, layout copies);
then the host's side (host_profile.py): synchronising operations, Python functions by self time.

    python benchmarks/profile_linear_memory.py --out-dir DIR [--shapes B8-T2048-H16-D64,B4-T4096-H16-D128]
        [--backends triton] [--chunks 64] [--calls 5]

Inputs and calls are the benchmark's (`linear_memory_bench`: bf16 q/k/v, momentum; chunk 64 unless `--chunks`).
On a CPU it profiles CPU operators instead (a smoke run; the interpreter's numbers mean nothing).
Writes profile-linear_memory.md.
"""
import argparse
import itertools
import os
import sys
import time
from typing import List

import torch
from torch.profiler import ProfilerActivity, profile

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:                # loaded by path (the tests), not run as a script
    sys.path.append(HERE)

from host_profile import host_report  # noqa: E402
from linear_memory_bench import settings  # noqa: E402
from linear_memory_bench.callables import linear_memory_callable, make_inputs  # noqa: E402
from linear_memory_bench.settings import SHAPES, BenchShape  # noqa: E402

OWN_KERNEL_PREFIX = "linear_memory_"


def parse_shapes(text: str) -> List[BenchShape]:
    try:
        return [BenchShape.parse(name) for name in text.split(",")]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _host_and_wall_ms(fn, leaves, calls: int, cuda: bool):
    """Per call: the host's time to return from `calls` calls in a row, and the time until the
    device has finished them too (on a CPU both are the wall time)."""
    if cuda:
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        for t in leaves:
            t.grad = None
        fn()
    host = time.perf_counter() - start
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - start
    return 1e3 * host / calls, 1e3 * wall / calls


def profile_case(shape, backend: str, dgd: bool, mode: str, calls: int, cuda: bool, top: int) -> List[str]:
    device = "cuda" if cuda else "cpu"
    x = make_inputs(shape, device=device, dtype=torch.bfloat16)
    fn, leaves = linear_memory_callable(x, backend, dgd, mode)
    fn()                                                                      # compile and warm up
    host_ms, wall_ms = _host_and_wall_ms(fn, leaves, calls, cuda)
    activities = [ProfilerActivity.CUDA] if cuda else [ProfilerActivity.CPU]
    with profile(activities=activities) as prof:
        for _ in range(calls):
            for t in leaves:
                t.grad = None
            fn()
        if cuda:
            torch.cuda.synchronize()
    events = [e for e in prof.key_averages() if (e.self_device_time_total if cuda else e.self_cpu_time_total) > 0]
    self_time = (lambda e: e.self_device_time_total) if cuda else (lambda e: e.self_cpu_time_total)
    events.sort(key=self_time, reverse=True)
    total = sum(self_time(e) for e in events)
    own = sum(self_time(e) for e in events if e.key.startswith(OWN_KERNEL_PREFIX))
    unit = "device" if cuda else "CPU"
    lines = ["", f"host time per call {host_ms:.3f} ms (queueing the launches, not waiting for them); wall "
                 f"{wall_ms:.3f} ms per call back to back (host-bound where it is close to the host time)",
             "",
             f"{unit} time per call {total / calls / 1e3:.3f} ms; our Triton kernels {own / calls / 1e3:.3f} ms "
             f"({100 * own / max(total, 1e-9):.0f} %), the rest {(total - own) / calls / 1e3:.3f} ms", "",
             "| kernel / operator | calls per call | ms per call | share |", "|---|---:|---:|---:|"]
    for e in events[:top]:
        name = e.key if len(e.key) <= 90 else e.key[:87] + "..."
        lines.append(f"| `{name}` | {e.count / calls:g} | {self_time(e) / calls / 1e3:.3f} | "
                     f"{100 * self_time(e) / max(total, 1e-9):.1f} % |")
    return lines + [""] + host_report(fn, leaves, calls, top)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    p.add_argument("--shapes", type=parse_shapes, default=None, help="comma-separated B<b>-T<t>-H<h>-D<d> (default: the first "
                                                   "benchmark shape; B1-T256-H2-D32 on a CPU)")
    p.add_argument("--backends", default="triton,torch")
    p.add_argument("--chunks", default=None,
                   help="comma-separated chunk sizes (default: the benchmark's; 16, 32 and 64 use the Triton gate kernels)")
    p.add_argument("--calls", type=int, default=5)
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args(argv)
    chunks = [int(c) for c in args.chunks.split(",")] if args.chunks else [settings.DEFAULT_CHUNK]
    cuda = torch.cuda.is_available()
    shapes = args.shapes or [SHAPES[0] if cuda else BenchShape(1, 256, 2, 32)]
    lines = ["# Profile of linear_memory", "",
             f"* device: {torch.cuda.get_device_name() if cuda else 'CPU (smoke run: CPU operators)'}; "
             f"torch {torch.__version__}", f"* {args.calls} calls after one warm-up call; self time per call", ""]
    status = 0
    os.makedirs(args.out_dir, exist_ok=True)
    path = os.path.join(args.out_dir, "profile-linear_memory.md")
    for shape, chunk in itertools.product(shapes, chunks):
        settings.CHUNK = chunk                                          # read by linear_memory_callable
        for backend in args.backends.split(","):
            for dgd in (False, True):
                for mode in ("fwd", "fwdbwd"):
                    title = f"### {shape.name} chunk {chunk} {backend} {'dgd' if dgd else 'nodgd'} {mode}"
                    try:
                        lines += [title] + profile_case(shape, backend, dgd, mode, args.calls, cuda, args.top)
                    except Exception as e:  # noqa: BLE001 (one failing case is a line, the rest still run)
                        lines += [title, "", f"failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}", ""]
                        status = 1
                    print("\n".join(lines[-3:]), flush=True)
                    with open(path, "w") as f:                              # each case: a time limit keeps them
                        f.write("\n".join(lines))
    print(f"wrote {path}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
