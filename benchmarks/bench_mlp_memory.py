"""Benchmark of `mlp_memory` (SPEC §8): triton vs the torch tier vs the vmap(grad) baseline.

    python benchmarks/bench_mlp_memory.py [--shapes small|all] [--chunk 16] [--modes fwd,fwdbwd]
        [--out-dir benchmarks/results] [--tag NAME] [--peak-tflops TF] [--peak-tbps TB] [--device cuda|cpu]

HOPE's M_memory configuration (residual, Dh = D, momentum, DGD, self-generated targets,
`read="current"`, chunk 64 — HOPE's C_mem — unless `--chunk`), on the shapes of SPEC §8 (bf16 q/k/v on a GPU; one
CPU shape in fp32 without one), forward (under no_grad) and forward+backward (gradient of
`(o·do).sum()` w.r.t. q, k, v, the gates and the initial weights). Tiers: `mlp_memory` with
backend `triton` (when registered; GPU only: on a CPU it is Triton's interpreter) and `torch`, the
`torch.func.vmap(grad)` implementation of `mlp_memory_vmap.py` (what popular Titans code does), and
`linear_memory(backend="triton")` on the same q, k, v for SPEC §8's "≤ 3× linear_memory" ratio.

Per row: ms (median, p20, p80; `triton.testing.do_bench` on a GPU, `time.perf_counter` on a CPU),
tokens/s, peak memory (GPU), the FLOPs of the chunked dual form's matrix products per token and
head, 22·D·Dh + 2·C·(3·D + 3·Dh) forward (Z, A W2, the target's two products, δ, the two
chunk-end updates, four reads through W and S, and the C×C masked products incl. DGD's K Kᵀ),
×3 for forward+backward (the usual GEMM convention: the backward is twice the forward), the
minimal bytes (q, k, v, o and gates once, the initial and final weights) and the roofline
fraction max(FLOPs / peak, bytes / bandwidth) / measured. Before a shape is timed, the triton
tier is checked against the torch tier on the same inputs at T = 128 (fp32: rms ratio ≤ 1e-4 for
o and every gradient); a tier that fails is not timed. A tier whose one call takes more than
`--max-call-s` or runs out of memory is reported as such. Writes mlp_memory-<tag>.md / .json.
"""
import argparse
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from linear_memory_bench import ROOT
from linear_memory_bench.report import machine_meta, write_tables
from linear_memory_bench.settings import SHAPES, SMALL_SHAPES, BenchShape, resolve_peaks
from linear_memory_bench.timing import time_row
from mlp_memory_vmap import mlp_memory_vmap_grad
from nested_kernels import MLPMemoryState, linear_memory, mlp_memory
from nested_kernels.mlp_memory import BACKENDS as MLP_BACKENDS

CPU_SHAPE = BenchShape(1, 128, 2, 32)
GATE_T, GATE_TOL = 128, 1e-4
MODES = ("fwd", "fwdbwd")


@dataclass
class Row:
    shape: str
    mode: str
    tier: str
    device: str
    tokens: int
    ms: Optional[List[float]] = None          # median, p20, p80
    tokens_per_s: Optional[float] = None
    peak_mib: Optional[float] = None
    flops: Optional[int] = None
    bytes: Optional[int] = None
    roofline: Optional[float] = None
    note: str = ""


def counts(s: BenchShape, chunk: int, mode: str, io_bytes: int) -> Tuple[int, int]:
    """(FLOPs, minimal bytes) of one call of the M_memory configuration (module docstring)."""
    D = Dh = s.D
    flops = s.B * s.T * s.H * (22 * D * Dh + 2 * chunk * (3 * D + 3 * Dh))
    nbytes = s.B * s.T * s.H * (4 * D * io_bytes + 3 * 4) + 2 * s.B * s.H * 4 * D * Dh * 4
    return (3 * flops if mode == "fwdbwd" else flops), (2 * nbytes if mode == "fwdbwd" else nbytes)


def make_inputs(s: BenchShape, device, dtype, seed=0) -> Dict[str, torch.Tensor]:
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g)
    B, T, H, D = s.B, s.T, s.H, s.D
    x = {"q": rand(B, T, H, D), "k": F.normalize(rand(B, T, H, D), dim=-1), "v": rand(B, T, H, D),
         "lr": 0.1 * torch.sigmoid(rand(B, T, H)), "retention": 0.9 + 0.1 * torch.sigmoid(rand(B, T, H)),
         "momentum": 0.9 * torch.sigmoid(rand(B, T, H)),
         "w1": rand(1, H, D, D) / D**0.5, "w2": rand(1, H, D, D) * 0.02, "do": rand(B, T, H, D)}
    for name in ("q", "k", "v", "do"):
        x[name] = x[name].to(dtype)
    return {n: t.to(device) for n, t in x.items()}


def tier_call(tier: str, x, chunk: int, mode: str) -> Tuple[Callable[[], object], List[torch.Tensor]]:
    """A zero-argument call of `tier` on inputs `x` and the leaves whose .grad it fills."""
    names = ("q", "k", "v", "lr", "retention", "momentum", "w1", "w2")
    leaves = [x[n].detach().clone().requires_grad_(mode == "fwdbwd") for n in names]

    def forward():
        q, k, v, lr, ret, mom, w1, w2 = leaves
        if tier == "vmap-grad":
            return mlp_memory_vmap_grad(q, k, v, lr, ret, mom, w1, w2, chunk_size=chunk, dgd=True, self_target=True)[0]
        if tier == "linear_memory-triton":
            return linear_memory(q, k, v, lr, ret, mom, dgd=True, chunk_size=64, backend="triton")[0]
        return mlp_memory(q, k, v, lr, ret, mom, initial_state=MLPMemoryState(w1, w2), dgd=True, self_target=True,
                          chunk_size=chunk, backend=tier)[0]

    if mode == "fwd":
        def fwd():
            with torch.no_grad():
                return forward()
        return fwd, []

    def fwd_bwd():
        (forward().float() * x["do"].float()).sum().backward()
        return [t.grad for t in leaves]
    return fwd_bwd, leaves


def gate_error(s: BenchShape, chunk: int, device) -> float:
    """Largest rms(triton − torch) / rms(torch) over o and every gradient, fp32 inputs, T = GATE_T."""
    x = make_inputs(BenchShape(min(s.B, 2), GATE_T, s.H, s.D), device, torch.float32, seed=1)
    results = []
    for tier in ("torch", "triton"):
        fwd, _ = tier_call(tier, x, chunk, "fwd")
        bwd, _ = tier_call(tier, x, chunk, "fwdbwd")
        results.append([fwd(), *bwd()])
    return max(((a.double() - b.double()).pow(2).mean().sqrt() / b.double().pow(2).mean().sqrt().clamp_min(1e-30)).item()
               for a, b in zip(results[1], results[0]))


CPU_TRITON = "not run: Triton on a CPU is its interpreter (a correctness tool); GPU benchmarks time it"


def triton_reason(device) -> Optional[str]:
    """Why `mlp_memory(backend="triton")` is not timed here, or None."""
    if device.type != "cuda":
        return CPU_TRITON
    try:
        MLP_BACKENDS.resolve("triton", {"device": device, "dtype": torch.bfloat16, "requires_grad": True,
                                        "chunk_size": 16})
    except NotImplementedError as e:
        return f"not run: {e}"
    return None


def run(shapes, modes, chunk: int, device, args) -> List[Row]:
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    rows = []
    for s in shapes:
        triton_note = triton_reason(device)
        if triton_note is None:
            err = gate_error(s, chunk, device)
            if err > GATE_TOL:
                triton_note = f"not reported: correctness gate failed ({err:.1e} > {GATE_TOL:g})"
        x = make_inputs(s, device, dtype)
        for mode in modes:
            for tier in ("triton", "torch", "vmap-grad", "linear_memory-triton"):
                flops, nbytes = counts(s, chunk, mode, 2 if cuda else 4)
                row = Row(s.name, mode, tier, device.type, s.B * s.T,
                          flops=None if tier == "linear_memory-triton" else flops,
                          bytes=None if tier == "linear_memory-triton" else nbytes)
                rows.append(row)
                if tier == "triton" and triton_note is not None:
                    row.note = triton_note
                    continue
                if tier == "linear_memory-triton" and not cuda:
                    row.note = CPU_TRITON
                    continue
                fn, leaves = tier_call(tier, x, chunk, mode)
                row.ms, row.peak_mib, row.note = time_row(fn, leaves, cuda=cuda, max_call_s=args.max_call_s)
                if row.ms is None:
                    continue
                row.tokens_per_s = row.tokens / (row.ms[0] * 1e-3)
                if cuda and row.flops:
                    bound = max(row.flops / (args.peak_tflops * 1e12), row.bytes / (args.peak_tbps * 1e12))
                    row.roofline = bound / (row.ms[0] * 1e-3)
                print(f"{s.name} {mode} {tier}: {row.ms[0]:.3f} ms", flush=True)
            torch.cuda.empty_cache() if cuda else None
    return rows


def ratios(rows: List[Row]) -> List[str]:
    """Speed ratios of the same run: torch / triton (SPEC §8: ≥ 10), triton / linear_memory (≤ 3)."""
    ms = {(r.shape, r.mode, r.tier): r.ms[0] for r in rows if r.ms}
    lines = []
    for shape, mode in dict.fromkeys((r.shape, r.mode) for r in rows):
        tri, tor = ms.get((shape, mode, "triton")), ms.get((shape, mode, "torch"))
        lin, vg = ms.get((shape, mode, "linear_memory-triton")), ms.get((shape, mode, "vmap-grad"))
        parts = [f"torch/triton {tor / tri:.2f}× (target ≥ 10)" if tri and tor else "torch/triton not measured",
                 f"triton/linear_memory {tri / lin:.2f}× (target ≤ 3)" if tri and lin else "triton/linear_memory not measured",
                 f"vmap-grad/torch {vg / tor:.2f}×" if vg and tor else "vmap-grad/torch not measured"]
        lines.append(f"* {shape} {mode}: " + "; ".join(parts))
    return lines


def to_markdown(rows: List[Row], meta: Dict[str, object]) -> str:
    lines = ["# mlp_memory benchmark (HOPE M_memory: residual, Dh = D, momentum, DGD, self-target, read current)", ""]
    lines += [f"* {k}: {v}" for k, v in meta.items()] + ["", "## Ratios (same run)", ""] + ratios(rows)
    lines += ["", "| shape | mode | tier | ms (p20–p80) | tokens/s | peak MiB | GFLOP | roofline | note |",
              "|---|---|---|---|---:|---:|---:|---:|---|"]
    for r in rows:
        ms = f"{r.ms[0]:.3f} ({r.ms[1]:.3f}–{r.ms[2]:.3f})" if r.ms else "—"
        lines.append(" | ".join([
            f"| {r.shape}", r.mode, r.tier, ms, f"{r.tokens_per_s:,.0f}" if r.tokens_per_s else "—",
            f"{r.peak_mib:,.0f}" if r.peak_mib is not None else "—", f"{r.flops / 1e9:.3g}" if r.flops else "—",
            f"{r.roofline:.1%}" if r.roofline is not None else "—", f"{r.note} |"]))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="small", choices=("small", "all"))
    p.add_argument("--modes", default="fwd,fwdbwd")
    p.add_argument("--chunk", type=int, default=64)
    p.add_argument("--out-dir", default=os.path.join(ROOT, "benchmarks", "results"))
    p.add_argument("--tag", default=None)
    p.add_argument("--peak-tflops", type=float, default=None, help="default: the card's datasheet (CARD_PEAKS)")
    p.add_argument("--peak-tbps", type=float, default=None, help="default: the card's datasheet (CARD_PEAKS)")
    p.add_argument("--max-call-s", type=float, default=5.0, help="skip a tier whose one call takes longer")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    args.peaks_source = resolve_peaks(args, torch.cuda.get_device_name(device) if device.type == "cuda" else None)
    modes = [m.replace("fwd+bwd", "fwdbwd") for m in args.modes.split(",")]
    if any(m not in MODES for m in modes):
        raise SystemExit(f"--modes: expected a subset of {MODES}, got {args.modes!r}")
    shapes = (SMALL_SHAPES if args.shapes == "small" else SHAPES) if device.type == "cuda" else (CPU_SHAPE,)
    rows = run(shapes, modes, args.chunk, device, args)
    meta = machine_meta(device.type == "cuda", args)
    meta.update(chunk_size=args.chunk, dtype="bf16 q/k/v, fp32 gates and state" if device.type == "cuda" else "fp32")
    if device.type != "cuda":
        meta["note"] = "no CUDA device: the GPU tiers are not measured; CPU timings compare the CPU tiers only"
    tag = args.tag or ("gpu" if device.type == "cuda" else "cpu")
    write_tables(args.out_dir, f"mlp_memory-{tag}", to_markdown(rows, meta), meta, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
