"""Time the launch configurations of the Triton kernels one `linear_memory` call launches, on the
GPU: which value tile, warps and pipeline stages each kernel should have in
`triton_kernels/linear_memory/configs.py` (and the shared kernels' launchers).

    python benchmarks/config_sweep.py --out-dir DIR [--shape B8-T2048-H16-D64] [--chunk 64] [--dgd 1]
        [--budget-s 150] [--dry-run]

One forward and backward of the triton tier runs with every launch recorded (kernel, grid,
arguments). Each recorded kernel is then launched again on those arguments, alone, at its shipped
configuration and at its neighbours: value tile BV (where the kernel has one) halved and doubled,
warps halved and doubled (and quartered, for kernels without a value tile), 1 or 2 stages; a
kernel whose grid tiles V gets the grid of the new BV.
Key tiles stay as shipped (the backward's partial sums are laid out by them). Times are
`triton.testing.do_bench` medians; kernels are swept in the order of their shipped time, largest
first, until `--budget-s`; the report is rewritten after each kernel, so a kill keeps what was
timed, and a fault that breaks the CUDA context stops the sweep there. Only the first launch of
each kernel is swept (e.g. the forward's state recurrence, not the backward's recomputation). Every
candidate's registers and local memory (Triton's `n_spills`, in 4-byte words) come from the compiled kernel: a
faster candidate still needs `nested-kernels compile-report` (spills, shared memory, both archs)
before it goes into a table.

Kernels that add into their outputs (the backward's gate gradients, dK) are timed on the same
buffers again and again: their values grow, the times do not depend on them.

Compiling is most of the time (a few seconds a candidate): `--compile-workers` processes first
compile a share of the candidates each (launching them once on the same arguments), into Triton's
cache, where the timing process finds them.

`--dry-run` (any device, the CPU's interpreter too) records the launches and lists the candidates
without timing them. Writes config-sweep.md and config-sweep.json.
"""
import argparse
import dataclasses
import itertools
import json
import os
import subprocess
import sys
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
if HERE not in sys.path:                # loaded by path (the tests), not run as a script
    sys.path.append(HERE)

from linear_memory_bench import settings  # noqa: E402
from linear_memory_bench.callables import linear_memory_callable, make_inputs  # noqa: E402
from linear_memory_bench.settings import SHAPES, BenchShape  # noqa: E402

# kernels whose grid axis 1 counts the value tiles of BV columns (the others loop over V inside)
V_TILE_AXIS = {"linear_memory_fwd_kernel_h": 1, "linear_memory_fwd_kernel_o": 1, "linear_memory_bwd_kernel_dh": 1}


class Launch(NamedTuple):
    kernel: Any
    grid: Tuple[int, ...]
    args: tuple
    kwargs: Dict[str, Any]


@dataclasses.dataclass
class Candidate:
    config: Dict[str, int]                  # BV (where the kernel has one), num_warps, num_stages
    shipped: bool
    ms: Optional[float] = None
    registers: Optional[int] = None
    local_words: Optional[int] = None       # Triton's n_spills: local memory (spills, stack) in 4-byte words
    error: Optional[str] = None


def kernel_name(kernel) -> str:
    return getattr(kernel, "__name__", None) or getattr(getattr(kernel, "fn", None), "__name__", repr(kernel))


def record_launches(call: Callable[[], Any]) -> List[Launch]:
    """The launches `call` makes through `triton_kernels/utils/launch.py` (run as they are), the
    first of each kernel."""
    from nested_kernels.triton_kernels.utils import launch as launch_module

    launches, original = [], launch_module.launch

    def recording(kernel, grid, device, *args, **kwargs):
        launches.append(Launch(kernel, tuple(grid), args, kwargs))
        return original(kernel, grid, device, *args, **kwargs)

    launch_module.launch = recording
    try:
        call()
    finally:
        launch_module.launch = original
    first = {}
    for launch in launches:
        first.setdefault(kernel_name(launch.kernel), launch)
    return list(first.values())


# (kernel, num_warps) candidates that broke the CUDA context on a card, which stops a sweep there:
# left out. dgd_inverse_bwd_kernel at 16 warps, on an H100 with Triton 3.6, in both DGD sweeps (D64
# and D128: benchmarks/results/config-sweep-h100-2026-11-27-7204b99-*-dgd.md).
BREAKS_CONTEXT = {("dgd_inverse_bwd_kernel", 16)}


def candidate_configs(launch: Launch) -> List[Dict[str, int]]:
    """The shipped configuration first, then its neighbours (see the module's docstring), less
    those in BREAKS_CONTEXT."""
    import triton

    kw = launch.kwargs
    warps0, stages0 = kw.get("num_warps", 4), kw.get("num_stages", 3)
    shipped = {"num_warps": warps0, "num_stages": stages0}
    tiles = [None]
    if "BV" in kw:
        shipped["BV"] = kw["BV"]
        tiles = sorted({bv for bv in (kw["BV"] // 2, kw["BV"], kw["BV"] * 2) if 16 <= bv <= max(16, triton.next_power_of_2(kw["V"]))})
    # kernels without a value tile (the shared ones: gates, DGD inverse, chunk products) have fewer
    # candidates, so they get one step further down in warps too
    fewer = (warps0 // 4,) if "BV" not in kw else ()
    warps = sorted({w for w in (*fewer, warps0 // 2, warps0, warps0 * 2)
                    if 1 <= w <= 16 and (kernel_name(launch.kernel), w) not in BREAKS_CONTEXT})
    configs = [shipped]
    for bv, w, st in itertools.product(tiles, warps, sorted({1, 2, stages0})):
        config = {"num_warps": w, "num_stages": st, **({} if bv is None else {"BV": bv})}
        if config != shipped:
            configs.append(config)
    return configs


def relaunch(launch: Launch, config: Dict[str, int]) -> Callable[[], Any]:
    """`launch` again with `config` (and the grid of its value tile)."""
    grid = list(launch.grid)
    axis = V_TILE_AXIS.get(kernel_name(launch.kernel))
    if axis is not None:
        grid[axis] = -(-launch.kwargs["V"] // config["BV"])
    kwargs = {**launch.kwargs, **config}
    return lambda: launch.kernel[tuple(grid)](*launch.args, **kwargs)


def _compiled_stats(compiled) -> Tuple[Optional[int], Optional[int]]:
    return getattr(compiled, "n_regs", None), getattr(compiled, "n_spills", None)


def time_candidate(launch: Launch, candidate: Candidate, rep_ms: int) -> Optional[str]:
    """Time `candidate` (its error, if it has one, is a row). Returns why timing must stop: a fault
    that broke the CUDA context, which every later launch would report again; else None."""
    import triton.testing

    fn = relaunch(launch, candidate.config)
    try:
        compiled = fn()
        torch.cuda.synchronize()
        candidate.registers, candidate.local_words = _compiled_stats(compiled)
        candidate.ms = triton.testing.do_bench(fn, warmup=5, rep=rep_ms, return_mode="median")
    except Exception as e:  # noqa: BLE001 (a candidate that does not compile or launch is a row)
        candidate.error = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:160]
        try:
            torch.cuda.synchronize()
        except Exception:  # noqa: BLE001
            return f"CUDA context broken by {kernel_name(launch.kernel)} at {_config_text(candidate.config)}"
    return None


def compile_share(launches: List[Launch], worker: int, workers: int) -> None:
    """A compile worker: launch its share of every kernel's candidates once (into Triton's cache)."""
    jobs = [(launch, config) for launch in launches for config in candidate_configs(launch)[1:]]
    for launch, config in jobs[worker::workers]:
        try:
            relaunch(launch, config)()
        except Exception:  # noqa: BLE001 (the timing process compiles it again and reports why it fails)
            pass
    torch.cuda.synchronize()


def run_compile_workers(argv: List[str], workers: int, timeout_s: float) -> None:
    """This script again in `workers` processes, each compiling its share; those still compiling
    after `timeout_s` are stopped (the timing process compiles what they left)."""
    start = time.perf_counter()
    procs = [subprocess.Popen([sys.executable, os.path.abspath(__file__), *argv, "--compile-share", f"{i}/{workers}"])
             for i in range(workers)]
    for proc in procs:
        try:
            proc.wait(timeout=max(1.0, timeout_s - (time.perf_counter() - start)))
        except subprocess.TimeoutExpired:
            proc.kill()


def _config_text(config: Dict[str, int]) -> str:
    return ", ".join(f"{k}={config[k]}" for k in ("BV", "num_warps", "num_stages") if k in config)


def report(title: str, sweeps: Dict[str, List[Candidate]], notes: List[str]) -> List[str]:
    lines = [f"# {title}", "", *notes, "",
             "| kernel | shipped | shipped ms | best | best ms | shipped / best | best regs | best local words |",
             "|---|---|---:|---|---:|---:|---:|---:|"]
    for name, candidates in sweeps.items():
        shipped = candidates[0]
        timed = [c for c in candidates if c.ms is not None]
        best = min(timed, key=lambda c: c.ms) if timed else None
        fmt = lambda x: "—" if x is None else f"{x:.4f}"
        ratio = f"{shipped.ms / best.ms:.2f}" if best and shipped.ms else "—"
        lines.append(f"| `{name}` | {_config_text(shipped.config)} | {fmt(shipped.ms)} | "
                     f"{_config_text(best.config) if best else 'not measured'} | {fmt(best.ms if best else None)} | "
                     f"{ratio} | {best.registers if best else '—'} | {best.local_words if best else '—'} |")
    return lines


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    p.add_argument("--shape", default=None, help="B<b>-T<t>-H<h>-D<d> (default: the first benchmark shape; "
                                                  "B1-T64-H2-D32 with --dry-run on a CPU)")
    p.add_argument("--chunk", type=int, default=settings.DEFAULT_CHUNK)
    p.add_argument("--dgd", type=int, choices=(0, 1), default=1, help="1: every kernel of the backward runs")
    p.add_argument("--budget-s", type=float, default=150.0)
    p.add_argument("--rep-ms", type=int, default=25, help="do_bench's rep per candidate")
    p.add_argument("--dry-run", action="store_true", help="record and list the candidates, time nothing")
    p.add_argument("--compile-workers", type=int, default=8, help="processes that compile the candidates first")
    p.add_argument("--compile-share", default=None, help=argparse.SUPPRESS)   # "i/n": a compile worker's share
    args = p.parse_args(argv)
    cuda = torch.cuda.is_available()
    if not cuda and not args.dry_run:
        print("config_sweep: no GPU; nothing measured (use --dry-run to list the candidates)", file=sys.stderr)
        return 2
    if args.shape:
        try:
            shape = BenchShape.parse(args.shape)
        except ValueError as e:
            p.error(f"--shape: {e}")
    else:
        shape = SHAPES[0] if cuda else BenchShape(1, 64, 2, 32)
    settings.CHUNK = args.chunk
    x = make_inputs(shape, device="cuda" if cuda else "cpu", dtype=torch.bfloat16)
    fn, _ = linear_memory_callable(x, "triton", bool(args.dgd), "fwdbwd")
    fn()                                                                      # compile the shipped configurations
    launches = record_launches(fn)
    if args.compile_share:
        compile_share(launches, *map(int, args.compile_share.split("/")))
        return 0
    start = time.perf_counter()
    if args.compile_workers > 0 and not args.dry_run:
        run_compile_workers(list(argv if argv is not None else sys.argv[1:]), args.compile_workers, args.budget_s / 2)
    sweeps = {kernel_name(la.kernel): [Candidate(c, shipped=i == 0) for i, c in enumerate(candidate_configs(la))]
              for la in launches}
    write = lambda stop=None: write_report(args, shape, sweeps, stop)
    if args.dry_run:
        write()
        return 0
    run_sweep(launches, sweeps, lambda la, c: time_candidate(la, c, args.rep_ms),
              lambda: time.perf_counter() - start > args.budget_s, f"time budget ({args.budget_s:.0f} s) spent", write)
    return 0


def run_sweep(launches: List[Launch], sweeps: Dict[str, List[Candidate]], time_one, over_budget, budget_note: str,
              write) -> Optional[str]:
    """Time every shipped configuration, then the other candidates kernel by kernel, largest shipped
    time first, while `over_budget()` is False and no launch broke the context (`time_one` returns
    why to stop); `sweeps` is reordered that way and `write(stop)` called after each kernel."""
    stop = None
    for launch in launches:
        stop = stop or time_one(launch, sweeps[kernel_name(launch.kernel)][0])
    order = sorted(launches, key=lambda la: -(sweeps[kernel_name(la.kernel)][0].ms or 0.0))
    reordered = {kernel_name(la.kernel): sweeps[kernel_name(la.kernel)] for la in order}
    sweeps.clear()
    sweeps.update(reordered)
    write(stop)
    for launch in order:
        for candidate in sweeps[kernel_name(launch.kernel)][1:]:
            if stop is None and over_budget():
                stop = budget_note
            if stop is not None:
                break
            stop = time_one(launch, candidate)
        write(stop)                                                           # what is timed survives a kill
    return stop


def write_report(args, shape, sweeps: Dict[str, List[Candidate]], stop: Optional[str]) -> None:
    """config-sweep.md and .json in args.out_dir, from what is timed so far (`stop`: why the rest
    was not), and the table on stdout."""
    import triton

    cuda = torch.cuda.is_available()
    device = torch.cuda.get_device_name() if cuda else "CPU (dry run: nothing timed)"
    untimed = sum(c.ms is None and c.error is None for cs in sweeps.values() for c in cs)
    notes = [f"* device: {device}; torch {torch.__version__}, triton {triton.__version__}",
             f"* {shape.name}, chunk {args.chunk}, bf16, momentum, {'DGD' if args.dgd else 'no DGD'}: the first "
             f"launch of each kernel in one forward and backward; do_bench medians (rep {args.rep_ms} ms), each "
             f"kernel alone", f"* {sum(len(c) for c in sweeps.values())} candidates for {len(sweeps)} kernels, "
             f"{untimed} not timed" + (f" ({stop})" if stop else "")]
    lines = report("Launch configurations by time", sweeps, notes)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, "config-sweep.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    with open(os.path.join(args.out_dir, "config-sweep.json"), "w") as f:
        json.dump({"notes": notes, "stopped": stop,
                   "kernels": {n: [dataclasses.asdict(c) for c in cs] for n, cs in sweeps.items()}}, f, indent=1)
    print("\n".join(lines), flush=True)

if __name__ == "__main__":
    sys.exit(main())
