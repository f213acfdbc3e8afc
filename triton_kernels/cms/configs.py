"""Launch configurations of the `cms_level` kernels: one table used by the launchers and by the
compile report (`aot.py`), so what is reported is what runs.

Every kernel is a tiled GEMM over one chunk: BT rows of the chunk, BD columns of D, BH columns
of Dh. The row tile of the row-tiled kernels is 64 for every period (a 16-token chunk masks 48
rows): Hopper's wgmma needs 64-row tiles, and a chunk's work is bound by reading the
weights, not by the matrix units. Entries were chosen by compiling candidates for sm_90 and
sm_80 (`nested-kernels compile-report`, registers and spills): every entry is free of
spills on both and uses wgmma on sm_90.
"""
from typing import NamedTuple


class LaunchConfig(NamedTuple):
    BT: int
    BD: int
    BH: int
    num_warps: int
    num_stages: int


# kernel -> (BT, BD, BH, num_warps, num_stages). 8 warps everywhere: with 4 every kernel but
# fwd_z spilled at 64 × 64 tiles. The backward's row-tiled kernels hold five tiles per step of
# their loop and take BH = 32 (bwd_q, whose two products each read a row and a weight tile per
# step, also BD = 32: at 64 it sat at 255 registers on sm_80); the two step kernels (fwd_w,
# bwd_dw) keep 64 × 64 weight tiles (the M side of their products, where wgmma needs 64) and step
# through the chunk's rows by 32.
TABLE = {
    "fwd_z": (64, 64, 64, 8, 2),
    "fwd_y": (64, 64, 64, 8, 2),
    "fwd_p": (64, 64, 64, 8, 2),
    "fwd_w": (32, 64, 64, 8, 2),
    "bwd_q": (64, 32, 32, 8, 2),
    "bwd_de": (64, 64, 32, 8, 2),
    "bwd_dz": (64, 64, 32, 8, 2),
    "bwd_dx": (64, 64, 32, 8, 2),
    "bwd_dw": (32, 64, 64, 8, 2),
}
# The same for fp32 inputs, whose products are exact fp32 (`input_precision="ieee"`: FMA loops,
# no matrix units), which need more registers: with the table above every kernel spilled on
# sm_80 and bwd_dw spilled kilobytes on both. One stage, BH 32; bwd_dw steps by 16 rows.
TABLE_FP32 = {
    "fwd_z": (64, 64, 32, 8, 1),
    "fwd_y": (64, 64, 32, 8, 1),
    "fwd_p": (64, 64, 32, 8, 1),
    "fwd_w": (64, 64, 32, 8, 1),
    "bwd_q": (64, 64, 32, 8, 1),
    "bwd_de": (64, 64, 32, 8, 1),
    "bwd_dz": (64, 64, 32, 8, 1),
    "bwd_dx": (64, 64, 32, 8, 1),
    "bwd_dw": (16, 64, 64, 8, 1),
}


def launch_config(kernel: str, D: int, Dh: int, precision: str = "tf32") -> LaunchConfig:
    """`kernel` in TABLE (TABLE_FP32 for "ieee" products); the column tiles shrink to D and Dh
    (at least 16, what tl.dot needs)."""
    from ..utils.host_math import next_power_of_2

    BT, BD, BH, num_warps, num_stages = (TABLE_FP32 if precision == "ieee" else TABLE)[kernel]
    fit = lambda tile, n: min(tile, max(16, next_power_of_2(n)))
    return LaunchConfig(BT, fit(BD, D), fit(BH, Dh), num_warps, num_stages)
