"""GPU benchmark of `cms_level` (SPEC §4, §8): the triton tier against the torch tier.

    python benchmarks/bench_cms.py [--shapes all|small|NAME,...] [--periods 16,256,4096] [--modes fwd,fwdbwd]
        [--out-dir benchmarks/results] [--tag NAME] [--peak-tflops 400] [--peak-tbps 3.0] [--budget-s S]

Shapes: SPEC §8's (B, T) with d_model = H·D of fla's registry and the hidden width of SPEC §6's
CMS levels, Dh = 4·d: B8-T2048-D1024-Dh4096, B4-T4096-D2048-Dh8192, B2-T16384-D2048-Dh8192,
B1-T65536-D1024-Dh4096 (`--shapes small` keeps the first two). Each shape runs at the periods of
SPEC §6's three levels (16, 256, 4096; a period ≥ T is a plain MLP plus one step). bf16 x and
target, shared fp32 weights (the meta-learned start, as in training), lr `[B, T]` fp32,
retention 0.99, SiLU. Modes: `fwd` (under no_grad, the final state returned) and `fwdbwd` (the
forward on leaves that require grad, then the backward of `(y · dy).sum()`).

Timing, peak memory, tokens/s and the roofline fraction as in `bench_linear_memory.py` (its
`linear_memory_bench` modules: do_bench median with p20/p80, CUDA events ×3 for calls over
0.5 s, `torch.cuda.max_memory_allocated` over one call). FLOPs and minimal bytes
(`cms_flops`, `cms_bytes` below):

* FLOPs: the forward's five products per chunk (Z = X W1, Y = φ(Z) W2, P = (lr E) W2ᵀ and the two
  steps Xᵀ P, φ(Z)ᵀ (lr E)) are 10·B·T·D·Dh; the backward's eleven add 22·B·T·D·Dh. A period
  of at least T in `fwd` still steps once (the final state is returned).
* bytes: each chunk reads the chunk-start weights and writes the next ones (fp32,
  4 × 4·D·Dh bytes per chunk and sequence); the backward reads the stored weights and reads
  and writes their adjoints (6 × 4·D·Dh); activations x, target, y (+ dy, dx, dtarget) once in
  bf16. The peak is tf32's (the products of 16-bit inputs run on tf32; `--peak-tflops`, default
  400 = half the measured bf16 800 TFLOP/s of BACKGROUND.md §5, an estimate).

Before a shape is timed, the triton tier runs at T = 256 on the same bf16 inputs against the
torch tier in fp32: y ≤ 5e-3, every gradient ≤ 1e-2 (SPEC §7); a failing tier is not timed.
Without a CUDA device every GPU row reads "not measured (no CUDA device)" (FLOPs and bytes are
still given) and the torch tier runs at B1-T512-D64-Dh256 period 16 in fp32 on the CPU.

Writes `<out-dir>/cms-<tag>.md` and `.json` (rewritten after every shape) and prints the markdown.
Exit status 1 if a correctness gate failed or a row raised an unexpected error.
"""
import argparse
import datetime
import json
import os
import re
import sys
import time
from dataclasses import asdict, dataclass
from typing import Dict, List, Optional, Sequence, Tuple

import torch

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
if BENCHMARKS not in sys.path:
    sys.path.append(BENCHMARKS)

from linear_memory_bench import ROOT  # noqa: E402
from linear_memory_bench.gate import rms_ratio  # noqa: E402
from linear_memory_bench.report import _fmt, _git_commit, _si  # noqa: E402
from linear_memory_bench.rows import Row, Run, _finish  # noqa: E402
from linear_memory_bench.settings import (  # noqa: E402
    GATE_FAILED, GATE_T, GATE_TOL_GRAD, GATE_TOL_OUT, MODE_LABEL, MODES, NO_CUDA, OUT_OF_BUDGET, PEAK_TBPS, _mode)
from linear_memory_bench.gpu_run import _time_row  # noqa: E402
from linear_memory_bench.timing import _first_line, _release, time_cpu  # noqa: E402

from nested_kernels.cms import cms_level  # noqa: E402

PEAK_TFLOPS_TF32 = 400.0
PERIODS = (16, 256, 4096)
TIERS = ("triton", "torch")


@dataclass(frozen=True)
class CMSShape:
    B: int
    T: int
    D: int
    Dh: int

    @property
    def name(self) -> str:
        return f"B{self.B}-T{self.T}-D{self.D}-Dh{self.Dh}"

    @property
    def tokens(self) -> int:
        return self.B * self.T


SHAPES = (CMSShape(8, 2048, 1024, 4096), CMSShape(4, 4096, 2048, 8192), CMSShape(2, 16384, 2048, 8192),
          CMSShape(1, 65536, 1024, 4096))
SMALL_SHAPES = SHAPES[:2]
CPU_SHAPE, CPU_PERIOD = CMSShape(1, 512, 64, 256), 16


def cms_flops(s: CMSShape, mode: str) -> int:
    return (10 if _mode(mode) == "fwd" else 32) * s.B * s.T * s.D * s.Dh


def cms_bytes(s: CMSShape, period: int, mode: str) -> int:
    chunks = -(-s.T // period)
    weights = (4 if _mode(mode) == "fwd" else 10) * 4 * s.D * s.Dh * chunks * s.B
    activations = (3 if _mode(mode) == "fwd" else 6) * 2 * s.B * s.T * s.D
    return weights + activations + 4 * s.B * s.T                          # + lr (fp32)


def make_inputs(s: CMSShape, *, device, dtype, seed: int = 0) -> Dict[str, torch.Tensor]:
    gen = torch.Generator(device=device).manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=gen, device=device)
    return {
        "x": randn(s.B, s.T, s.D).to(dtype),
        "w1": randn(s.D, s.Dh) * s.D ** -0.5,
        "w2": randn(s.Dh, s.D) * s.Dh ** -0.5 * 0.1,
        "lr": 0.01 * torch.rand(s.B, s.T, generator=gen, device=device),
        "target": randn(s.B, s.T, s.D).to(dtype),
        "dy": randn(s.B, s.T, s.D).to(dtype),
    }


def cms_callable(x: Dict[str, torch.Tensor], backend: str, period: int, mode: str):
    """(the timed call, the leaves whose .grad is reset between calls)."""
    kw = dict(period=period, retention=0.99, activation="silu", output_final_state=True, backend=backend)
    if _mode(mode) == "fwd":
        def fwd():
            with torch.no_grad():
                return cms_level(x["x"], x["w1"], x["w2"], lr=x["lr"], target=x["target"], **kw)[0]
        return fwd, []
    leaves = [x[n].detach().clone().requires_grad_() for n in ("x", "w1", "w2", "lr", "target")]

    def fwd_bwd():
        y, _ = cms_level(leaves[0], leaves[1], leaves[2], lr=leaves[3], target=leaves[4], **kw)
        (y * x["dy"]).sum().backward()
    return fwd_bwd, leaves


def correctness_gate(s: CMSShape, period: int, modes: Sequence[str], device) -> Dict[str, object]:
    """The triton tier at T = GATE_T on bf16 inputs against the torch tier in fp32 on the same values."""
    small = CMSShape(s.B, min(GATE_T, s.T), s.D, s.Dh)
    x = make_inputs(small, device=device, dtype=torch.bfloat16, seed=1)
    x32 = {n: t.float() for n, t in x.items()}
    result = {"shape": s.name, "gate_shape": small.name, "period": period, "backend": "triton", "ratios": {},
              "passed": {}, "error": None}

    def outputs(inputs, backend, grads):
        kw = dict(period=period, retention=0.99, activation="silu", output_final_state=True, backend=backend)
        names = ("x", "w1", "w2", "lr", "target")
        leaves = [inputs[n].detach().clone().requires_grad_(grads) for n in names]
        with torch.set_grad_enabled(grads):
            y, state = cms_level(leaves[0], leaves[1], leaves[2], lr=leaves[3], target=leaves[4], **kw)
        out = {"y": y.detach(), "final w1": state.w1.detach(), "final w2": state.w2.detach()}
        if grads:
            gs = torch.autograd.grad((y * inputs["dy"].to(y.dtype)).sum(), leaves)
            out.update({f"d{n}": g for n, g in zip(names, gs)})
        return out
    try:
        for mode in modes:
            grads = _mode(mode) == "fwdbwd"
            ref, out = outputs(x32, "torch", grads), outputs(x, "triton", grads)
            ratios = {n: rms_ratio(ref[n], out[n]) for n in ref}
            result["ratios"][mode] = ratios
            result["passed"][mode] = all(r <= (GATE_TOL_GRAD if n.startswith("d") else GATE_TOL_OUT)
                                         for n, r in ratios.items())
    except Exception as e:  # noqa: BLE001 (a crash fails the gate; the run goes on)
        result["error"] = f"{type(e).__name__}: {_first_line(e)}"
        result["passed"] = {mode: False for mode in modes}
    finally:
        del x, x32
        _release()
    return result


def _row(s: CMSShape, period: int, mode: str, backend: str, device: str) -> Row:
    return Row(s.name, f"P{period}", mode, backend, device, s.tokens, flops=cms_flops(s, mode),
               bytes=cms_bytes(s, period, mode))


def run_gpu(run: Run, shapes, periods, modes, args, write) -> None:
    device = torch.device("cuda")
    start = time.perf_counter()
    over_budget = lambda: args.budget_s is not None and time.perf_counter() - start > args.budget_s
    for s in shapes:
        for period in periods:
            log = lambda msg: print(f"[{time.perf_counter() - start:7.1f} s] {s.name} P{period} {msg}",
                                    file=sys.stderr, flush=True)
            gate_ok = {}
            if not over_budget():
                log("correctness gate")
                g = correctness_gate(s, period, modes, device)
                run.gates.append(g)
                gate_ok = {m: bool(g["passed"].get(m)) for m in modes}
            x, no_inputs = None, None
            try:
                x = None if over_budget() else make_inputs(s, device=device, dtype=torch.bfloat16)
            except torch.cuda.OutOfMemoryError:
                no_inputs = "OOM (inputs)"
            for mode in modes:
                for backend in TIERS:
                    row = _row(s, period, mode, backend, "cuda")
                    run.rows.append(row)
                    if over_budget() or x is None:
                        row.status = OUT_OF_BUDGET if no_inputs is None else no_inputs
                        continue
                    if backend == "triton" and not gate_ok.get(mode, False):
                        row.status = GATE_FAILED
                        continue
                    log(f"{MODE_LABEL[mode]} {backend}")
                    max_s = args.torch_max_call_s if backend == "torch" else 60.0
                    _time_row(row, lambda: cms_callable(x, backend, period, mode), args, max_call_s=max_s)
            x = None
            _release()
            write()


def run_cpu(run: Run, shapes, periods, modes, args) -> None:
    x = make_inputs(CPU_SHAPE, device="cpu", dtype=torch.float32)
    for mode in modes:
        row = _row(CPU_SHAPE, CPU_PERIOD, mode, "torch", "cpu")
        run.rows.append(row)
        try:
            fn, leaves = cms_callable(x, "torch", CPU_PERIOD, mode)
            _finish(row, time_cpu(fn, leaves, min_runs=args.cpu_min_runs, budget_s=args.cpu_budget_s,
                                  max_row_s=args.cpu_max_row_s), "perf_counter", None, args)
        except Exception as e:  # noqa: BLE001
            row.status = f"error: {type(e).__name__}: {_first_line(e)}"
    for s in shapes:
        for period in periods:
            for mode in modes:
                for backend in TIERS:
                    row = _row(s, period, mode, backend, "cuda")
                    row.status = NO_CUDA
                    run.rows.append(row)


def ratios(rows: Sequence[Row]) -> List[Dict[str, object]]:
    out = []
    for r in rows:
        if r.backend != "triton" or r.device != "cuda" or r.status == NO_CUDA:
            continue
        other = next((o for o in rows if (o.shape, o.variant, o.mode, o.backend) == (r.shape, r.variant, r.mode,
                                                                                       "torch")), None)
        speedup = other.ms / r.ms if r.timed and other is not None and other.timed else None
        out.append({"shape": r.shape, "period": r.variant, "mode": r.mode, "torch_over_triton": speedup,
                    "roofline": r.roofline})
    return out


def to_markdown(run: Run) -> str:
    m = run.meta
    lines = [
        "# cms_level benchmark",
        "",
        f"* GPU: {m['gpu'] or NO_CUDA}" + (f" (CUDA runtime {m['cuda_runtime']})" if m["gpu"] else ""),
        f"* torch {m['torch']}, triton {m['triton'] or 'not installed'}, python {m['python']}",
        f"* date {m['date']}, git {m['git'] or 'unknown'}",
        f"* inputs: {m['dtype']}; shared fp32 weights, lr [B, T], retention 0.99, SiLU; modes: fwd (no_grad, "
        "final state), fwd+bwd (forward + backward of (y·dy).sum())",
        f"* roofline peaks: {m['peak_tflops']:g} TFLOP/s (tf32), {m['peak_tbps']:g} TB/s; roofline = "
        "max(FLOPs / peak, bytes / bandwidth) / measured (formulas in benchmarks/bench_cms.py)",
    ]
    if not m["gpu"]:
        lines.append(f"* no CUDA device: every GPU row is {NO_CUDA}; the torch tier ran at {CPU_SHAPE.name} "
                     f"P{CPU_PERIOD} in fp32 on the CPU (for sanity, not for SPEC §8)")
    if not run.complete:
        lines.append("* **partial**: the run had not finished when this file was written")
    lines += ["", "| shape | period | mode | backend | status | ms | p20 | p80 | tokens/s | peak MiB | FLOPs | bytes "
                  "| roofline |", "|---|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in run.rows:
        roof = "—" if r.roofline is None else f"{100 * r.roofline:.1f}%"
        lines.append(f"| {r.shape} | {r.variant} | {MODE_LABEL[r.mode]} | {r.backend}{' (cpu)' if r.device == 'cpu' else ''}"
                     f" | {r.status} | {_fmt(r.ms, '.3f')} | {_fmt(r.p20, '.3f')} | {_fmt(r.p80, '.3f')} "
                     f"| {_si(r.tokens_per_s)} | {_fmt(r.peak_mib, '.0f')} | {_si(r.flops)} | {_si(r.bytes, 'B')} "
                     f"| {roof} |")
    rs = [e for e in ratios(run.rows) if e["torch_over_triton"] is not None]
    if rs:
        lines += ["", "## torch time / triton time (same run)", "", "| shape | period | mode | torch / triton |",
                  "|---|---|---|---:|"]
        lines += [f"| {e['shape']} | {e['period']} | {MODE_LABEL[e['mode']]} | {e['torch_over_triton']:.2f} |"
                  for e in rs]
    if run.gates:
        lines += ["", f"## Correctness gate (T = {GATE_T}, bf16 against the torch tier in fp32; y ≤ {GATE_TOL_OUT:g}, "
                      f"gradients ≤ {GATE_TOL_GRAD:g})", "", "| shape | period | mode | passed | worst ratio | error |",
                  "|---|---|---|---|---:|---|"]
        for g in run.gates:
            for mode, passed in g["passed"].items():
                worst = max(g["ratios"].get(mode, {}).items(), key=lambda kv: kv[1], default=None)
                worst_s = "—" if worst is None else f"{worst[1]:.2e} ({worst[0]})"
                lines.append(f"| {g['shape']} | P{g['period']} | {MODE_LABEL[mode]} | {'yes' if passed else 'NO'} "
                             f"| {worst_s} | {g['error'] or ''} |")
    return "\n".join(lines) + "\n"


def write_outputs(run: Run, out_dir: str, tag: str) -> Tuple[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    md_path, json_path = (os.path.join(out_dir, f"cms-{tag}.{ext}") for ext in ("md", "json"))
    data = {"meta": run.meta, "complete": run.complete, "rows": [asdict(r) for r in run.rows],
            "ratios": ratios(run.rows), "gates": run.gates}
    for path, text in ((md_path, to_markdown(run)), (json_path, json.dumps(data, indent=1, default=str))):
        with open(path + ".tmp", "w") as f:
            f.write(text)
        os.replace(path + ".tmp", path)
    return md_path, json_path


def _parse_list(kind, known=None):
    def parse(text):
        if known is not None and text in known:
            return list(known[text])
        try:
            values = [kind(v.strip()) for v in text.split(",") if v.strip()]
        except (ValueError, KeyError) as e:
            raise argparse.ArgumentTypeError(str(e))
        if not values:
            raise argparse.ArgumentTypeError("empty list")
        return values
    return parse


def build_parser() -> argparse.ArgumentParser:
    by_name = {s.name: s for s in SHAPES}
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", type=_parse_list(lambda n: by_name[n], {"all": SHAPES, "small": SMALL_SHAPES}),
                   default=list(SHAPES), help=f"all (default), small or names from {sorted(by_name)}")
    p.add_argument("--periods", type=_parse_list(int), default=list(PERIODS), help="default 16,256,4096")
    p.add_argument("--modes", type=_parse_list(_mode), default=list(MODES), help="fwd,fwdbwd (default both)")
    p.add_argument("--out-dir", default=os.path.join(ROOT, "benchmarks", "results"))
    p.add_argument("--tag", help="file name tag (default: <device>-<date>)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    p.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS_TF32)
    p.add_argument("--peak-tbps", type=float, default=PEAK_TBPS)
    p.add_argument("--warmup-ms", type=float, default=25.0)
    p.add_argument("--rep-ms", type=float, default=100.0)
    p.add_argument("--torch-max-call-s", type=float, default=10.0)
    p.add_argument("--budget-s", type=float, default=None, help="start no new row after this many seconds")
    p.add_argument("--cpu-min-runs", type=int, default=5)
    p.add_argument("--cpu-budget-s", type=float, default=0.5)
    p.add_argument("--cpu-max-row-s", type=float, default=3.0)
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    cuda = args.device != "cpu" and torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        print("--device cuda: no CUDA device here", file=sys.stderr)
        return 2
    device_name = re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-") if cuda else "cpu"
    tag = args.tag or f"{device_name}-{datetime.date.today().isoformat()}"
    try:
        import triton
        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    import platform
    run = Run({"gpu": torch.cuda.get_device_name(0) if cuda else None, "cuda_runtime": torch.version.cuda,
               "python": platform.python_version(), "torch": torch.__version__, "triton": triton_version,
               "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
               "git": _git_commit(), "peak_tflops": args.peak_tflops, "peak_tbps": args.peak_tbps,
               "dtype": "bf16 x/target" if cuda else "fp32 (CPU)"})
    write = lambda: write_outputs(run, args.out_dir, tag)
    if cuda:
        run_gpu(run, args.shapes, args.periods, args.modes, args, write)
    else:
        run_cpu(run, args.shapes, args.periods, args.modes, args)
    run.complete = True
    md_path, json_path = write()
    print(to_markdown(run))
    print(f"wrote {md_path} and {json_path}", file=sys.stderr)
    errors = [r for r in run.rows if r.status.startswith("error")]
    failed = [g for g in run.gates if not all(g["passed"].values())]
    for r in errors:
        print(f"error: {r.shape} {r.variant} {r.mode} {r.backend}: {r.status}", file=sys.stderr)
    for g in failed:
        print(f"correctness gate failed: {g['shape']} P{g['period']}: {g['error'] or g['ratios']}", file=sys.stderr)
    return 1 if errors or failed else 0


if __name__ == "__main__":
    sys.exit(main())
