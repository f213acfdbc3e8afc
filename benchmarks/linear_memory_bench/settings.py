"""Problem sizes and constants of the benchmark.

`CHUNK` and `VARIANTS` are the settings of one run: `bench_linear_memory.main` (and
`profile_linear_memory.py`, `config_sweep.py`) set them here, and the other modules read them as `settings.CHUNK` /
`settings.VARIANTS` when they are called.
"""
import re
from dataclasses import dataclass
from typing import NamedTuple


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
FLA_GUARD_LIFTED = ("; fla refuses this backward on Hopper with Triton 3.4–3.7.0 (fla#640: may be wrong), "
                    "guard lifted to time it")


def _mode(mode: str) -> str:
    mode = {"fwd+bwd": "fwdbwd", "fwd_bwd": "fwdbwd"}.get(mode, mode)
    if mode not in MODES:
        raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
    return mode
