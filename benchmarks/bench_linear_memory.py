"""GPU benchmark of `linear_memory` against its torch tier and its peers (SPEC §8).

    python benchmarks/bench_linear_memory.py [--shapes all|small|NAME,...] [--modes fwd,fwdbwd]
        [--out-dir benchmarks/results] [--tag NAME] [--peak-tflops 800] [--peak-tbps 3.0] [--budget-s S]

On a CUDA device, for each shape of fla's registry (SPEC §8: B8-T2048-H16-D64, B4-T4096-H16-D128,
B2-T16384-H16-D128, B1-T65536-H8-D128; `--shapes small` keeps the first two), bf16 q/k/v, fp32
gates, momentum on, dgd off and on, chunk 64, and each mode (`fwd`: the forward under no_grad;
`fwdbwd`: the forward on leaves that require grad, then the backward of `(o * do).sum()`), it times

* `linear_memory` with `backend="triton"` (and `"cuda"` once that tier is registered),
* `linear_memory` with `backend="torch"` (the chunked PyTorch tier; a row says "OOM", or
  "skipped" when one call takes more than `--torch-max-call-s`),
* fla's `chunk_gated_delta_rule` when fla is importable (else a row "fla not installed"),
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
"""
import argparse
import datetime
import gc
import importlib
import importlib.util
import json
import math
import os
import platform
import re
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if importlib.util.find_spec("nested_kernels") is None:   # running from a checkout without `pip install -e .`
    sys.path.insert(0, ROOT)

from nested_kernels import linear_memory  # noqa: E402

# ---------------------------------------------------------------------------------------------
# Problem sizes and constants
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BenchShape:
    """One problem size: q, k `[B, T, H, D]`, v `[B, T, H, D]` (K = V = D)."""

    B: int
    T: int
    H: int
    D: int

    @property
    def name(self) -> str:
        return f"B{self.B}-T{self.T}-H{self.H}-D{self.D}"

    @property
    def tokens(self) -> int:
        return self.B * self.T


SHAPES = (                          # SPEC §8, fla's registry; the first two are `--shapes small`
    BenchShape(8, 2048, 16, 64),
    BenchShape(4, 4096, 16, 128),
    BenchShape(2, 16384, 16, 128),
    BenchShape(1, 65536, 8, 128),
)
SMALL_SHAPES = SHAPES[:2]
CPU_SHAPE = BenchShape(1, 512, 4, 64)
CHUNK = 64
MOMENTUM = True                     # every timed variant carries the momentum state
VARIANTS = (("nodgd", False), ("dgd", True))
MODES = ("fwd", "fwdbwd")
MODE_LABEL = {"fwd": "fwd", "fwdbwd": "fwd+bwd"}
KERNEL_TIERS = ("triton", "cuda")   # the fused tiers; rows only for those registered
PEAK_TFLOPS = 800.0                 # H100 bf16 dense matmul, measured (BACKGROUND.md §5)
PEAK_TBPS = 3.0                     # H100 HBM copy, read + write (BACKGROUND.md §5)
GATE_T = 256
GATE_TOL_OUT = 5e-3                 # SPEC §7, bf16 outputs against an fp32 reference
GATE_TOL_GRAD = 1e-2                # SPEC §7, bf16 gradients
SLOW_CALL_S = 0.5                   # above this a row is timed 3× with CUDA events, not do_bench
SDPA_FWDBWD_FACTOR = 3.5            # FlashAttention's count: backward = 2.5 × forward FLOPs

NO_CUDA = "not measured (no CUDA device)"
GATE_FAILED = "not reported: correctness gate failed"
OUT_OF_BUDGET = "not measured (time budget)"
FLA_MISSING = "fla not installed"

# ---------------------------------------------------------------------------------------------
# FLOP and byte counts
# ---------------------------------------------------------------------------------------------
#
# linear_memory, chunked algorithm (triton_kernels/linear_memory/README.md), per chunk of c tokens
# per head, K = key dim, V = value dim. Only matrix products are counted, in three units:
#   [ckv] = 2·c·K·V (a c×K by K×V product or its transposes), [cck] = 2·c²·K, [ccv] = 2·c²·V.
# Forward:
#   always    K·X (R = K X − V), Q·X (read), Kᵀ·(G_r⊙R) (X')                       3 [ckv]
#             Q·Kᵀ                                                                  1 [cck]
#             (QKᵀ⊙G)·R                                                             1 [ccv]
#   momentum  Q·S (read), Kᵀ·(N_r⊙R) (S')                                          +2 [ckv]
#   dgd       Kᵀ·(E_r⊙W) (X')                                                      +1 [ckv]
#             + K·S in P, with momentum                                            +1 [ckv]
#             K·Kᵀ                                                                 +1 [cck]
#             (KKᵀ⊙G)·R (P), (I+L)⁻¹·P (W), (QKᵀ⊙E)·W (read)                       +3 [ccv]
# Backward (given the chunk states; their recomputation is not counted):
#   always    K·dX', Qᵀ·(β⊙Ō), Kᵀ·dR (dX), Ō·Xᵀ (dQ), dR·Xᵀ, (G_r⊙R)·dX'ᵀ (dK)     6 [ckv]
#             Q·Kᵀ, dQ̃·K (dQ), dQ̃ᵀ·Q (dK)                                         3 [cck]
#             (QKᵀ⊙G)ᵀ·Ō (dR), Ō·Rᵀ (dQ̃, dG)                                       2 [ccv]
#   momentum  K·dS', Qᵀ·(f⊙Ō) (dS), Ō·Sᵀ (dQ), (N_r⊙R)·dS'ᵀ (dK)                  +4 [ckv]
#   dgd       Kᵀ·(β⊙dP) (dX), (E_r⊙W)·dX'ᵀ, dP·Xᵀ (dK)                            +3 [ckv]
#             + Kᵀ·(f⊙dP) (dS), dP·Sᵀ (dK), with momentum                          +2 [ckv]
#             K·Kᵀ, dÂ·K, dÂᵀ·K (dK)                                               +3 [cck]
#             (KKᵀ⊙G)ᵀ·dP (dR), (QKᵀ⊙E)ᵀ·Ō (dW), (I+L)⁻ᵀ·dW (dP), Ō·Wᵀ (dQ̃, dE),
#             dP·Rᵀ (dÂ), dW·Pᵀ (d(I+L)⁻¹)                                         +6 [ccv]
# Not counted: the gate algebra (per-chunk c×c products of gates and the O(c³) triangular inverse
# of the DGD system, independent of K and V), element-wise work, state recomputation.
# A call's count sums the chunks of each of the B·H (sequence, head) pairs; the last chunk of a
# sequence has T mod C tokens when C does not divide T.
#
# Minimal bytes (each tensor touched once): forward reads q, k, v and the gates (lr, retention,
# momentum) and writes o and the final state (memory, momentum; fp32, N·H·K·V each, written once);
# the backward reads q, k, v, the gates and do and writes dq, dk, dv and the gate gradients.
# q/k/v/o and their gradients in the input dtype (bf16: 2 bytes), gates fp32 (4 bytes).
#
# SDPA (causal): forward 4·B·H·T²·D / 2 FLOPs (QKᵀ and PV, half masked); forward+backward
# 3.5 × that (FlashAttention's count: the backward's five products are 2.5 × the forward's two).
# Bytes: forward reads q, k, v and writes o; the backward reads q, k, v, o, do and writes
# dq, dk, dv (the fp32 log-sum-exp, B·H·T values, is left out).


def linear_memory_chunk_flops(c: int, K: int, V: int, *, momentum: bool, dgd: bool, backward: bool) -> int:
    """Matrix-product FLOPs of one chunk of `c` tokens of one head (the table above)."""
    m, d = int(momentum), int(dgd)
    if not backward:
        ckv, cck, ccv = 3 + 2 * m + d * (1 + m), 1 + d, 1 + 3 * d
    else:
        ckv, cck, ccv = 6 + 4 * m + d * (3 + 2 * m), 3 + 3 * d, 2 + 6 * d
    return 2 * c * K * V * ckv + 2 * c * c * K * cck + 2 * c * c * V * ccv


def linear_memory_flops(B: int, T: int, H: int, K: int, V: int, *, chunk_size: int = CHUNK,
                        momentum: bool = MOMENTUM, dgd: bool = False, mode: str = "fwd") -> int:
    """FLOPs of one `linear_memory` call (`mode="fwd"`) or forward + backward (`"fwdbwd"`)."""
    mode = _mode(mode)
    full, tail = divmod(T, chunk_size)
    total = 0
    for backward in ((False,) if mode == "fwd" else (False, True)):
        per_seq = full * linear_memory_chunk_flops(chunk_size, K, V, momentum=momentum, dgd=dgd, backward=backward)
        if tail:
            per_seq += linear_memory_chunk_flops(tail, K, V, momentum=momentum, dgd=dgd, backward=backward)
        total += B * H * per_seq
    return total


def linear_memory_bytes(B: int, T: int, H: int, K: int, V: int, *, momentum: bool = MOMENTUM, mode: str = "fwd",
                        io_bytes: int = 2, gate_bytes: int = 4, state_bytes: int = 4,
                        final_state: bool = True) -> int:
    """Minimal HBM bytes of one call (`"fwd"`) or forward + backward (`"fwdbwd"`)."""
    mode = _mode(mode)
    tok = B * T * H
    gates = (2 + int(momentum)) * tok * gate_bytes
    fwd = tok * (2 * K + V) * io_bytes + gates + tok * V * io_bytes            # q, k, v, gates; o
    if final_state:
        fwd += (1 + int(momentum)) * B * H * K * V * state_bytes               # memory (+ momentum), once
    if mode == "fwd":
        return fwd
    bwd = tok * (2 * K + 2 * V) * io_bytes + gates                             # q, k, v, do, gates
    bwd += tok * (2 * K + V) * io_bytes + gates                                # dq, dk, dv, d gates
    return fwd + bwd


def sdpa_flops(B: int, T: int, H: int, D: int, *, mode: str = "fwd") -> int:
    fwd = 4 * B * H * T * T * D // 2
    return fwd if _mode(mode) == "fwd" else int(SDPA_FWDBWD_FACTOR * fwd)


def sdpa_bytes(B: int, T: int, H: int, D: int, *, mode: str = "fwd", io_bytes: int = 2) -> int:
    tensors = 4 if _mode(mode) == "fwd" else 4 + 8
    return tensors * B * T * H * D * io_bytes


def roofline_fraction(flops: float, nbytes: float, ms: float, *, peak_tflops: float = PEAK_TFLOPS,
                      peak_tbps: float = PEAK_TBPS) -> float:
    """Roofline time `max(flops / peak, bytes / bandwidth)` over the measured time."""
    bound_s = max(flops / (peak_tflops * 1e12), nbytes / (peak_tbps * 1e12))
    return bound_s / (ms * 1e-3)


def _mode(mode: str) -> str:
    mode = {"fwd+bwd": "fwdbwd", "fwd_bwd": "fwdbwd"}.get(mode, mode)
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    return mode


# ---------------------------------------------------------------------------------------------
# Rows
# ---------------------------------------------------------------------------------------------


@dataclass
class Row:
    shape: str
    variant: str                    # "nodgd" / "dgd" for linear_memory rows, "-" for peers
    mode: str                       # "fwd" / "fwdbwd"
    backend: str                    # triton, cuda, torch, cpp, fla, sdpa
    device: str                     # "cuda" / "cpu"
    tokens: int
    status: str = "ok"
    ms: Optional[float] = None
    p20: Optional[float] = None
    p80: Optional[float] = None
    method: Optional[str] = None
    tokens_per_s: Optional[float] = None
    peak_mib: Optional[float] = None
    flops: Optional[int] = None
    bytes: Optional[int] = None
    roofline: Optional[float] = None
    note: str = ""

    @property
    def timed(self) -> bool:
        return self.status == "ok" and self.ms is not None


@dataclass
class Run:
    meta: Dict[str, object]
    rows: List[Row] = field(default_factory=list)
    gates: List[Dict[str, object]] = field(default_factory=list)
    complete: bool = False


def _problem_counts(shape: BenchShape, backend: str, mode: str, dgd: bool) -> Tuple[Optional[int], Optional[int]]:
    if backend == "sdpa":
        return sdpa_flops(shape.B, shape.T, shape.H, shape.D, mode=mode), sdpa_bytes(shape.B, shape.T, shape.H, shape.D, mode=mode)
    if backend == "fla":
        return None, None           # a different recurrence; its roofline is not modelled here
    return (linear_memory_flops(shape.B, shape.T, shape.H, shape.D, shape.D, chunk_size=CHUNK, dgd=dgd, mode=mode),
            linear_memory_bytes(shape.B, shape.T, shape.H, shape.D, shape.D, mode=mode))


def _new_row(shape: BenchShape, variant: str, mode: str, backend: str, device: str, dgd: bool = False) -> Row:
    flops, nbytes = _problem_counts(shape, backend, mode, dgd)
    return Row(shape.name, variant, mode, backend, device, shape.tokens, flops=flops, bytes=nbytes)


def _finish(row: Row, ms: Sequence[float], method: str, peak_bytes: Optional[int], args) -> Row:
    row.ms, row.p20, row.p80 = (float(x) for x in ms)
    row.method = method
    row.tokens_per_s = row.tokens / (row.ms * 1e-3)
    row.peak_mib = None if peak_bytes is None else peak_bytes / 2**20
    if row.device == "cuda" and row.flops is not None:
        row.roofline = roofline_fraction(row.flops, row.bytes, row.ms, peak_tflops=args.peak_tflops, peak_tbps=args.peak_tbps)
    return row


# ---------------------------------------------------------------------------------------------
# Inputs and timed callables
# ---------------------------------------------------------------------------------------------


@dataclass
class Inputs:
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    lr: torch.Tensor
    retention: torch.Tensor
    momentum: torch.Tensor
    do: torch.Tensor


def make_inputs(shape: BenchShape, *, device, dtype, seed: int = 0) -> Inputs:
    """q, v ~ N(0, 1), L2-normalised keys, lr ∈ (0, 0.1], retention ∈ [0.9, 1], momentum ∈ [0, 0.9]."""
    gen = torch.Generator(device=device).manual_seed(seed)
    B, T, H, D = shape.B, shape.T, shape.H, shape.D
    rand = lambda *s: torch.rand(*s, generator=gen, device=device)
    randn = lambda *s: torch.randn(*s, generator=gen, device=device)
    q = randn(B, T, H, D).to(dtype)
    k = F.normalize(randn(B, T, H, D), dim=-1).to(dtype)
    v = randn(B, T, H, D).to(dtype)
    lr = (0.1 * rand(B, T, H)).clamp_min(1e-3)
    retention = 0.9 + 0.1 * rand(B, T, H)
    momentum = 0.9 * rand(B, T, H)
    do = randn(B, T, H, D).to(dtype)
    return Inputs(q, k, v, lr, retention, momentum, do)


Fn = Callable[[], object]


def linear_memory_callable(x: Inputs, backend: str, dgd: bool, mode: str) -> Tuple[Fn, List[torch.Tensor]]:
    """(the timed call, the leaves whose .grad is reset between calls)."""
    kw = dict(dgd=dgd, chunk_size=CHUNK, scale=x.q.shape[-1] ** -0.5, output_final_state=True, backend=backend)
    if _mode(mode) == "fwd":
        def fwd():
            with torch.no_grad():
                return linear_memory(x.q, x.k, x.v, x.lr, x.retention, x.momentum, **kw)[0]
        return fwd, []
    leaves = [t.detach().clone().requires_grad_() for t in (x.q, x.k, x.v, x.lr, x.retention, x.momentum)]

    def fwd_bwd():
        o, _ = linear_memory(*leaves, **kw)
        (o * x.do).sum().backward()
    return fwd_bwd, leaves


def _fla_function():
    """fla's `chunk_gated_delta_rule`, or (None, reason)."""
    try:
        from fla.ops.gated_delta_rule import chunk_gated_delta_rule
    except ImportError:
        return None, FLA_MISSING
    except Exception as e:  # noqa: BLE001 (a broken install is reported, not fatal)
        return None, f"fla import failed: {type(e).__name__}: {_first_line(e)}"
    return chunk_gated_delta_rule, None


def _fla_version() -> Optional[str]:
    from importlib import metadata
    for dist in ("fla-core", "flash-linear-attention"):
        try:
            return f"{dist} {metadata.version(dist)}"
        except metadata.PackageNotFoundError:
            continue
    return None


def fla_callable(fn, x: Inputs, mode: str) -> Tuple[Fn, List[torch.Tensor]]:
    """fla's gated delta rule on the same q, k, v: g = log(retention) (fp32), beta = lr (input dtype).

    Keyword arguments are filtered by the installed version's signature (`head_first` and
    `use_qk_l2norm_in_kernel` exist in some versions only; the keys are already L2-normalised).
    """
    import inspect
    params = inspect.signature(fn).parameters
    kw = dict(scale=x.q.shape[-1] ** -0.5, initial_state=None, output_final_state=True)
    if "use_qk_l2norm_in_kernel" in params:
        kw["use_qk_l2norm_in_kernel"] = False
    if "head_first" in params:
        kw["head_first"] = False
    has_kwargs = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
    kw = {k: v for k, v in kw.items() if k in params or has_kwargs}
    g = torch.log(x.retention)
    beta = x.lr.to(x.q.dtype)
    if _mode(mode) == "fwd":
        def fwd():
            with torch.no_grad():
                return fn(x.q, x.k, x.v, g, beta, **kw)
        return fwd, []
    leaves = [t.detach().clone().requires_grad_() for t in (x.q, x.k, x.v, g, beta)]

    def fwd_bwd():
        out = fn(*leaves, **kw)
        o = out[0] if isinstance(out, (tuple, list)) else out
        (o * x.do).sum().backward()
    return fwd_bwd, leaves


def sdpa_callable(x: Inputs, mode: str) -> Tuple[Fn, List[torch.Tensor], str]:
    """Causal SDPA on `[B, H, T, D]` copies of q, k, v; the flash backend when it accepts the call."""
    q, k, v, do = (t.transpose(1, 2).contiguous() for t in (x.q, x.k, x.v, x.do))
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        ctx, label = (lambda: sdpa_kernel(SDPBackend.FLASH_ATTENTION)), "flash"
    except ImportError:  # older torch: let it choose
        import contextlib
        ctx, label = contextlib.nullcontext, "default"
    sdpa = F.scaled_dot_product_attention
    if _mode(mode) == "fwd":
        def fwd():
            with torch.no_grad(), ctx():
                return sdpa(q, k, v, is_causal=True)
        return fwd, [], label
    leaves = [t.detach().clone().requires_grad_() for t in (q, k, v)]

    def fwd_bwd():
        with ctx():
            o = sdpa(*leaves, is_causal=True)
        (o * do).sum().backward()
    return fwd_bwd, leaves, label


# ---------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else ""


def _percentiles(xs: Sequence[float], qs=(0.5, 0.2, 0.8)) -> List[float]:
    """Linear-interpolated percentiles (numpy's default) of a small sample."""
    s = sorted(xs)
    out = []
    for q in qs:
        pos = q * (len(s) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        out.append(s[lo] + (s[hi] - s[lo]) * (pos - lo))
    return out


def _clear_grads(leaves: Sequence[torch.Tensor]) -> None:
    for t in leaves:
        t.grad = None


def time_cuda(fn: Fn, leaves: Sequence[torch.Tensor], *, warmup_ms: float, rep_ms: float,
              max_call_s: float) -> Tuple[Optional[List[float]], str, Optional[int], Optional[str]]:
    """(ms quantiles (0.5, 0.2, 0.8), method, peak bytes, skip reason) of one CUDA callable."""
    from triton.testing import do_bench

    def one_call() -> float:
        _clear_grads(leaves)
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        return time.perf_counter() - t0

    first = one_call()                                       # warm-up: compiles, autotunes, allocates
    if first > max_call_s:
        return None, "", None, f"skipped: one call took {first:.1f} s (> {max_call_s:g} s)"
    estimate = one_call()
    if estimate > max_call_s:
        return None, "", None, f"skipped: one call takes {estimate:.1f} s (> {max_call_s:g} s)"
    if estimate > SLOW_CALL_S:
        times = []
        for _ in range(3):
            _clear_grads(leaves)
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        ms, method = _percentiles(times), "cuda events ×3"
    else:
        ms = do_bench(fn, warmup=warmup_ms, rep=rep_ms, grad_to_none=list(leaves) or None, quantiles=(0.5, 0.2, 0.8))
        method = "do_bench"
    _clear_grads(leaves)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated()
    _clear_grads(leaves)
    return list(ms), method, peak, None


def time_cpu(fn: Fn, leaves: Sequence[torch.Tensor], *, min_runs: int, budget_s: float, max_row_s: float,
             max_runs: int = 50) -> List[float]:
    """ms quantiles (0.5, 0.2, 0.8) of `time.perf_counter` runs after one warm-up call.

    At least `min_runs` runs and `budget_s` seconds, but no run is started after `max_row_s`
    seconds once there is one (a loaded machine must not stretch the run past its minute)."""
    _clear_grads(leaves)
    fn()
    times: List[float] = []

    def more() -> bool:
        spent = sum(times) * 1e-3
        if not times:
            return True
        if len(times) >= max_runs or spent >= max_row_s:
            return False
        return len(times) < min_runs or spent < budget_s

    while more():
        _clear_grads(leaves)
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return _percentiles(times)


def _release() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------------------------
# Correctness gate
# ---------------------------------------------------------------------------------------------


def rms_ratio(ref: torch.Tensor, out: torch.Tensor) -> float:
    """`rms(ref − out) / rms(ref)` in float64 (fla's ratio test); inf if `out` has a NaN."""
    ref, out = ref.double(), out.double()
    if not torch.isfinite(out).all():
        return math.inf
    den = ref.pow(2).mean().sqrt().item()
    num = (ref - out).pow(2).mean().sqrt().item()
    return num / den if den > 0 else num


def _gate_run(x: Inputs, backend: str, dgd: bool, *, grads: bool) -> List[Tuple[str, torch.Tensor]]:
    kw = dict(dgd=dgd, chunk_size=CHUNK, scale=x.q.shape[-1] ** -0.5, output_final_state=True, backend=backend)
    names = ("q", "k", "v", "lr", "retention", "momentum")
    tensors = (x.q, x.k, x.v, x.lr, x.retention, x.momentum)
    if not grads:
        with torch.no_grad():
            o, _ = linear_memory(*tensors, **kw)
        return [("o", o)]
    leaves = [t.detach().clone().requires_grad_() for t in tensors]
    o, _ = linear_memory(*leaves, **kw)
    gs = torch.autograd.grad((o * x.do.to(o.dtype)).sum(), leaves)
    return [("o", o.detach())] + [(f"d{n}", g) for n, g in zip(names, gs)]


def correctness_gate(shape: BenchShape, backend: str, dgd: bool, modes: Sequence[str], device) -> Dict[str, object]:
    """The tier at T = GATE_T on bf16 inputs against the torch tier in fp32 on the same rounded inputs."""
    small = BenchShape(shape.B, min(GATE_T, shape.T), shape.H, shape.D)
    x = make_inputs(small, device=device, dtype=torch.bfloat16, seed=1)
    x32 = Inputs(*(t.float() for t in (x.q, x.k, x.v)), x.lr, x.retention, x.momentum, x.do.float())
    result: Dict[str, object] = {"shape": shape.name, "gate_shape": small.name, "backend": backend,
                                 "variant": "dgd" if dgd else "nodgd", "ratios": {}, "passed": {}, "error": None}
    try:
        for mode in modes:
            grads = mode == "fwdbwd"
            ref = dict(_gate_run(x32, "torch", dgd, grads=grads))
            out = dict(_gate_run(x, backend, dgd, grads=grads))
            ratios = {name: rms_ratio(ref[name], out[name]) for name in ref}
            result["ratios"][mode] = ratios
            result["passed"][mode] = all(
                r <= (GATE_TOL_OUT if name == "o" else GATE_TOL_GRAD) for name, r in ratios.items())
    except Exception as e:  # noqa: BLE001 (a crash fails the gate; the run goes on)
        result["error"] = f"{type(e).__name__}: {_first_line(e)}"
        for mode in modes:
            result["passed"][mode] = False
    finally:
        del x, x32
        _release()
    return result


# ---------------------------------------------------------------------------------------------
# The GPU run
# ---------------------------------------------------------------------------------------------


def _registered_kernel_tiers() -> List[str]:
    registry = importlib.import_module("nested_kernels.linear_memory").BACKENDS
    return [b for b in KERNEL_TIERS if b in registry.implemented()]


def _time_row(row: Row, make: Callable[[], Tuple[Fn, List[torch.Tensor]]], args, *, max_call_s: float) -> Row:
    fn = leaves = None
    try:
        fn, leaves = make()
        ms, method, peak, skip = time_cuda(fn, leaves, warmup_ms=args.warmup_ms, rep_ms=args.rep_ms,
                                           max_call_s=max_call_s)
        if skip is not None:
            row.status = skip
        else:
            _finish(row, ms, method, peak, args)
    except torch.cuda.OutOfMemoryError:
        row.status = "OOM"
    except Exception as e:  # noqa: BLE001 (recorded in the row and in the exit status)
        row.status = f"error: {type(e).__name__}: {_first_line(e)}"
    finally:
        del fn, leaves
        _release()
    return row


def run_gpu(run: Run, shapes: Sequence[BenchShape], modes: Sequence[str], args, write: Callable[[], None],
            device="cuda") -> None:
    device = torch.device(device)
    tiers = _registered_kernel_tiers()
    fla_fn, fla_reason = _fla_function()
    start = time.perf_counter()
    over_budget = lambda: args.budget_s is not None and time.perf_counter() - start > args.budget_s

    for shape in shapes:
        def log(msg):
            print(f"[{time.perf_counter() - start:7.1f} s] {shape.name} {msg}", file=sys.stderr, flush=True)

        gate_ok: Dict[Tuple[str, str, str], bool] = {}
        if not over_budget():
            for tier in tiers:
                for variant, dgd in VARIANTS:
                    log(f"correctness gate {tier} {variant}")
                    g = correctness_gate(shape, tier, dgd, modes, device)
                    run.gates.append(g)
                    for mode in modes:
                        gate_ok[(tier, variant, mode)] = bool(g["passed"].get(mode))

        x, no_inputs = None, None              # the inputs, or why there are none
        if over_budget():
            no_inputs = OUT_OF_BUDGET
        else:
            try:
                x = make_inputs(shape, device=device, dtype=torch.bfloat16)
            except torch.cuda.OutOfMemoryError:
                no_inputs = "OOM (inputs)"
        not_run = lambda: OUT_OF_BUDGET if over_budget() else no_inputs
        for mode in modes:
            for variant, dgd in VARIANTS:
                for backend in (*tiers, "torch"):
                    row = _new_row(shape, variant, mode, backend, "cuda", dgd)
                    run.rows.append(row)
                    if not_run() is not None:
                        row.status = not_run()
                        continue
                    if backend != "torch" and not gate_ok.get((backend, variant, mode), False):
                        row.status = GATE_FAILED
                        continue
                    log(f"{MODE_LABEL[mode]} {variant} {backend}")
                    max_call_s = args.torch_max_call_s if backend == "torch" else 60.0
                    _time_row(row, lambda: linear_memory_callable(x, backend, dgd, mode), args, max_call_s=max_call_s)

            row = _new_row(shape, "-", mode, "fla", "cuda")
            run.rows.append(row)
            if fla_fn is None:
                row.status = fla_reason
            elif not_run() is not None:
                row.status = not_run()
            else:
                log(f"{MODE_LABEL[mode]} fla")
                _time_row(row, lambda: fla_callable(fla_fn, x, mode), args, max_call_s=60.0)
                if row.timed:
                    row.note = "chunk_gated_delta_rule (no momentum, decay before the error)"

            row = _new_row(shape, "-", mode, "sdpa", "cuda")
            run.rows.append(row)
            if not_run() is not None:
                row.status = not_run()
            else:
                log(f"{MODE_LABEL[mode]} sdpa")
                label = []

                def make_sdpa():
                    fn, leaves, name = sdpa_callable(x, mode)
                    label.append(name)
                    return fn, leaves
                _time_row(row, make_sdpa, args, max_call_s=60.0)
                row.note = f"causal, {label[0] if label else 'flash'} backend"
        x = None
        _release()
        write()


# ---------------------------------------------------------------------------------------------
# The CPU run (no CUDA device)
# ---------------------------------------------------------------------------------------------


def run_cpu(run: Run, shapes: Sequence[BenchShape], modes: Sequence[str], args) -> None:
    registry = importlib.import_module("nested_kernels.linear_memory").BACKENDS
    shape = CPU_SHAPE
    x = make_inputs(shape, device="cpu", dtype=torch.float32)
    for variant, dgd in VARIANTS:
        outputs: Dict[str, torch.Tensor] = {}
        for mode in modes:
            for backend in ("torch", "cpp"):
                row = _new_row(shape, variant, mode, backend, "cpu", dgd)
                call = {"device": torch.device("cpu"), "dtype": torch.float32, "K": shape.D, "V": shape.D,
                        "chunk_size": CHUNK, "requires_grad": mode == "fwdbwd"}
                try:
                    registry.resolve(backend, call)
                    reason = None
                except NotImplementedError as e:
                    reason = str(e).split(": ", 1)[-1]
                if reason is not None:
                    if backend == "cpp" and mode == "fwdbwd":
                        continue                               # forward-only tier: no training row
                    row.status = f"not available: {reason}"
                    run.rows.append(row)
                    continue
                run.rows.append(row)
                try:
                    fn, leaves = linear_memory_callable(x, backend, dgd, mode)
                    ms = time_cpu(fn, leaves, min_runs=args.cpu_min_runs, budget_s=args.cpu_budget_s,
                                  max_row_s=args.cpu_max_row_s)
                    _finish(row, ms, "perf_counter", None, args)
                    if mode == "fwd":
                        outputs[backend] = fn()
                except Exception as e:  # noqa: BLE001
                    row.status = f"error: {type(e).__name__}: {_first_line(e)}"
        if "torch" in outputs and "cpp" in outputs:
            ratio = rms_ratio(outputs["torch"], outputs["cpp"])
            for row in run.rows:
                if row.backend == "cpp" and row.variant == variant and row.timed:
                    row.note = f"rms(torch − cpp) / rms(torch) = {ratio:.1e}"
    # The GPU rows, listed with their counts.
    tiers = _registered_kernel_tiers() or ["triton"]
    for s in shapes:
        for mode in modes:
            for variant, dgd in VARIANTS:
                for backend in (*tiers, "torch"):
                    row = _new_row(s, variant, mode, backend, "cuda", dgd)
                    row.status = NO_CUDA
                    run.rows.append(row)
            for backend in ("fla", "sdpa"):
                row = _new_row(s, "-", mode, backend, "cuda")
                row.status = NO_CUDA
                run.rows.append(row)


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


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
        "chunk_size": CHUNK,
        "dtype": "bf16 q/k/v, fp32 gates" if cuda else "fp32 (CPU)",
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
        f"* inputs: {m['dtype']}; momentum on; chunk {m['chunk_size']}; modes: fwd (no_grad), "
        "fwd+bwd (forward + backward of (o·do).sum())",
        f"* roofline peaks: {m['peak_tflops']:g} TFLOP/s, {m['peak_tbps']:g} TB/s; roofline = "
        "max(FLOPs / peak, bytes / bandwidth) / measured (formulas in bench_linear_memory.py)",
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
                             f"| {'yes' if passed else 'NO'} | {worst_s} | {g['error'] or ''} |")
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
    p.add_argument("--peak-tflops", type=float, default=PEAK_TFLOPS, help=f"matmul peak (default {PEAK_TFLOPS:g}, H100 bf16)")
    p.add_argument("--peak-tbps", type=float, default=PEAK_TBPS, help=f"memory bandwidth (default {PEAK_TBPS:g}, H100)")
    p.add_argument("--warmup-ms", type=float, default=25.0, help="do_bench warm-up (default 25)")
    p.add_argument("--rep-ms", type=float, default=100.0, help="do_bench repetition time (default 100)")
    p.add_argument("--torch-max-call-s", type=float, default=10.0,
                   help="skip a torch-tier row whose single call takes longer (default 10)")
    p.add_argument("--budget-s", type=float, default=None,
                   help="start no new row after this many seconds (rows left read 'not measured (time budget)')")
    p.add_argument("--cpu-min-runs", type=int, default=5, help="CPU mode: timed calls per row, at least (default 5)")
    p.add_argument("--cpu-budget-s", type=float, default=0.5, help="CPU mode: seconds per row, at least (default 0.5)")
    p.add_argument("--cpu-max-row-s", type=float, default=3.0,
                   help="CPU mode: start no run after this many seconds of a row (default 3)")
    p.add_argument("--chunk", type=int, choices=(16, 32, 64), default=CHUNK,
                   help=f"chunk size of the kernel tiers (default {CHUNK}; 16 and 32 use the Triton gate kernels)")
    p.add_argument("--variants", type=_parse_variants, default=list(VARIANTS),
                   help="comma-separated: nodgd,dgd (default both)")
    return p


def _parse_variants(text: str):
    known = dict(VARIANTS)
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in known]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"variants are {', '.join(known)}; got {text!r}")
    return [(n, known[n]) for n in names]


def main(argv: Optional[Sequence[str]] = None) -> int:
    global CHUNK, VARIANTS
    args = build_parser().parse_args(argv)
    CHUNK, VARIANTS = args.chunk, tuple(args.variants)           # the rows of this run
    cuda = args.device != "cpu" and torch.cuda.is_available()
    if args.device == "cuda" and not cuda:
        print("--device cuda: no CUDA device here", file=sys.stderr)
        return 2
    tag = args.tag or _default_tag(cuda)
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
