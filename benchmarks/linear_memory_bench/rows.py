"""The rows of a run: one timed (or not timed) call per row, with its counts."""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple, Union

from . import settings
from .counts import linear_memory_bytes, linear_memory_flops, roofline_fraction, sdpa_bytes, sdpa_flops
from .settings import BenchShape


@dataclass
class Row:
    shape: str
    variant: str                    # settings.Variant.name for linear_memory rows, "-" for peers
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


def _problem_counts(shape: BenchShape, backend: str, mode: str, dgd: bool,
                    momentum: bool) -> Tuple[Optional[int], Optional[int]]:
    if backend == "sdpa":
        return sdpa_flops(shape.B, shape.T, shape.H, shape.D, mode=mode), sdpa_bytes(shape.B, shape.T, shape.H, shape.D, mode=mode)
    if backend == "fla":
        return None, None           # a different recurrence; its roofline is not modelled here
    return (linear_memory_flops(shape.B, shape.T, shape.H, shape.D, shape.D, chunk_size=settings.CHUNK, dgd=dgd,
                                momentum=momentum, mode=mode),
            linear_memory_bytes(shape.B, shape.T, shape.H, shape.D, shape.D, momentum=momentum, mode=mode))


def _new_row(shape: BenchShape, variant: Union[settings.Variant, str], mode: str, backend: str, device: str) -> Row:
    """A row of `variant` (a peer's: "-")."""
    if isinstance(variant, str):
        variant = settings.Variant(variant, dgd=False, momentum=True)
    flops, nbytes = _problem_counts(shape, backend, mode, variant.dgd, variant.momentum)
    return Row(shape.name, variant.name, mode, backend, device, shape.tokens, flops=flops, bytes=nbytes)


def _finish(row: Row, ms: Sequence[float], method: str, peak_bytes: Optional[int], args) -> Row:
    row.ms, row.p20, row.p80 = (float(x) for x in ms)
    row.method = method
    row.tokens_per_s = row.tokens / (row.ms * 1e-3)
    row.peak_mib = None if peak_bytes is None else peak_bytes / 2**20
    if row.device == "cuda" and row.flops is not None:
        row.roofline = roofline_fraction(row.flops, row.bytes, row.ms, peak_tflops=args.peak_tflops, peak_tbps=args.peak_tbps)
    return row
