"""Problem sizes and constants of the benchmark.

`CHUNK` and `VARIANTS` are the settings of one run: `bench_linear_memory.main` (and
`profile_linear_memory.py`, `config_sweep.py`) set them here, and the other modules read them as `settings.CHUNK` /
`settings.VARIANTS` when they are called.
"""
import re
from dataclasses import dataclass
from typing import NamedTuple, Optional, Tuple


class Variant(NamedTuple):
    """A timed configuration of `linear_memory`: the row's name, DGD, and whether the call carries
    the momentum state."""

    name: str
    dgd: bool
    momentum: bool


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

    @classmethod
    def parse(cls, text: str) -> "BenchShape":
        """The shape whose `name` is `text`; ValueError for any other text."""
        match = re.fullmatch(r"B(\d+)-T(\d+)-H(\d+)-D(\d+)", text.strip())
        if match is None:
            raise ValueError(f"expected B<b>-T<t>-H<h>-D<d>, got {text!r}")
        return cls(*map(int, match.groups()))

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
CHUNK = DEFAULT_CHUNK = 64
# the default rows carry the momentum state (HOPE's memories do); the momentum-free ones (on request,
# `--variants`) do the work of the peer's recurrence: fla's gated delta rule has no momentum
VARIANTS = DEFAULT_VARIANTS = (Variant("nodgd", False, True), Variant("dgd", True, True))
KNOWN_VARIANTS = DEFAULT_VARIANTS + (Variant("nodgd-nomom", False, False), Variant("dgd-nomom", True, False))
MODES = ("fwd", "fwdbwd")
MODE_LABEL = {"fwd": "fwd", "fwdbwd": "fwd+bwd"}
KERNEL_TIERS = ("triton", "cuda")   # the fused tiers; rows only for those registered
# Roofline peaks, the vendors' datasheet figures (dense bf16 matmul TFLOP/s, HBM TB/s), so that a
# fraction reads as FlashAttention's papers report theirs; the first name the device's name contains
# wins. (BACKGROUND.md §5 measured about 800 TFLOP/s and 3.0 TB/s on an H100 here: against those
# the fractions would be up to 1.24× higher.)
CARD_PEAKS = (("H200", 989.0, 4.8), ("H100 PCIe", 756.0, 2.0), ("H100 NVL", 835.0, 3.9), ("H100", 989.0, 3.35),
              ("A100", 312.0, 2.0))
PEAK_TFLOPS, PEAK_TBPS = 989.0, 3.35   # H100 SXM, for a device not in the table (and on a CPU)
GATE_T = 256
GATE_TOL_OUT = 5e-3                 # SPEC §7, bf16 outputs against an fp32 reference
GATE_TOL_GRAD = 1e-2                # SPEC §7, bf16 gradients
SLOW_CALL_S = 0.5                   # above this a row is timed 3× with CUDA events, not do_bench
SDPA_FWDBWD_FACTOR = 3.5            # FlashAttention's count: backward = 2.5 × forward FLOPs

NO_CUDA = "not measured (no CUDA device)"
GATE_FAILED = "not reported: correctness gate failed"
OUT_OF_BUDGET = "not measured (time budget)"
FLA_MISSING = "fla not installed"
FLA_GUARD_LIFTED = ("; fla refuses this backward on Hopper with Triton 3.4–3.7.0 (fla#640: may be wrong), "
                    "guard lifted to time it")


def card_peaks(device_name: Optional[str]) -> Tuple[float, float, str]:
    """(TFLOP/s, TB/s, where they come from) of the roofline for the device named `device_name`."""
    for name, tflops, tbps in CARD_PEAKS:
        if device_name and name in device_name:
            return tflops, tbps, f"{name} datasheet"
    why = f"{device_name} is not in settings.CARD_PEAKS" if device_name else "no GPU here"
    return PEAK_TFLOPS, PEAK_TBPS, f"H100 SXM datasheet: {why}"


def resolve_peaks(args, device_name: Optional[str]) -> str:
    """Fill `args.peak_tflops` / `args.peak_tbps` left None from the card's datasheet; returns where
    the peaks come from, for the report."""
    tflops, tbps, source = card_peaks(device_name)
    if args.peak_tflops is not None or args.peak_tbps is not None:
        source = "given" if None not in (args.peak_tflops, args.peak_tbps) else f"given, the rest from the {source}"
    args.peak_tflops = tflops if args.peak_tflops is None else args.peak_tflops
    args.peak_tbps = tbps if args.peak_tbps is None else args.peak_tbps
    return source


def _mode(mode: str) -> str:
    mode = {"fwd+bwd": "fwdbwd", "fwd_bwd": "fwdbwd"}.get(mode, mode)
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    return mode
