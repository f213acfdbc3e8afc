"""SPEC §8: a HOPE layer forward+backward at T ≥ 8192 against a Transformer layer with
FlashAttention (SDPA) at equal d_model.

    python benchmarks/bench_hope_layer.py [--T 8192] [--B 1] [--d-model 1024] [--heads 16]
        [--backend auto] [--modes fwd,fwdbwd] [--out-dir benchmarks/results] [--tag NAME] [--device cuda|cpu]

The HOPE layer is one `HopeBlock` (self-modifying Titans + CMS, SPEC §6; head_dim = d_model /
heads, memory hidden = head_dim, C_aux 16, C_mem 64, CMS levels (4d, 16), (4d, 256), (4d, 4096)),
its memories on `--backend` (the model's `backend=`: torch, or triton where that tier exists);
the Transformer layer is `nn.TransformerEncoderLayer` (pre-norm, GELU MLP of 4·d, causal,
`is_causal=True` so SDPA takes its flash kernel on a GPU). bf16 autocast on a GPU, fp32 on a
CPU. Per row: ms (median, p20, p80; `triton.testing.do_bench` on a GPU, `time.perf_counter`
on a CPU), tokens/s and peak memory; the ratio HOPE / Transformer of the same run (target < 1).
Without a CUDA device the script runs both layers at a CPU size (`--T 128 --d-model 64 --heads 2`
unless given) so it is exercised end to end; those figures are CPU timings, not the target.
Writes hope_layer-<tag>.md / .json.
"""
import argparse
import os
from dataclasses import dataclass
from typing import Callable, List, Optional, Tuple

import torch
import torch.nn as nn

from linear_memory_bench import ROOT
from linear_memory_bench.report import machine_meta, write_tables
from linear_memory_bench.timing import time_row
from nested_kernels.models import HopeConfig
from nested_kernels.models.hope import HopeBlock


@dataclass
class Row:
    layer: str
    mode: str
    shape: str
    ms: Optional[List[float]] = None
    tokens_per_s: Optional[float] = None
    peak_mib: Optional[float] = None
    note: str = ""


def layers(d_model: int, heads: int, backend: str, device) -> Tuple[nn.Module, nn.Module]:
    head_dim = d_model // heads
    cfg = HopeConfig(vocab=2, d_model=d_model, heads=heads, head_dim=head_dim, mem_hidden=head_dim, backend=backend)
    hope = HopeBlock(cfg).to(device)
    transformer = nn.TransformerEncoderLayer(d_model, heads, 4 * d_model, dropout=0.0, activation="gelu",
                                             batch_first=True, norm_first=True).to(device)
    return hope, transformer


def layer_call(name: str, layer: nn.Module, x: torch.Tensor, mode: str) -> Tuple[Callable[[], object], List[torch.Tensor]]:
    mask = nn.Transformer.generate_square_subsequent_mask(x.shape[1], device=x.device)
    leaves = [x.detach().clone().requires_grad_(mode == "fwdbwd")] + (list(layer.parameters()) if mode == "fwdbwd" else [])
    autocast = torch.autocast("cuda", dtype=torch.bfloat16, enabled=x.is_cuda)

    def forward():
        with autocast:
            return layer(leaves[0])[0] if name == "hope" else layer(leaves[0], src_mask=mask, is_causal=True)

    if mode == "fwd":
        def fwd():
            with torch.no_grad():
                return forward()
        return fwd, []

    def fwd_bwd():
        forward().float().pow(2).mean().backward()
    return fwd_bwd, leaves


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--T", type=int, default=None, help="default 8192 on a GPU, 128 on a CPU")
    p.add_argument("--B", type=int, default=1)
    p.add_argument("--d-model", type=int, default=None, help="default 1024 on a GPU, 64 on a CPU")
    p.add_argument("--heads", type=int, default=None, help="default 16 on a GPU, 2 on a CPU")
    p.add_argument("--backend", default="auto", help="HopeConfig.backend of the HOPE layer")
    p.add_argument("--modes", default="fwd,fwdbwd")
    p.add_argument("--max-call-s", type=float, default=10.0)
    p.add_argument("--out-dir", default=os.path.join(ROOT, "benchmarks", "results"))
    p.add_argument("--tag", default=None)
    p.add_argument("--peak-tflops", type=float, default=None, help="recorded only")
    p.add_argument("--peak-tbps", type=float, default=None, help="recorded only")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    T = args.T or (8192 if cuda else 128)
    d_model, heads = args.d_model or (1024 if cuda else 64), args.heads or (16 if cuda else 2)
    shape = f"B{args.B}-T{T}-d{d_model}-h{heads}"
    hope, transformer = layers(d_model, heads, args.backend, device)
    x = torch.randn(args.B, T, d_model, device=device)
    rows = []
    for mode in args.modes.replace("fwd+bwd", "fwdbwd").split(","):
        for name, layer in (("hope", hope), ("transformer", transformer)):
            row = Row(name, mode, shape)
            rows.append(row)
            fn, leaves = layer_call(name, layer, x, mode)
            row.ms, row.peak_mib, row.note = time_row(fn, leaves, cuda=cuda, max_call_s=args.max_call_s)
            if row.ms is None:
                continue
            row.tokens_per_s = args.B * T / (row.ms[0] * 1e-3)
            print(f"{name} {mode}: {row.ms[0]:.3f} ms", flush=True)
    meta = machine_meta(cuda, args)
    for key in ("peak_tflops", "peak_tbps", "chunk_size"):
        meta.pop(key, None)
    meta.update(hope_backend=args.backend, dtype="bf16 autocast" if cuda else "fp32 (CPU size, not the SPEC §8 shape)")
    lines = ["# HOPE layer vs Transformer layer (SPEC §8)", ""] + [f"* {k}: {v}" for k, v in meta.items()] + [""]
    ms = {(r.layer, r.mode): r.ms[0] for r in rows if r.ms}
    for mode in dict.fromkeys(r.mode for r in rows):
        h, t = ms.get(("hope", mode)), ms.get(("transformer", mode))
        lines.append(f"* {shape} {mode}: HOPE / Transformer = " + (f"{h / t:.2f}× (target < 1)" if h and t else "not measured"))
    lines += ["", "| layer | mode | shape | ms (p20–p80) | tokens/s | peak MiB | note |", "|---|---|---|---|---:|---:|---|"]
    for r in rows:
        t = f"{r.ms[0]:.3f} ({r.ms[1]:.3f}–{r.ms[2]:.3f})" if r.ms else "—"
        lines.append(f"| {r.layer} | {r.mode} | {r.shape} | {t} | {f'{r.tokens_per_s:,.0f}' if r.tokens_per_s else '—'} | "
                     f"{f'{r.peak_mib:,.0f}' if r.peak_mib is not None else '—'} | {r.note} |")
    tag = args.tag or ("gpu" if cuda else "cpu")
    write_tables(args.out_dir, f"hope_layer-{tag}", "\n".join(lines) + "\n", meta, rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
