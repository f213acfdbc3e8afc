"""The report: machine facts, speed ratios, the markdown table and the JSON file."""
import datetime
import json
import os
import platform
import subprocess
from dataclasses import asdict
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch

from . import ROOT, settings
from .callables import _fla_version
from .rows import Row, Run
from .settings import CPU_SHAPE, GATE_T, GATE_TOL_GRAD, GATE_TOL_OUT, KERNEL_TIERS, MODE_LABEL, NO_CUDA, SDPA_FWDBWD_FACTOR


def _git_commit() -> Optional[str]:
    try:
        head = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0 or not head.stdout.strip():
            return None
        dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def _triton_operands(cuda: bool) -> Optional[str]:
    """How the triton tier's kernels get the bf16 inputs here (`utils/operand_precision.py`)."""
    if not cuda:
        return None
    try:
        from nested_kernels.triton_kernels.utils.operand_precision import fp32_operands_reason
    except ImportError:
        return None
    reason = fp32_operands_reason(torch.device("cuda"), torch.bfloat16)
    if reason is not None:
        return f"fp32 operands ({reason})"
    forced = os.environ.get("NESTED_KERNELS_TRITON_16BIT_DOTS") == "1"
    return "bf16 as they are" + (" (NESTED_KERNELS_TRITON_16BIT_DOTS=1)" if forced else "")


def machine_meta(cuda: bool, args) -> Dict[str, object]:
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    return {
        "gpu": torch.cuda.get_device_name(0) if cuda else None,
        "cuda_runtime": torch.version.cuda,
        "cpu": platform.processor() or platform.machine(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": triton_version,
        "fla": _fla_version(),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "git": _git_commit(),
        "peak_tflops": args.peak_tflops,
        "peak_tbps": args.peak_tbps,
        "peaks_source": getattr(args, "peaks_source", "given"),
        "chunk_size": settings.CHUNK,
        "dtype": "bf16 q/k/v, fp32 gates" if cuda else "fp32 (CPU)",
        "triton_operands": _triton_operands(cuda),
        "loadavg": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }


def _fmt(x: Optional[float], spec: str, none: str = "—") -> str:
    return none if x is None else format(x, spec)


def _si(x: Optional[float], unit: str = "") -> str:
    if x is None:
        return "—"
    for div, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(x) >= div:
            return f"{x / div:.3g}{prefix}{unit}"
    return f"{x:.3g}{unit}"


def _find(rows: Sequence[Row], shape: str, mode: str, backend: str, variant: Optional[str] = None) -> Optional[Row]:
    for r in rows:
        if r.shape == shape and r.mode == mode and r.backend == backend and (variant is None or r.variant == variant):
            return r
    return None


def ratios(rows: Sequence[Row]) -> List[Dict[str, object]]:
    """Per kernel-tier row: time of torch / fla / sdpa over the tier's time (> 1: the tier is faster)."""
    out = []
    for r in rows:
        if r.backend not in KERNEL_TIERS or r.device != "cuda" or r.status == NO_CUDA:
            continue
        entry: Dict[str, object] = {"shape": r.shape, "variant": r.variant, "mode": r.mode, "backend": r.backend}
        for peer, variant in (("torch", r.variant), ("fla", None), ("sdpa", None)):
            other = _find(rows, r.shape, r.mode, peer, variant)
            entry[f"{peer}_over_{r.backend}"] = (other.ms / r.ms) if (r.timed and other is not None and other.timed) else None
        entry["roofline"] = r.roofline
        out.append(entry)
    return out


def _target(value: Optional[float], ok: Callable[[float], bool]) -> str:
    return "—" if value is None else ("pass" if ok(value) else "FAIL")


def to_markdown(run: Run) -> str:
    m = run.meta
    lines = [
        "# linear_memory benchmark",
        "",
        f"* GPU: {m['gpu'] or NO_CUDA}" + (f" (CUDA runtime {m['cuda_runtime']})" if m["gpu"] else ""),
        f"* torch {m['torch']}, triton {m['triton'] or 'not installed'}, fla {m['fla'] or 'not installed'}, "
        f"python {m['python']}",
        f"* date {m['date']}, git {m['git'] or 'unknown'}",
        f"* inputs: {m['dtype']}; momentum on, but in `-nomom` rows; chunk {m['chunk_size']}; modes: fwd (no_grad), "
        "fwd+bwd (forward + backward of (o·do).sum())",
        *([f"* the triton tier's operands: {m['triton_operands']}"] if m.get("triton_operands") else []),
        f"* roofline peaks: {m['peak_tflops']:g} TFLOP/s, {m['peak_tbps']:g} TB/s ({m['peaks_source']}); roofline = "
        "max(FLOPs / peak, bytes / bandwidth) / measured (formulas in linear_memory_bench/counts.py)",
        "* timing: triton.testing.do_bench median (p20, p80) on CUDA; time.perf_counter median on the CPU",
    ]
    if not m["gpu"]:
        lines.append(f"* no CUDA device: every GPU row is {NO_CUDA}; the CPU tiers ran at {CPU_SHAPE.name} in fp32 "
                     f"(load average {m['loadavg']}; CPU times are for sanity, not for SPEC §8)")
    if not run.complete:
        lines.append("* **partial**: the run had not finished when this file was written")
    lines += [
        "",
        "| shape | variant | mode | backend | status | ms | p20 | p80 | tokens/s | peak MiB | FLOPs | bytes | roofline | note |",
        "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for r in run.rows:
        lines.append(
            f"| {r.shape} | {r.variant} | {MODE_LABEL[r.mode]} | {r.backend}{' (cpu)' if r.device == 'cpu' else ''} "
            f"| {r.status} | {_fmt(r.ms, '.3f')} | {_fmt(r.p20, '.3f')} | {_fmt(r.p80, '.3f')} "
            f"| {_si(r.tokens_per_s)} | {_fmt(r.peak_mib, '.0f')} | {_si(r.flops)} | {_si(r.bytes, 'B')} "
            f"| {_fmt(None if r.roofline is None else 100 * r.roofline, '.1f')}{'%' if r.roofline is not None else ''} "
            f"| {r.note} |")
    rs = ratios(run.rows)
    if rs:
        lines += [
            "",
            "## Speed ratios (same run; time of the other / time of the kernel tier, > 1: the kernel tier is faster)",
            "",
            "SPEC §8 targets: ≥ 20× the torch tier, ≤ 1.0× fla's time (ratio ≥ 1), ≥ 50 % of the roofline.",
            "",
            "| shape | variant | mode | tier | torch / tier | fla / tier | sdpa / tier | ≥ 20× torch | ≤ 1.0× fla | ≥ 50 % roofline |",
            "|---|---|---|---|---:|---:|---:|---|---|---|",
        ]
        for e in rs:
            t, f, s, rf = e[f"torch_over_{e['backend']}"], e[f"fla_over_{e['backend']}"], e[f"sdpa_over_{e['backend']}"], e["roofline"]
            lines.append(
                f"| {e['shape']} | {e['variant']} | {MODE_LABEL[e['mode']]} | {e['backend']} | {_fmt(t, '.2f')} "
                f"| {_fmt(f, '.2f')} | {_fmt(s, '.2f')} | {_target(t, lambda v: v >= 20)} "
                f"| {_target(f, lambda v: v >= 1.0)} | {_target(rf, lambda v: v >= 0.5)} |")
    if run.gates:
        lines += ["", f"## Correctness gate (T = {GATE_T}; rms(ref − out) / rms(ref) against the torch tier in fp32; "
                      f"o ≤ {GATE_TOL_OUT:g}, gradients ≤ {GATE_TOL_GRAD:g})", "",
                  "| shape | tier | variant | mode | passed | worst ratio | error |", "|---|---|---|---|---|---:|---|"]
        for g in run.gates:
            for mode, passed in g["passed"].items():
                worst = max(g["ratios"].get(mode, {}).items(), key=lambda kv: kv[1], default=None)
                worst_s = "—" if worst is None else f"{worst[1]:.2e} ({worst[0]})"
                lines.append(f"| {g['shape']} | {g['backend']} | {g['variant']} | {MODE_LABEL[mode]} "
                             f"| {'yes' if passed else 'NO'} | {worst_s} | {g['errors'].get(mode, '')} |")
    return "\n".join(lines) + "\n"


def to_json(run: Run) -> Dict[str, object]:
    return {"meta": run.meta, "complete": run.complete, "rows": [asdict(r) for r in run.rows],
            "ratios": ratios(run.rows), "gates": run.gates,
            "formulas": {"linear_memory": "see linear_memory_chunk_flops / linear_memory_bytes",
                         "sdpa": f"fwd 4·B·H·T²·D/2, fwd+bwd {SDPA_FWDBWD_FACTOR}× fwd"}}


def write_outputs(run: Run, out_dir: str, tag: str) -> Tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    md_path = os.path.join(out_dir, f"linear_memory-{tag}.md")
    json_path = os.path.join(out_dir, f"linear_memory-{tag}.json")
    for path, text in ((md_path, to_markdown(run)), (json_path, json.dumps(to_json(run), indent=1, default=str))):
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    return md_path, json_path


def write_tables(out_dir: str, stem: str, text: str, meta: Dict[str, object], rows: Sequence[object]) -> Tuple[str, str]:
    """Write `<stem>.md` (text) and `<stem>.json` (meta and the dataclass rows) into out_dir, print the
    table; returns the two paths (the standalone benchmarks' output)."""
    os.makedirs(out_dir, exist_ok=True)
    md, js = (os.path.join(out_dir, f"{stem}.{ext}") for ext in ("md", "json"))
    with open(md, "w") as f:
        f.write(text)
    with open(js, "w") as f:
        json.dump({"meta": meta, "rows": [asdict(r) for r in rows]}, f, indent=1)
    print(text)
    print(f"wrote {md} and {js}")
    return md, js
