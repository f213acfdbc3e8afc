"""Launch configurations of the `linear_memory` kernels: one table used by the launchers and by
the compile report (`aot.py`), so what is reported is what runs.

Chosen by compiling every (value tile, warps) candidate for sm_90 with momentum and DGD on
(the most registers) and keeping the fastest-looking one without spills; where none is free
of spills the entry is the least spilling, and `aot.KNOWN_SPILLS` lists it (open work: split K
for D = 256 and the 64-token chunks of the backward).
"""
from typing import NamedTuple

import triton


class LaunchConfig(NamedTuple):
    BK: int
    BV: int
    num_warps: int
    num_stages: int


# kernel -> {(BK, BT): (BV, num_warps)}; BK < 64 uses the BK = 64 row.
TABLE = {
    "fwd_h": {(64, 16): (64, 8), (64, 32): (64, 8), (64, 64): (32, 4),
              (128, 16): (32, 8), (128, 32): (32, 8), (128, 64): (16, 4),
              (256, 16): (16, 8), (256, 32): (16, 8), (256, 64): (16, 8)},
    "fwd_o": {(64, 16): (64, 8), (64, 32): (64, 8), (64, 64): (64, 8),
              (128, 16): (64, 8), (128, 32): (64, 8), (128, 64): (64, 8),
              (256, 16): (32, 8), (256, 32): (16, 8), (256, 64): (64, 8)},
    "bwd_dh": {(64, 16): (64, 8), (64, 32): (16, 4), (64, 64): (16, 4),
               (128, 16): (32, 8), (128, 32): (16, 8), (128, 64): (16, 4),
               (256, 16): (16, 8), (256, 32): (16, 8), (256, 64): (16, 8)},
    # the dQ and dK kernels share their value tiling (dK reads dQ's per-tile dQ̃)
    "bwd_dq": {(64, 16): (32, 8), (64, 32): (16, 8), (64, 64): (16, 8),
               (128, 16): (16, 8), (128, 32): (16, 8), (128, 64): (16, 8),
               (256, 16): (16, 8), (256, 32): (16, 8), (256, 64): (16, 8)},
    "bwd_dk": {(64, 16): (32, 8), (64, 32): (16, 8), (64, 64): (16, 8),
               (128, 16): (16, 8), (128, 32): (16, 8), (128, 64): (16, 8),
               (256, 16): (16, 8), (256, 32): (16, 8), (256, 64): (16, 8)},
    "bwd_dk_dgd": {(64, 16): (16, 8), (64, 32): (16, 8), (64, 64): (32, 8),
                   (128, 16): (16, 8), (128, 32): (16, 8), (128, 64): (16, 8),
                   (256, 16): (16, 8), (256, 32): (16, 8), (256, 64): (16, 8)},
}


def launch_config(kernel: str, K: int, V: int, BT: int) -> LaunchConfig:
    """`kernel` in TABLE; K ≤ 256 is one tile, V is tiled by BV."""
    BK = max(16, triton.next_power_of_2(K))
    BV, num_warps = TABLE[kernel][(max(BK, 64), BT)]
    return LaunchConfig(BK, min(BV, max(16, triton.next_power_of_2(V))), num_warps, 2)
