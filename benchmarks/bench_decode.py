"""Decode benchmark (issue 5, SPEC §8 "Decode"): one new token per call for a batch of sequences.

    python benchmarks/bench_decode.py [--batches 1,8,64,256] [--out-dir benchmarks/results] [--tag NAME]
        [--peak-tbps 3.35] [--device cuda|cpu]

For `linear_memory_step` (H16, K = V = 64, momentum, dgd off, chunk 64) and `mlp_memory_step`
(H16, K = V = Dh = 64, momentum, dgd, self-target, chunk 16), each batch size, and each tier
that can run the call here (`torch`, `cpp` on a CPU, `cuda` on a GPU), one call feeds T = 1
token of every sequence and updates the fp32 state in place, as autoregressive decoding does.
On a GPU the peer is fla's `fused_recurrent_gated_delta_rule` (T = 1, its state passed on;
retention-free delta rule, not the same maths: a speed reference only) when fla is installed.
Inputs are fp32; the state dominates the traffic.

Per row: latency per call in µs (median, p20, p80; `triton.testing.do_bench` on a GPU,
`time.perf_counter` on a CPU), tokens/s (batch / median), the minimal state bytes one call must
move (read and write of every state tensor: linear 5·N·H·K·V·4 — M, S, M^c read, M, S written;
MLP 10·N·H·D·Dh·4 — W1, W2, S1, S2, W1^c, W2^c read, four written; fla 2·N·H·K·V·4) and that
traffic's fraction of `--peak-tbps` (GPU rows only). Before timing, each tier's outputs over 20 tokens are
compared with the torch tier from the same state (max |Δ| / max |ref| ≤ 1e-4), and a tier that
fails is reported, not timed. Without a CUDA device the GPU rows read "not measured (no CUDA
device)". Writes decode-<tag>.md and decode-<tag>.json.
"""
import argparse
import os
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F

from linear_memory_bench import ROOT
from linear_memory_bench.report import machine_meta, write_tables
from linear_memory_bench.timing import time_row
from nested_kernels import (
    LinearMemoryDecodeState, MLPMemoryDecodeState, MLPMemoryState, linear_memory_step, mlp_memory_step,
)
from nested_kernels.linear_memory.decode import STEP_BACKENDS as LINEAR_STEP_BACKENDS
from nested_kernels.mlp_memory.decode import STEP_BACKENDS as MLP_STEP_BACKENDS

H, D = 16, 64
LINEAR_CHUNK, MLP_CHUNK = 64, 16
GATE_TOKENS, GATE_TOL = 20, 1e-4


@dataclass
class Row:
    op: str
    backend: str
    batch: int
    device: str
    us: Optional[List[float]] = None          # median, p20, p80
    tokens_per_s: Optional[float] = None
    state_bytes: int = 0
    bandwidth_fraction: Optional[float] = None
    gate_error: Optional[float] = None
    note: str = ""
    extra: Dict[str, object] = field(default_factory=dict)


def _token_inputs(N: int, device, seed: int):
    g = torch.Generator(device="cpu").manual_seed(seed)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device)
    q, k, v = rand(N, 1, H, D), F.normalize(rand(N, 1, H, D), dim=-1), rand(N, 1, H, D)
    lr = 0.1 * torch.sigmoid(rand(N, 1, H))
    retention = 0.9 + 0.1 * torch.sigmoid(rand(N, 1, H))
    momentum = 0.9 * torch.sigmoid(rand(N, 1, H))
    return q, k, v, lr, retention, momentum


def linear_case(N: int, device):
    """(make a fresh decode state, one call on it) of `linear_memory_step`."""
    def fresh():
        return LinearMemoryDecodeState.zeros(N, H, D, D, chunk_size=LINEAR_CHUNK, momentum=True, device=device)

    def call(state, backend, seed=0):
        return linear_memory_step(*_token_inputs(N, device, seed), state, backend=backend)
    return fresh, call, 5 * N * H * D * D * 4


def mlp_case(N: int, device):
    """(make a fresh decode state, one call on it) of `mlp_memory_step` (HOPE's M_memory options)."""
    g = torch.Generator(device="cpu").manual_seed(1)
    w = MLPMemoryState((torch.randn(1, H, D, D, generator=g) / D**0.5).to(device),
                       (torch.randn(1, H, D, D, generator=g) * 0.02).to(device))

    def fresh():
        return MLPMemoryDecodeState.from_state(w, MLP_CHUNK, batch_size=N, momentum=True)

    def call(state, backend, seed=0):
        return mlp_memory_step(*_token_inputs(N, device, seed), state, dgd=True, self_target=True, backend=backend)
    return fresh, call, 10 * N * H * D * D * 4


def fla_case(N: int, device):
    """fla's fused recurrent gated delta rule, T = 1, the state passed from call to call."""
    from fla.ops.gated_delta_rule import fused_recurrent_gated_delta_rule
    q, k, v, lr, retention, _ = _token_inputs(N, device, 0)
    box = {"state": torch.zeros(N, H, D, D, device=device)}

    def one():
        _, box["state"] = fused_recurrent_gated_delta_rule(q, k, v, torch.log(retention), lr, scale=1.0,
                                                           initial_state=box["state"], output_final_state=True)
    return one, 2 * N * H * D * D * 4


def gate_error(fresh, call, backend: str) -> float:
    """max |Δ| / max |ref| of `backend`'s outputs over GATE_TOKENS tokens against the torch tier."""
    ref_state, state = fresh(), fresh()
    err, scale = 0.0, 0.0
    for t in range(GATE_TOKENS):
        ref, out = call(ref_state, "torch", seed=t), call(state, backend, seed=t)
        err, scale = max(err, (out - ref).abs().max().item()), max(scale, ref.abs().max().item())
    return err / max(scale, 1e-30)


def time_call(fn: Callable[[], object], cuda: bool) -> Tuple[Optional[List[float]], str]:
    """(µs quantiles (0.5, 0.2, 0.8) or None, why not timed) of one call."""
    ms, _, note = time_row(fn, [], cuda=cuda, max_call_s=5.0, cpu_min_runs=20, cpu_budget_s=1.0)
    return (None, note) if ms is None else ([m * 1e3 for m in ms], "")


def run(batches: List[int], device: torch.device, peak_tbps: float) -> List[Row]:
    cuda = device.type == "cuda"
    rows = []
    for op, case, registry in (("linear_memory_step", linear_case, LINEAR_STEP_BACKENDS),
                               ("mlp_memory_step", mlp_case, MLP_STEP_BACKENDS)):
        for N in batches:
            fresh, call, nbytes = case(N, device)
            for backend in ("torch", "cpp", "cuda"):
                row = Row(op, backend, N, device.type, state_bytes=nbytes)
                rows.append(row)
                if backend == "cuda" and not cuda:
                    row.note = "not measured (no CUDA device)"
                    continue
                try:
                    registry.resolve(backend, {"device": device, "dtype": torch.float32,
                                               "chunk_size": fresh().chunk_size, "requires_grad": False})
                except NotImplementedError as e:
                    row.note = f"not run: {e}"
                    continue
                with torch.no_grad():
                    row.gate_error = 0.0 if backend == "torch" else gate_error(fresh, call, backend)
                    if row.gate_error > GATE_TOL:
                        row.note = f"not timed: correctness gate failed ({row.gate_error:.2e} > {GATE_TOL:g})"
                        continue
                    state = fresh()
                    row.us, row.note = time_call(lambda: call(state, backend), cuda)
                if row.us is None:
                    continue
                row.tokens_per_s = N / (row.us[0] * 1e-6)
                if cuda:
                    row.bandwidth_fraction = nbytes / (row.us[0] * 1e-6) / (peak_tbps * 1e12)
            if op == "linear_memory_step":
                row = Row(op, "fla fused_recurrent_gated_delta_rule", N, device.type, state_bytes=2 * N * H * D * D * 4)
                rows.append(row)
                if not cuda:
                    row.note = "not measured (no CUDA device)"
                    continue
                try:
                    fn, nbytes = fla_case(N, device)
                    with torch.no_grad():
                        row.us, row.note = time_call(fn, cuda)
                except ImportError:
                    row.note = "fla not installed"
                    continue
                except Exception as e:  # noqa: BLE001 (a peer that fails is reported, not fatal)
                    row.note = f"fla failed: {type(e).__name__}: {str(e).splitlines()[0][:160] if str(e) else ''}"
                    continue
                if row.us is None:
                    continue
                row.tokens_per_s = N / (row.us[0] * 1e-6)
                row.bandwidth_fraction = nbytes / (row.us[0] * 1e-6) / (peak_tbps * 1e12)
    return rows


def to_markdown(rows: List[Row], meta: Dict[str, object]) -> str:
    lines = ["# Decode benchmark (T = 1 per call)", ""]
    lines += [f"* {k}: {v}" for k, v in meta.items()]
    lines += ["", "| op | backend | batch | µs/call (p20–p80) | tokens/s | state bytes | of peak BW | gate | note |",
              "|---|---|---:|---|---:|---:|---:|---:|---|"]
    for r in rows:
        us = f"{r.us[0]:.1f} ({r.us[1]:.1f}–{r.us[2]:.1f})" if r.us else "—"
        tps = f"{r.tokens_per_s:,.0f}" if r.tokens_per_s else "—"
        bw = f"{r.bandwidth_fraction:.1%}" if r.bandwidth_fraction is not None else "—"
        gate = f"{r.gate_error:.1e}" if r.gate_error is not None else "—"
        lines.append(f"| {r.op} | {r.backend} | {r.batch} | {us} | {tps} | {r.state_bytes:,} | {bw} | {gate} | {r.note} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batches", default="1,8,64,256")
    p.add_argument("--out-dir", default=os.path.join(ROOT, "benchmarks", "results"))
    p.add_argument("--tag", default=None)
    p.add_argument("--peak-tbps", type=float, default=3.35, help="memory bandwidth of the card (H100 SXM: 3.35)")
    p.add_argument("--peak-tflops", type=float, default=989.0, help="recorded in the report only")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    rows = run([int(b) for b in args.batches.split(",")], device, args.peak_tbps)
    meta = machine_meta(device.type == "cuda", args)
    meta.pop("chunk_size", None)
    meta["dtype"] = "fp32 inputs and state"
    tag = args.tag or ("gpu" if device.type == "cuda" else "cpu")
    write_tables(args.out_dir, f"decode-{tag}", to_markdown(rows, meta), meta, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
