"""GPU benchmark of `mlp_memory` (SPEC §8): its triton backend against its torch tier and against
`linear_memory`'s triton backend on the same shapes.

    python benchmarks/bench_mlp_memory.py [--shapes all|small|NAME,...] [--modes fwd,fwdbwd] [--chunk 64]
        [--out-dir benchmarks/results] [--tag NAME] [--peak-tflops 800] [--device auto|cuda|cpu]

On a CUDA device, for each shape of fla's registry (B8-T2048-H16-D64, B4-T4096-H16-D128,
B2-T16384-H16-D128, B1-T65536-H8-D128; `--shapes small` keeps the first two), K = V = Dh = D,
bf16 q/k/v, fp32 gates and weights, HOPE's main-memory configuration (momentum, DGD, the
self-target, `read="current"`, SiLU, residual) and each mode (`fwd`: under no_grad; `fwdbwd`: the
forward on leaves that require grad, then the backward of `(o * do).sum()`), it times

* `mlp_memory` with `backend="triton"` and `backend="torch"`,
* `linear_memory` with `backend="triton"` (momentum and DGD on, K = V = D): SPEC §8 asks
  `mlp_memory` for at most 3× its time,

with `linear_memory_bench.timing.time_cuda` (do_bench medians, p20, p80; CUDA events for calls
over 0.5 s). Per row: ms, tokens/s, peak memory, the forward's matrix-product FLOPs
(`forward_flops`, an explicit count of the GEMMs of the chunk algorithm in
`triton_kernels/mlp_memory/README.md`) and their fraction of `--peak-tflops` (fwd rows only: the
backward is not a kernel yet). Before a shape is timed, a gate runs the triton backend at T = 256
against the torch tier in fp32 on the same bf16-rounded inputs (`rms(ref − out) / rms(ref)` ≤
5e-3 for `o` and the final state, ≤ 1e-2 for every gradient in `fwdbwd`); a failing gate leaves
the shape's triton rows "not reported: correctness gate failed".

Without a CUDA device every GPU row reads "not measured (no CUDA device)" and the torch tier runs
on the CPU at B=1 T=256 H=2 D=32 (fp32, `time.perf_counter`). Writes `<out-dir>/mlp_memory-<tag>.md`
and `.json` and prints the markdown; exit status 1 when a gate failed or a row raised.
"""
import argparse
import datetime
import json
import os
import sys
from dataclasses import asdict, dataclass
from typing import List, Optional

import torch
import torch.nn.functional as F

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
if BENCHMARKS not in sys.path:
    sys.path.append(BENCHMARKS)

from linear_memory_bench import settings  # noqa: E402  (also puts the checkout on sys.path)
from linear_memory_bench.report import machine_meta  # noqa: E402
from linear_memory_bench.settings import BenchShape, NO_CUDA  # noqa: E402
from linear_memory_bench.timing import time_cpu, time_cuda  # noqa: E402

from nested_kernels import LinearMemoryState, MLPMemoryState, linear_memory, mlp_memory  # noqa: E402

SHAPES = settings.SHAPES
CPU_SHAPE = BenchShape(1, 256, 2, 32)
GATE_T = 256
GATE_TOL_OUT, GATE_TOL_GRAD = 5e-3, 1e-2
GATE_FAILED = "not reported: correctness gate failed"
OPTIONS = dict(dgd=True, self_target=True, read="current", activation="silu", residual=True)
TIERS = (("mlp_memory", "triton"), ("mlp_memory", "torch"), ("linear_memory", "triton"))


@dataclass
class Row:
    op: str
    backend: str
    shape: str
    mode: str
    device: str
    status: str
    ms: Optional[float] = None
    ms_p20: Optional[float] = None
    ms_p80: Optional[float] = None
    tokens_per_s: Optional[float] = None
    peak_bytes: Optional[int] = None
    gemm_tflops: Optional[float] = None
    peak_fraction: Optional[float] = None


def forward_flops(shape: BenchShape, C: int) -> float:
    """Useful matrix-product FLOPs of the triton forward (momentum, DGD, self-target,
    read="current"), K = V = Dh = D, per chunk of C tokens and (sequence, head), summed over the
    call. Recurrence: 9 token × weight products of C·D·D multiply-adds (Z, Zv, K S1, F, R W2ᵀ, the
    W2 and S2 updates, the W1 and S1 updates) and 2 of C·C·D (the DGD right-hand side and its
    solve); reads: 4 of C·D·D (Q W1, Q S1, Aq W2, Aq S2) and 5 of C·C·D (Q Kᵀ, the G and E terms
    of Zq, Aq Aᵀ, the G term of O). Not counted: the gate algebra, K Kᵀ and the DGD inverse built
    before the kernels, and the read kernel's recomputation of Zq per value tile."""
    D = shape.D
    chunks = shape.B * shape.H * -(-shape.T // C)
    per_chunk = 2 * (13 * C * D * D + 7 * C * C * D)
    return float(chunks * per_chunk)


def _inputs(shape: BenchShape, device, dtype, requires_grad: bool, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    B, T, H, D = shape.B, shape.T, shape.H, shape.D
    randn = lambda *s: torch.randn(*s, generator=gen)
    q, k, v = randn(B, T, H, D), F.normalize(randn(B, T, H, D), dim=-1), randn(B, T, H, D)
    lr, ret, mom = 0.1 * torch.rand(B, T, H, generator=gen), 0.9 + 0.1 * torch.rand(B, T, H, generator=gen), \
        0.9 * torch.rand(B, T, H, generator=gen)
    w1, w2 = randn(1, H, D, D) / D**0.5, randn(1, H, D, D) / D**0.5
    s1, s2 = 0.01 * randn(B, H, D, D), 0.01 * randn(B, H, D, D)
    tensors = [x.to(device, dtype) for x in (q, k, v)] + [x.to(device) for x in (lr, ret, mom, w1, w2, s1, s2)]
    return [x.requires_grad_(requires_grad) for x in tensors]


def _call(op: str, backend: str, tensors, C: int):
    q, k, v, lr, ret, mom, w1, w2, s1, s2 = tensors
    if op == "linear_memory":
        state = LinearMemoryState(s1, s2)                                    # [B, H, D, D] fp32, as K = V = D
        return linear_memory(q, k, v, lr, ret, mom, dgd=True, chunk_size=C, initial_state=state,
                             output_final_state=True, backend=backend)
    return mlp_memory(q, k, v, lr, ret, mom, initial_state=MLPMemoryState(w1, w2, s1, s2), chunk_size=C,
                      output_final_state=True, backend=backend, **OPTIONS)


def make_callable(op: str, backend: str, shape: BenchShape, mode: str, C: int, device, dtype):
    """(zero-argument callable, leaves) of one row."""
    tensors = _inputs(shape, device, dtype, requires_grad=mode == "fwdbwd")
    if mode == "fwd":
        def fn():
            with torch.no_grad():
                return _call(op, backend, tensors, C)
        return fn, []
    do = torch.randn(shape.B, shape.T, shape.H, shape.D, generator=torch.Generator().manual_seed(1)).to(device, dtype)

    def fn():
        o, _ = _call(op, backend, tensors, C)
        (o * do).sum().backward()
    return fn, tensors if op == "mlp_memory" else tensors[:6] + tensors[8:]   # linear_memory has no w1, w2


def _ratio(ref: torch.Tensor, out: torch.Tensor) -> float:
    ref, out = ref.double(), out.double()
    return ((ref - out).pow(2).mean().sqrt() / ref.pow(2).mean().sqrt().clamp_min(1e-30)).item()


def gate(shape: BenchShape, C: int, with_grad: bool, device="cuda", T: int = GATE_T) -> Optional[str]:
    """None when the triton backend matches the torch tier at T tokens, else what failed."""
    small = BenchShape(shape.B, T, shape.H, shape.D)
    base = _inputs(small, device, torch.bfloat16, False)
    results = {}
    for backend, dtype in (("torch", torch.float32), ("triton", torch.bfloat16)):
        tensors = [x.detach().to(dtype if i < 3 else x.dtype).requires_grad_(with_grad) for i, x in enumerate(base)]
        o, final = _call("mlp_memory", backend, tensors, C)
        outs = [o, *final]
        grads = []
        if with_grad:
            gen = torch.Generator().manual_seed(2)
            loss = sum((x.float() * torch.randn(x.shape, generator=gen).to(x.device)).sum() for x in outs)
            grads = list(torch.autograd.grad(loss, tensors))
        results[backend] = (outs, grads)
    (ref_out, ref_grads), (out, grads) = results["torch"], results["triton"]
    bad = [f"out{i} {_ratio(r, o):.1e}" for i, (r, o) in enumerate(zip(ref_out, out)) if _ratio(r, o) > GATE_TOL_OUT]
    bad += [f"grad{i} {_ratio(r, g):.1e}" for i, (r, g) in enumerate(zip(ref_grads, grads)) if _ratio(r, g) > GATE_TOL_GRAD]
    return ", ".join(bad) or None


def run(shapes, modes, C: int, cuda: bool, peak_tflops: float, cpu_runs: int) -> List[Row]:
    rows: List[Row] = []
    for shape in shapes:
        gates = {}
        for mode in modes:
            if cuda and mode not in gates:
                gates[mode] = gate(shape, C, mode == "fwdbwd")
            for op, backend in TIERS:
                row = Row(op, backend, shape.name, mode, "cuda", NO_CUDA)
                rows.append(row)
                if not cuda:
                    continue
                if op == "mlp_memory" and backend == "triton" and gates[mode] is not None:
                    row.status = f"{GATE_FAILED} ({gates[mode]})"
                    continue
                try:
                    fn, leaves = make_callable(op, backend, shape, mode, C, "cuda", torch.bfloat16)
                    ms, _, peak, skip = time_cuda(fn, leaves, warmup_ms=25, rep_ms=100, max_call_s=30.0)
                except torch.cuda.OutOfMemoryError:
                    row.status = "OOM"
                    torch.cuda.empty_cache()
                    continue
                except Exception as e:                                        # a crashing tier is a failed row
                    row.status = f"error: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                    continue
                if skip is not None:
                    row.status = skip
                    continue
                row.status, (row.ms, row.ms_p20, row.ms_p80), row.peak_bytes = "ok", ms, peak
                row.tokens_per_s = shape.tokens / (ms[0] * 1e-3)
                if op == "mlp_memory" and mode == "fwd":
                    row.gemm_tflops = forward_flops(shape, C) / (ms[0] * 1e-3) / 1e12
                    row.peak_fraction = row.gemm_tflops / peak_tflops
    for mode in modes:                                                        # the torch tier on the CPU
        fn, leaves = make_callable("mlp_memory", "torch", CPU_SHAPE, mode, C, "cpu", torch.float32)
        ms = time_cpu(fn, leaves, min_runs=cpu_runs, budget_s=0.0, max_row_s=30.0)
        rows.append(Row("mlp_memory", "torch", CPU_SHAPE.name, mode, "cpu", "ok", *ms,
                        tokens_per_s=CPU_SHAPE.tokens / (ms[0] * 1e-3)))
    return rows


def to_markdown(rows: List[Row], meta: dict) -> str:
    fmt = lambda x, spec: "—" if x is None else format(x, spec)
    lines = [f"# mlp_memory benchmark ({meta['tag']})", "",
             f"GPU: {meta['gpu'] or 'none'}; torch {meta['torch']}; triton {meta['triton']}; chunk {meta['chunk_size']}; "
             f"K = V = Dh = D; momentum, DGD, self-target, read=current.", "",
             "| op | backend | shape | mode | device | ms (p20–p80) | tokens/s | peak MiB | GEMM TFLOP/s (of peak) | status |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ms = "—" if r.ms is None else f"{r.ms:.3f} ({r.ms_p20:.3f}–{r.ms_p80:.3f})"
        peak = fmt(None if r.peak_bytes is None else r.peak_bytes / 2**20, ".0f")
        flops = "—" if r.gemm_tflops is None else f"{r.gemm_tflops:.1f} ({r.peak_fraction:.0%})"
        lines.append(f"| {r.op} | {r.backend} | {r.shape} | {r.mode} | {r.device} | {ms} | "
                     f"{fmt(r.tokens_per_s, '.3g')} | {peak} | {flops} | {r.status} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", default="all", help="all | small | comma-separated names")
    p.add_argument("--modes", default="fwd,fwdbwd")
    p.add_argument("--chunk", type=int, default=64, choices=(8, 16, 32, 64))
    p.add_argument("--device", default="auto", choices=("auto", "cuda", "cpu"))
    p.add_argument("--peak-tflops", type=float, default=settings.PEAK_TFLOPS)
    p.add_argument("--cpu-runs", type=int, default=3)
    p.add_argument("--out-dir", default=os.path.join(BENCHMARKS, "results"))
    p.add_argument("--tag", default=datetime.date.today().isoformat())
    args = p.parse_args(argv)
    shapes = {"all": SHAPES, "small": SHAPES[:2]}.get(args.shapes)
    if shapes is None:
        names = args.shapes.split(",")
        shapes = [s for s in SHAPES if s.name in names]
        if len(shapes) != len(names):
            p.error(f"--shapes: expected all, small or names among {[s.name for s in SHAPES]}, got {args.shapes}")
    modes = [{"fwd+bwd": "fwdbwd"}.get(m, m) for m in args.modes.split(",")]
    if any(m not in ("fwd", "fwdbwd") for m in modes):
        p.error(f"--modes: expected fwd and/or fwdbwd, got {args.modes}")
    cuda = args.device != "cpu" and torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        p.error("--device cuda: no CUDA device")
    rows = run(shapes, modes, args.chunk, cuda, args.peak_tflops, args.cpu_runs)
    facts = argparse.Namespace(peak_tflops=args.peak_tflops, peak_tbps=settings.PEAK_TBPS)
    meta = {**machine_meta(cuda, facts), "tag": args.tag, "chunk_size": args.chunk}
    md = to_markdown(rows, meta)
    os.makedirs(args.out_dir, exist_ok=True)
    stem = os.path.join(args.out_dir, f"mlp_memory-{args.tag}")
    with open(stem + ".md", "w") as f:
        f.write(md)
    with open(stem + ".json", "w") as f:
        json.dump({"meta": meta, "rows": [asdict(r) for r in rows]}, f, indent=1, default=str)
    print(md)
    failed = [r for r in rows if r.status.startswith(GATE_FAILED) or r.status.startswith("error")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
