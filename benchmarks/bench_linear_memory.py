"""GPU benchmark of `linear_memory` against its torch tier and its peers (SPEC §8).

    python benchmarks/bench_linear_memory.py [--shapes all|small|NAME,...] [--modes fwd,fwdbwd]
        [--out-dir benchmarks/results] [--tag NAME] [--peak-tflops TF] [--peak-tbps TB] [--budget-s S]

On a CUDA device, for each shape of fla's registry (SPEC §8: B8-T2048-H16-D64, B4-T4096-H16-D128,
B2-T16384-H16-D128, B1-T65536-H8-D128; `--shapes small` keeps the first two), bf16 q/k/v, fp32
gates, momentum on, dgd off and on (`--variants`: also `nodgd-nomom`, `dgd-nomom`, without the
momentum state, the peer's amount of state), chunk 64, and each mode (`fwd`: the forward under no_grad;
`fwdbwd`: the forward on leaves that require grad, then the backward of `(o * do).sum()`), it times

* `linear_memory` with `backend="triton"` (and `"cuda"` once that tier is registered),
* `linear_memory` with `backend="torch"` (the chunked PyTorch tier; a row says "OOM", or
  "skipped" when one call takes more than `--torch-max-call-s`),
* fla's `chunk_gated_delta_rule` when fla is importable (else a row "fla not installed"); fla refuses
  its gated backward on Hopper with Triton 3.4 to 3.7.0 (fla#640, results possibly wrong), so there the
  benchmark lifts that guard to time its kernels and the fwd+bwd row's note says so
  (`--keep-fla-hopper-guard` leaves it in force),
* `scaled_dot_product_attention`, causal, flash backend (tensors `[B, H, T, D]`),

with `triton.testing.do_bench` (warm-up call first; quantiles 0.5 / 0.2 / 0.8, L2 flushed per
call; calls slower than 0.5 s are timed 3× with CUDA events instead). Per row: ms (median, p20,
p80), tokens/s (B·T / median), peak memory (`torch.cuda.max_memory_allocated` over one call after
a reset, inputs included), FLOPs and minimal bytes of the formulas below, and the roofline fraction
`max(flops / peak, bytes / bandwidth) / measured`. Speed ratios compare rows of the same run.

Before a shape is timed, a correctness gate runs each kernel tier at T = 256 (same B, H, D and
inputs of the same kind) against the torch tier in fp32 on the same bf16-rounded inputs:
`rms(ref − out) / rms(ref)` ≤ 5e-3 for `o`, and for `fwdbwd` ≤ 1e-2 for every gradient (SPEC §7).
A tier that fails is not timed: its rows read "not reported: correctness gate failed".

Without a CUDA device (or with `--device cpu`) nothing is timed on the GPU path: every GPU row
reads "not measured (no CUDA device)" (its FLOPs and bytes are still given), and the CPU tiers
(torch fwd and fwd+bwd, cpp fwd) run at B=1 T=512 H=4 D=64 in fp32, timed with
`time.perf_counter` (median of at least `--cpu-min-runs` calls after a warm-up).

Writes `<out-dir>/linear_memory-<tag>.md` and `.json` (rewritten after every shape, so a run cut
short keeps what it measured) and prints the markdown. Exit status 1 if a correctness gate failed
or a row raised an unexpected error, else 0.

The code lives in `linear_memory_bench/`, one module per concept (its `__init__` lists them); this
file is the command line and re-exports what the tests and `profile_linear_memory.py` use.
"""

import argparse
import datetime
import os
import re
import sys
from typing import List, Optional, Sequence

import torch

BENCHMARKS = os.path.dirname(os.path.abspath(__file__))
if BENCHMARKS not in sys.path:          # loaded by path (the tests, profile_linear_memory.py), not run as a script
    sys.path.append(BENCHMARKS)

from linear_memory_bench import ROOT, settings  # noqa: E402
from linear_memory_bench.callables import linear_memory_callable, make_inputs  # noqa: E402,F401 (re-exported)
from linear_memory_bench.counts import (  # noqa: E402,F401 (re-exported)
    linear_memory_bytes, linear_memory_chunk_flops, linear_memory_flops, roofline_fraction, sdpa_bytes, sdpa_flops)
from linear_memory_bench.cpu_run import run_cpu  # noqa: E402
from linear_memory_bench.gpu_run import run_gpu  # noqa: E402
from linear_memory_bench.report import machine_meta, to_markdown, write_outputs  # noqa: E402
from linear_memory_bench.rows import Run  # noqa: E402
from linear_memory_bench.settings import (  # noqa: E402
    MODES, SHAPES, SMALL_SHAPES, BenchShape, _mode, resolve_peaks)
from linear_memory_bench.timing import _percentiles  # noqa: E402,F401 (re-exported)


def __getattr__(name: str):
    """`CHUNK` and `VARIANTS` as the run has set them (they live in `linear_memory_bench.settings`)."""
    if name in ("CHUNK", "VARIANTS"):
        return getattr(settings, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------


def _parse_shapes(text: str) -> List[BenchShape]:
    if text == "all":
        return list(SHAPES)
    if text == "small":
        return list(SMALL_SHAPES)
    by_name = {s.name: s for s in SHAPES}
    out = []
    for name in text.split(","):
        name = name.strip()
        if name not in by_name:
            raise argparse.ArgumentTypeError(f"--shapes: expected all, small or names from {sorted(by_name)}, got {name!r}")
        out.append(by_name[name])
    return out


def _parse_modes(text: str) -> List[str]:
    try:
        modes = [_mode(m.strip()) for m in text.split(",") if m.strip()]
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e))
    if not modes:
        raise argparse.ArgumentTypeError("--modes: empty")
    return modes


def _default_tag(cuda: bool) -> str:
    device = re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-") if cuda else "cpu"
    return f"{device}-{datetime.date.today().isoformat()}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--shapes", type=_parse_shapes, default=list(SHAPES),
                   help="all (default), small (the first two) or comma-separated names, e.g. B8-T2048-H16-D64")
    p.add_argument("--modes", type=_parse_modes, default=list(MODES), help="comma-separated: fwd,fwdbwd (default both)")
    p.add_argument("--out-dir", default=os.path.join(ROOT, "benchmarks", "results"))
    p.add_argument("--tag", help="file name tag (default: <device>-<date>)")
    p.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto",
                   help="auto: CUDA when available; cpu: the CPU baselines only (default: auto)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="dense bf16 matmul peak of the roofline (default: the card's datasheet, settings.CARD_PEAKS)")
    p.add_argument("--peak-tbps", type=float, default=None,
                   help="memory bandwidth of the roofline (default: the card's datasheet, settings.CARD_PEAKS)")
    p.add_argument("--warmup-ms", type=float, default=25.0, help="do_bench warm-up (default 25)")
    p.add_argument("--rep-ms", type=float, default=100.0, help="do_bench repetition time (default 100)")
    p.add_argument("--torch-max-call-s", type=float, default=10.0,
                   help="skip a torch-tier row whose single call takes longer (default 10)")
    p.add_argument("--keep-fla-hopper-guard", action="store_true",
                   help="leave fla's refusal of its gated backward on Hopper with Triton < 3.7.1 in force (by "
                        "default it is lifted so its kernels are timed, and the row says so)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="start no new row after this many seconds (rows left read 'not measured (time budget)')")
    p.add_argument("--cpu-min-runs", type=int, default=5, help="CPU mode: timed calls per row, at least (default 5)")
    p.add_argument("--cpu-budget-s", type=float, default=0.5, help="CPU mode: seconds per row, at least (default 0.5)")
    p.add_argument("--cpu-max-row-s", type=float, default=3.0,
                   help="CPU mode: start no run after this many seconds of a row (default 3)")
    p.add_argument("--chunk", type=int, choices=(16, 32, 64), default=settings.DEFAULT_CHUNK,
                   help=f"chunk size of the kernel tiers (default {settings.DEFAULT_CHUNK}; 16, 32 and 64 use the "
                        "Triton gate kernels)")
    p.add_argument("--variants", type=_parse_variants, default=list(settings.DEFAULT_VARIANTS),
                   help=f"comma-separated, of {','.join(v.name for v in settings.KNOWN_VARIANTS)} (default "
                        f"{','.join(v.name for v in settings.DEFAULT_VARIANTS)}; -nomom: without the momentum state)")
    return p


def _parse_variants(text: str):
    known = {v.name: v for v in settings.KNOWN_VARIANTS}
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"variants are {', '.join(known)}; got {text!r}")
    return [known[n] for n in names]


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    settings.CHUNK, settings.VARIANTS = args.chunk, tuple(args.variants)     # the rows of this run
    cuda = args.device != "cpu" and torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        print("--device cuda: no CUDA device here", file=sys.stderr)
        return 2
    tag = args.tag or _default_tag(cuda)
    args.peaks_source = resolve_peaks(args, torch.cuda.get_device_name(0) if cuda else None)
    run = Run(machine_meta(cuda, args))
    write = lambda: write_outputs(run, args.out_dir, tag)
    if cuda:
        run_gpu(run, args.shapes, args.modes, args, write)
    else:
        run_cpu(run, args.shapes, args.modes, args)
    run.complete = True
    md_path, json_path = write()
    print(to_markdown(run))
    print(f"wrote {md_path} and {json_path}", file=sys.stderr)
    errors = [r for r in run.rows if r.status.startswith("error")]
    failed_gates = [g for g in run.gates if not all(g["passed"].values())]
    for r in errors:
        print(f"error: {r.shape} {r.variant} {r.mode} {r.backend}: {r.status}", file=sys.stderr)
    for g in failed_gates:
        print(f"correctness gate failed: {g['shape']} {g['backend']} {g['variant']}: {g['error'] or g['ratios']}",
              file=sys.stderr)
    return 1 if errors or failed_gates else 0


if __name__ == "__main__":
    sys.exit(main())
