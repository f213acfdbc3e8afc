"""Time every op × backend × shape × mode of `registry.py` on the CPU; print a markdown table.

    python benchmarks/cpu_table.py [--quick] [--ops linear_memory ...] [--out benchmarks/results/cpu-<date>.md]

Each case is built once (fixed seed, so every backend of a shape sees the same inputs), called
once to warm up, then timed with `time.perf_counter` until it has `--min-runs` runs and has
used `--budget` seconds (at most `--max-runs`); the table gives the median. The warm-up call's
outputs (fwd: o and final state; fwd+bwd: every gradient) are compared with the reference
tier's, `rms(ref − out) / rms(ref)`, or with the torch tier's where the reference is not run.

Columns: speed-ups are time ratios, > 1 means faster: "× ref" = t_reference / t_backend,
"× torch" = t_torch / t_backend. tokens/s = B·T / median. With `--out X.md`, the same markdown
goes to X.md and every number (all run times included) to X.json. Other processes' CPU load is
measured around every case (waited out where possible, ⚠ where not; see benchmarks/README.md);
`--merge a.json b.json` combines saved runs, keeping per case the lowest median.
"""
import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from typing import Dict, List, Optional

import torch

import registry
from linear_memory_bench.report import _git_commit
from registry import Case

SUMMARY_T = 1024      # the README's numbers: linear_memory fwd, B=2 T=1024 H=4 K=V=64, momentum on


# ---------------------------------------------------------------------------------------------
# Machine facts
# ---------------------------------------------------------------------------------------------

def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_pressure() -> Optional[str]:
    """Linux PSI: the share of time some task waited for a CPU (other load on a shared machine)."""
    try:
        with open("/proc/pressure/cpu") as f:
            fields = dict(kv.split("=") for kv in f.readline().split()[1:])
        return f"some avg10={fields['avg10']}% avg60={fields['avg60']}%"
    except (OSError, KeyError, ValueError):
        return None


def _load() -> Dict[str, object]:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"loadavg_1_5_15": [round(x, 2) for x in load] if load else None, "cpu_pressure": _cpu_pressure()}


def machine_facts() -> Dict[str, object]:
    from nested_kernels import _extension

    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    info = _extension.build_info()
    return {
        "cpu": _cpu_model(),
        "cores": cores,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git": _git_commit(),
        "extension": {k: info.get(k) for k in ("built", "openmp", "error") if k in info},
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "load_start": _load(),
    }


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------

NOISY = 1.25          # median / min above this: the runs disagree (other load), take more runs
OTHER_LOAD_MAX = 0.3  # cores used by other processes while a case ran, above which it is flagged


def time_fn(fn, *, min_runs: int, max_runs: int, budget_s: float) -> List[float]:
    """Seconds per call of `fn` (already warmed up): at least min_runs, then until budget_s is spent.

    While the median is more than NOISY × the fastest run (a burst of other load), keep going
    up to 3 × budget_s, so the median is taken over mostly undisturbed runs.
    """
    times: List[float] = []

    def more() -> bool:
        if len(times) >= max_runs:
            return False
        if len(times) < min_runs or sum(times) < budget_s:
            return True
        return sum(times) < 3 * budget_s and statistics.median(times) > NOISY * min(times)

    while more():
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def _proc_jiffies() -> Optional[tuple]:
    """(busy ticks of all CPUs, total ticks of all CPUs, ticks of this process) from /proc (Linux)."""
    try:
        with open("/proc/stat") as f:
            cpu = [int(x) for x in f.readline().split()[1:]]
        with open("/proc/self/stat") as f:
            own = f.read().rsplit(")", 1)[1].split()
    except (OSError, ValueError, IndexError):
        return None
    idle = cpu[3] + (cpu[4] if len(cpu) > 4 else 0)                    # idle + iowait
    busy = sum(cpu[:8]) - idle if len(cpu) >= 8 else sum(cpu) - idle    # user … steal, no guest
    return busy, busy + idle, int(own[11]) + int(own[12])                # utime + stime, all threads


class OtherLoad:
    """CPU time other processes take (in cores), from /proc/stat minus this process's own time.

    On a small shared machine another process's threads can make every small op here wait for
    a descheduled OpenMP worker, inflating times 10–100× while they run. Before each case
    `wait()` sleeps while others use more than `threshold` cores (within the wait budgets);
    `start()` / `stop()` around the timed runs give the other load during them, which goes
    into the row, so contended rows stay visible. Without /proc both are no-ops (None).
    """

    def __init__(self, *, threshold: float = 0.3, max_wait_case_s: float = 20.0, max_wait_total_s: float = 120.0):
        self.threshold, self.max_wait_case_s, self.wait_left_s = threshold, max_wait_case_s, max_wait_total_s
        self.cores = os.cpu_count() or 1
        self.waited_s = 0.0
        self._t0 = None

    def _between(self, a, b) -> Optional[float]:
        if a is None or b is None or b[1] <= a[1]:
            return None
        elapsed_ticks = (b[1] - a[1]) / self.cores
        return max(0.0, ((b[0] - a[0]) - (b[2] - a[2])) / elapsed_ticks)

    def sample(self, seconds: float = 0.5) -> Optional[float]:
        a = _proc_jiffies()
        time.sleep(seconds)
        return self._between(a, _proc_jiffies())

    def wait(self) -> Optional[float]:
        """Sleep while others load the CPU (within the budgets); their load in the last window."""
        other, waited = self.sample(0.25), 0.0
        while (other is not None and other > self.threshold and waited < self.max_wait_case_s
               and self.wait_left_s > 0):
            other = self.sample(1.0)
            waited += 1.0
            self.wait_left_s -= 1.0
        self.waited_s += waited
        return other

    def start(self) -> None:
        self._t0 = _proc_jiffies()

    def stop(self) -> Optional[float]:
        return self._between(self._t0, _proc_jiffies())


def _flat(outs) -> torch.Tensor:
    return torch.cat([t.detach().reshape(-1).double() for t in outs])


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out - ref).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt().clamp_min(1e-30)).item()


def _measure(fn, *, min_runs: int, max_runs: int, budget_s: float, load: Optional[OtherLoad]) -> dict:
    """Time an already warmed-up `fn`; waits for other load to pass first (within budget)."""
    m: Dict[str, object] = {}
    if load is not None:
        m["other_load_before"] = load.wait()
        load.start()
    times = time_fn(fn, min_runs=min_runs, max_runs=max_runs, budget_s=budget_s)
    if load is not None:
        m["other_load"] = load.stop()
    m.update(times_ms=[1e3 * t for t in times], runs=len(times),
             median_ms=1e3 * statistics.median(times), min_ms=1e3 * min(times))
    other = m.get("other_load")
    m["noisy"] = m["median_ms"] > NOISY * m["min_ms"] or (other is not None and other > OTHER_LOAD_MAX)
    return m


def _log_row(log, case_id: str, row: dict, prefix: str = "") -> None:
    other = row.get("other_load")
    log(f"{prefix}{case_id:48s} {row['median_ms']:10.2f} ms  (min {row['min_ms']:.2f}, {row['runs']} runs"
        f"{', others %.2f cores' % other if other is not None else ''}){'  NOISY' if row['noisy'] else ''}")


def run_cases(cases: List[Case], *, min_runs: int, max_runs: int, budget_s: float,
              load: Optional[OtherLoad] = None, retry_noisy: bool = True, log=print) -> List[dict]:
    """Time every case; with `retry_noisy`, time the noisy ones once more at the end and keep
    the measurement with the lower median (other load only ever inflates times)."""
    rows: List[dict] = []
    oracle: Dict[tuple, tuple] = {}     # (shape, mode) -> (backend, flat outputs of the oracle)
    timing = dict(min_runs=min_runs, max_runs=max_runs, budget_s=budget_s, load=load)
    for case in cases:
        row = {"op": case.op, "shape": case.shape.name, "tag": case.shape.tag, "B": case.shape.B,
               "T": case.shape.T, "tokens": case.shape.tokens, "backend": case.backend, "mode": case.mode,
               "id": case.id, "status": "ok"}
        rows.append(row)
        if case.skip:
            row["status"] = case.skip
            log(f"{case.id:48s} {case.skip}")
            continue
        fn = case.build()
        t0 = time.perf_counter()
        flat = _flat(fn())                                      # warm-up; its outputs are checked
        row["warmup_ms"] = 1e3 * (time.perf_counter() - t0)
        key = (case.shape.name, case.mode)
        if key not in oracle and case.backend in ("reference", "torch"):
            oracle[key] = (case.backend, flat)
            row["oracle"] = True
        row["finite"] = bool(torch.isfinite(flat).all())
        if key in oracle and oracle[key][0] != case.backend:
            row["check_vs"], row["rel_err"] = oracle[key][0], rel_err(flat, oracle[key][1])
        row.update(_measure(fn, **timing))
        _log_row(log, case.id, row)
        del fn, flat

    if retry_noisy:
        for case, row in zip(cases, rows):
            if row["status"] != "ok" or not row["noisy"]:
                continue
            fn = case.build()
            fn()                                                # warm-up
            again = _measure(fn, **timing)
            _log_row(log, case.id, again, prefix="retry ")
            row["first_try"] = {k: row[k] for k in again if k in row}
            if again["median_ms"] < row["median_ms"]:
                row.update(again)
            del fn
    for row in rows:
        if row["status"] == "ok":
            row["tokens_per_s"] = row["tokens"] / (row["median_ms"] / 1e3)
    _add_ratios(rows)
    return rows


def _add_ratios(rows: List[dict]) -> None:
    by_key = {(r["shape"], r["mode"], r["backend"]): r for r in rows if r["status"] == "ok"}
    for r in rows:
        if r["status"] != "ok":
            continue
        for base, name in (("reference", "speedup_vs_reference"), ("torch", "speedup_vs_torch")):
            other = by_key.get((r["shape"], r["mode"], base))
            if other is not None:
                r[name] = other["median_ms"] / r["median_ms"]


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------

def summary(rows: List[dict]) -> List[dict]:
    """linear_memory fwd at B=2 T=1024 H=4 K=V=64 (momentum on), dgd off and on: median-based
    speed-ups (the headline), min-based ones beside them (less sensitive to other load)."""
    out = []
    for shape in registry.SHAPES["linear_memory"]:
        if shape.T != SUMMARY_T:
            continue
        got = {r["backend"]: r for r in rows if r["shape"] == shape.name and r["mode"] == "fwd" and r["status"] == "ok"}
        entry = {"shape": shape.name, "dgd": shape.dims["dgd"],
                 "median_ms": {b: r["median_ms"] for b, r in got.items()},
                 "min_ms": {b: r["min_ms"] for b, r in got.items()},
                 "noisy": sorted(b for b, r in got.items() if r.get("noisy"))}
        for name, slow, fast in (("torch_over_reference", "reference", "torch"), ("cpp_over_torch", "torch", "cpp")):
            if slow in got and fast in got:
                entry[f"{name}_speedup"] = got[slow]["median_ms"] / got[fast]["median_ms"]
                entry[f"{name}_speedup_min"] = got[slow]["min_ms"] / got[fast]["min_ms"]
        out.append(entry)
    return out


def _fmt_ms(x: float) -> str:
    return f"{x:.1f}" if x >= 100 else f"{x:.2f}" if x >= 1 else f"{x:.3f}"


def _fmt_x(x: Optional[float]) -> str:
    return "—" if x is None else f"{x:.1f}×" if x >= 10 else f"{x:.2f}×"


def _fmt_rate(x: float) -> str:
    return f"{x / 1e6:.2f}M" if x >= 1e6 else f"{x / 1e3:.1f}k" if x >= 1e3 else f"{x:.0f}"


def _fmt_check(r: dict) -> str:
    if not r.get("finite", True):
        return "NON-FINITE"
    if "rel_err" not in r:
        return "oracle" if r.get("oracle") else "—"
    err = f"{r['rel_err']:.1e}"
    return err if r["check_vs"] == "reference" else f"{err} (vs torch)"


def _load_line(facts: dict, settings: dict) -> str:
    def load(d):
        return f"{d['loadavg_1_5_15']} (CPU pressure {d['cpu_pressure']})"

    if "runs" in facts:
        parts = [f"{r['path']} ({r['date']}, {r['git']}, {r['wall_s']:.0f} s, load {load(r['load_start'])} → "
                 f"{load(r['load_end'])}; {r['rows_kept']} rows kept)" for r in facts["runs"]]
        return ("Merged from " + str(len(parts)) + " runs on this machine, each row from the run with the lowest "
                "median (other processes' load only inflates times): " + "; ".join(parts) + ".")
    waited = settings.get("waited_for_quiet_s")
    return (f"Load: start {load(facts['load_start'])}, end {load(facts['load_end'])}; "
            + (f"waited {waited:.0f} s in all for other load to pass. " if waited is not None else "")
            + f"Timed in {settings['wall_s']:.0f} s.")


def merge_runs(paths: List[str]):
    """Rows of several saved runs (their JSON) on one machine: per case, the run with the lowest
    median (other processes' load only ever inflates times). Returns (facts, rows, settings)."""
    runs = []
    for path in paths:
        with open(path) as f:
            runs.append(json.load(f))
    cpus = {(r["machine"]["cpu"], r["machine"]["cores"], r["machine"]["torch"], r["machine"]["torch_threads"])
            for r in runs}
    if len(cpus) > 1:
        raise SystemExit(f"--merge: the runs come from different machines or settings: {sorted(cpus)}")
    best: Dict[str, dict] = {}
    order: List[str] = []
    for i, run in enumerate(runs):
        for row in run["rows"]:
            if row["id"] not in best:
                order.append(row["id"])
            row = dict(row, source=i)
            cur = best.get(row["id"])
            if cur is None or (row["status"] == "ok" and (cur["status"] != "ok" or row["median_ms"] < cur["median_ms"])):
                best[row["id"]] = row
    rows = [best[i] for i in order]
    _add_ratios(rows)
    facts = dict(runs[0]["machine"])
    facts["runs"] = [{"path": os.path.basename(p), "date": r["machine"]["date"], "git": r["machine"]["git"],
                      "load_start": r["machine"]["load_start"], "load_end": r["machine"]["load_end"],
                      "wall_s": r["settings"]["wall_s"], "rows_kept": sum(1 for x in rows if x.get("source") == i)}
                     for i, (p, r) in enumerate(zip(paths, runs))]
    return facts, rows, dict(runs[0]["settings"])


def markdown(facts: dict, rows: List[dict], summ: List[dict], settings: dict) -> str:
    ext = facts["extension"]
    ext_s = ("built" + (", OpenMP" if ext.get("openmp") else ", no OpenMP")) if ext.get("built") else "not built"
    lines = [
        "# nested_kernels CPU benchmarks",
        "",
        f"CPU: {facts['cpu']}, {facts['cores']} cores · torch {facts['torch']}, {facts['torch_threads']} threads · "
        f"Python {facts['python']} · nested_kernels {facts['git'] or '(no git)'}, _C {ext_s} · {facts['date']}",
        "",
        "GPU: not measured (no CUDA device)" if facts["cuda"] is None else
        f"GPU: {facts['cuda']} present, not measured here (GPU benchmarks come with the Triton/CUDA backends)",
        "",
        _load_line(facts, settings),
        "",
        f"Timer: `time.perf_counter`, 1 warm-up call, then ≥ {settings['min_runs']} runs and ≥ {settings['budget_s']} s "
        f"(≤ {settings['max_runs']} runs; up to 3× the time while median > {NOISY} × min) per case; median; "
        "noisy cases are timed once more at the end and the lower median kept. "
        "fp32 inputs. fwd = forward under no_grad; fwd+bwd = forward + gradient of (o·do).sum() + final-state "
        "term w.r.t. every input, gate and initial state. × ref = t_reference / t, × torch = t_torch / t "
        "(> 1: faster). check = rms(ref − out) / rms(ref) of the warm-up outputs against the reference "
        "(or the torch tier where the reference is not run). ⚠ = noisy: median > "
        f"{NOISY} × min, or other processes used > {OTHER_LOAD_MAX} cores while the case ran "
        "(the case waits for them first, within a budget).",
        "",
        "| op | shape | backend | mode | median ms | min ms | runs | tokens/s | × ref | × torch | check |",
        "|---|---|---|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    gpu_tiers: Dict[str, List[str]] = {}
    for r in rows:
        if r["backend"] in registry.NOT_TIMED_ON_CPU and r["status"] != "ok":
            gpu_tiers.setdefault(r["backend"], []).append(r["id"])
            continue
        if r["status"] != "ok":
            why = r["status"].removeprefix("not run: ")
            lines.append(f"| {r['op']} | {r['shape']} | {r['backend']} | {r['mode']} | not run | | | | | | {why} |")
            continue
        lines.append(
            f"| {r['op']} | {r['shape']} | {r['backend']} | {r['mode']} | {_fmt_ms(r['median_ms'])}"
            f"{' ⚠' if r.get('noisy') else ''} | {_fmt_ms(r['min_ms'])} | {r['runs']} | {_fmt_rate(r['tokens_per_s'])} | "
            f"{_fmt_x(r.get('speedup_vs_reference'))} | {_fmt_x(r.get('speedup_vs_torch'))} | {_fmt_check(r)} |"
        )
    for tier, ids in gpu_tiers.items():
        lines += ["", f"Not timed: `{tier}` ({len(ids)} cases its registry accepts on this device): "
                  + registry.NOT_TIMED_ON_CPU[tier].removeprefix("not run: ") + "."]
    lines += ["", f"## Summary: linear_memory fwd, B=2 T={SUMMARY_T} H=4 K=V=64, chunk 64, momentum on", ""]
    for s in summ:
        t = s["median_ms"]
        parts = []
        for name, label, slow, fast in (("torch_over_reference", "torch tier / reference", "reference", "torch"),
                                        ("cpp_over_torch", "cpp / torch", "torch", "cpp")):
            if f"{name}_speedup" in s:
                parts.append(f"{label}: **{s[f'{name}_speedup']:.1f}×** faster ({_fmt_ms(t[slow])} → "
                             f"{_fmt_ms(t[fast])} ms median; {s[f'{name}_speedup_min']:.1f}× by min)")
            else:
                parts.append(f"{label}: not measured")
        noisy = f" ⚠ noisy: {', '.join(s['noisy'])}" if s["noisy"] else ""
        lines.append(f"- dgd {'on' if s['dgd'] else 'off'}: " + "; ".join(parts) + noisy)
    lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help=f"T = 256 shapes plus the summary shapes (linear_memory fwd, T = {SUMMARY_T}), fewer runs")
    parser.add_argument("--ops", nargs="+", choices=registry.OPS, default=list(registry.OPS))
    parser.add_argument("--out", help="write the markdown here and the JSON beside it (same name, .json)")
    parser.add_argument("--min-runs", type=int, default=None, help="timed runs per case at least (default 5, quick 3)")
    parser.add_argument("--max-runs", type=int, default=None, help="timed runs per case at most (default 20, quick 8)")
    parser.add_argument("--budget", type=float, default=None, help="seconds of timed runs per case (default 1.0, quick 0.3)")
    parser.add_argument("--max-wait", type=float, default=120.0,
                        help="seconds to wait in all for other processes' load to pass before cases (0: never; default 120)")
    parser.add_argument("--merge", nargs="+", metavar="RUN.json",
                        help="time nothing: merge saved runs (their --out JSON), keeping per case the lowest median")
    parser.add_argument("--no-retry", action="store_true", help="do not re-time noisy cases at the end")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)")
    args = parser.parse_args(argv)

    if args.merge:
        facts, rows, settings = merge_runs(args.merge)
        summ = summary(rows)
        _write(markdown(facts, rows, summ, settings), {"machine": facts, "settings": settings, "rows": rows,
                                                       "summary": summ}, args.out)
        return 0
    if args.threads:
        torch.set_num_threads(args.threads)
    settings = {
        "quick": args.quick,
        "min_runs": args.min_runs or (3 if args.quick else 5),
        "max_runs": args.max_runs or (8 if args.quick else 20),
        "budget_s": args.budget if args.budget is not None else (0.3 if args.quick else 1.0),
    }
    shape_filter = None
    if args.quick:
        def shape_filter(shape):
            return shape.T == 256 or (shape.op == "linear_memory" and shape.T == SUMMARY_T)
    cases = registry.cases(args.ops, shape_filter=shape_filter)
    if args.quick:      # the summary shapes only forward
        cases = [c for c in cases if c.shape.T == 256 or c.mode == "fwd"]

    facts = machine_facts()
    t0 = time.perf_counter()
    load = OtherLoad(max_wait_total_s=args.max_wait)
    rows = run_cases(cases, min_runs=settings["min_runs"], max_runs=settings["max_runs"],
                     budget_s=settings["budget_s"], load=load, retry_noisy=not args.no_retry, log=lambda s: print(s, file=sys.stderr, flush=True))
    settings["wall_s"] = round(time.perf_counter() - t0, 1)
    settings["waited_for_quiet_s"] = load.waited_s
    facts["load_end"] = _load()
    summ = summary(rows)
    print(f"(timed in {settings['wall_s']} s)", file=sys.stderr)
    _write(markdown(facts, rows, summ, settings),
           {"machine": facts, "settings": settings, "rows": rows, "summary": summ}, args.out)
    return 0


def _write(md: str, data: dict, out: Optional[str]) -> None:
    """Print the markdown; with `out`, write it there and the data beside it as JSON."""
    print(md)
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w") as f:
            f.write(md)
        stem = out[:-3] if out.endswith(".md") else out
        with open(stem + ".json", "w") as f:
            json.dump(data, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
