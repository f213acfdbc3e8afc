"""Host time of `linear_memory(backend="triton")` per call, on the CPU, with every Triton launch
replaced by a no-op: the Python, torch and autograd work around the kernels, which a GPU waits
for when a call is host-bound (the H100's forward + backward at B8 T2048 H16 D64 was:
benchmarks/results/h100-2026-11-27.md). Triton's own launcher is not in it (it needs a GPU), nor
any kernel time. Small shapes: the host work hardly depends on them.

    python benchmarks/host_time.py [--calls 200] [--out-dir DIR]

Writes host-time-<tag>.md/.json: µs per call (median of --repeats runs of --calls calls) and the
kernel launches per call, for the forward (no grad) and the forward + backward, with and without
DGD, bf16 inputs, momentum on."""
import argparse
import os
import statistics
import sys
import time
from dataclasses import dataclass
from typing import List, Optional, Sequence
from unittest import mock

os.environ.setdefault("TRITON_INTERPRET", "1")                  # CPU tensors; no kernel runs anyway

import torch  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from linear_memory_bench.report import _git_commit, write_tables  # noqa: E402


@dataclass
class Row:
    mode: str
    dgd: bool
    us_per_call: float
    launches_per_call: int
    kernels: str


def _inputs(B=1, T=128, H=2, D=16):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, T, H, D, generator=gen, dtype=torch.bfloat16) for _ in range(3))
    gates = [torch.rand(B, T, H, generator=gen) for _ in range(3)]
    return q, k, v, gates, torch.randn(B, T, H, D, generator=gen, dtype=torch.bfloat16)


def measure(mode: str, dgd: bool, calls: int, repeats: int) -> Row:
    from nested_kernels.linear_memory import linear_memory
    import nested_kernels.triton_kernels.utils.launch as launch_module

    q, k, v, gates, do = _inputs()
    leaves = [x.requires_grad_() for x in (q, k, v, *gates)] if mode == "fwd+bwd" else [q, k, v, *gates]
    launched: List[str] = []

    def call():
        if mode == "fwd":
            with torch.no_grad():
                linear_memory(*leaves, dgd=dgd, chunk_size=64, backend="triton")
            return
        for x in leaves:                                                # as do_bench's grad_to_none: no
            x.grad = None                                               # accumulation into earlier grads
        o, _ = linear_memory(*leaves, dgd=dgd, chunk_size=64, backend="triton")
        (o * do).sum().backward()

    def no_launch(kernel, grid, device, *args, **kwargs):
        launched.append(getattr(kernel, "__name__", str(kernel)))

    with mock.patch.object(launch_module, "launch", no_launch):
        for _ in range(5):
            call()
        launched.clear()
        call()
        kernels = list(launched)
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            for _ in range(calls):
                call()
            times.append((time.perf_counter() - start) / calls * 1e6)
    return Row(mode, dgd, statistics.median(times), len(kernels), ", ".join(kernels))


def to_markdown(rows: Sequence[Row], meta: dict) -> str:
    lines = ["# Host time of linear_memory(backend='triton'), Triton launches stubbed", "",
             f"* git {meta['git']}; torch {meta['torch']}, triton {meta['triton']}, python {meta['python']}",
             f"* {meta['calls']} calls x {meta['repeats']} runs (median); B1 T128 H2 D16, bf16, momentum, chunk 64",
             "* on the CPU: the host work a GPU waits for when a call is host-bound, without Triton's launcher", "",
             "| mode | DGD | µs per call | kernel launches | kernels |", "|---|---|---:|---:|---|"]
    lines += [f"| {r.mode} | {'yes' if r.dgd else 'no'} | {r.us_per_call:.0f} | {r.launches_per_call} | {r.kernels} |"
              for r in rows]
    return "\n".join(lines) + "\n"


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="calls per timed run")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs; the median is reported")
    parser.add_argument("--out-dir", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "results"))
    parser.add_argument("--tag", default=time.strftime("cpu-%Y-%m-%d"))
    args = parser.parse_args(argv)
    if args.calls < 1 or args.repeats < 1:
        parser.error(f"--calls and --repeats must be at least 1, got {args.calls} and {args.repeats}")
    import triton

    rows = [measure(mode, dgd, args.calls, args.repeats) for mode in ("fwd", "fwd+bwd") for dgd in (False, True)]
    meta = dict(torch=torch.__version__, triton=triton.__version__, python=sys.version.split()[0], calls=args.calls,
                repeats=args.repeats, git=_git_commit())
    write_tables(args.out_dir, f"host-time-{args.tag}", to_markdown(rows, meta), meta, rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
