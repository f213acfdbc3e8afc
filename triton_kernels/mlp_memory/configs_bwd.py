"""Launch configurations of the `mlp_memory` chunk-backward kernels (chunk_bwd.py): one table for
the launcher and the compile report (`aot_bwd.py`), so what is reported is what runs.

Tiles: BK key columns, BV value columns, BD hidden columns (one program per BD columns of Dh in
the `inner`, `dd` and `dw` stages). Chosen by compiling (BD, BK = BV, warps) ∈ {16, 32, 64}² × {4, 8}
for sm_90 and sm_80 with every flag on (momentum, `read="current"`, self target: the most
registers), K = V = 128, Dh = 512, without and with DGD: among the candidates free of spills on
both, the largest tiles; `inner` holds a dozen BT×BD blocks through its loops, hence BD = 16
there, and `dd` shares its Dh tiles (the partial sums of both have one [ND, ...] layout). BT = 64
entries use wgmma on sm_90 (`nested-kernels compile-report --kernel mlp_memory_bwd`). Products
whose operand is a transposed input read it transposed by address (`_rows_t`, `_tile_t`) rather
than `tl.trans` of a loaded block. With DGD at BT = 64 one kernel for `inner` and `dd` spilled
140 B on sm_80 with every tile and warp count tried; split in two, the DGD `dd` kernel takes 255
registers there without spilling (int32 offsets for its C×C blocks and K S1 recomputed where it
is used, rather than kept live, brought it from 68 B of spills to none), `inner` 184. `res` at
BT = 32 reads V in tiles of 64: with (sequence, head) moved to grid axis 0 (no 65535 cap) its
32-column tiles took 8 B of spills on sm_80 (ptxas stopping at 128 registers).
"""
from typing import NamedTuple

from ..utils.host_math import next_power_of_2


class LaunchConfig(NamedTuple):
    BK: int
    BV: int
    BD: int
    num_warps: int
    num_stages: int


# kernel -> {BT: (BK, BV, BD, num_warps, num_stages)}; tiles are capped by K, V, Dh themselves.
TABLE = {
    "res": {16: (32, 32, 32, 4, 1), 32: (32, 64, 32, 4, 1), 64: (32, 32, 32, 4, 1)},
    "qk": {16: (32, 32, 0, 4, 1), 32: (32, 32, 0, 4, 1), 64: (32, 32, 0, 8, 1)},
    "inner": {16: (16, 16, 16, 8, 1), 32: (16, 16, 16, 8, 1), 64: (16, 16, 16, 8, 1)},
    "dd": {16: (16, 16, 16, 8, 1), 32: (16, 16, 16, 8, 1), 64: (16, 16, 16, 8, 1)},   # BD: that of "inner"
    "dres": {16: (32, 32, 0, 4, 1), 32: (32, 32, 0, 4, 1), 64: (32, 32, 0, 8, 1)},
    "dw": {16: (32, 32, 32, 8, 1), 32: (16, 16, 16, 8, 1), 64: (16, 16, 32, 8, 1)},
}
# with DGD (more live blocks), where the entry above spills
TABLE_DGD = {
    "dw": {64: (32, 32, 16, 8, 1)},
}
CHUNK_TILES = tuple(TABLE["res"])          # BT: a chunk of C ≤ 64 tokens is padded to 16, 32 or 64 rows


def chunk_tile(C: int) -> int:
    """Rows BT of the tile holding a chunk of C tokens (tl.dot needs at least 16)."""
    return max(16, next_power_of_2(C))


def launch_config(kernel: str, K: int, V: int, Dh: int, BT: int, dgd: bool = False) -> LaunchConfig:
    BK, BV, BD, num_warps, num_stages = (TABLE_DGD if dgd else {}).get(kernel, {}).get(BT, TABLE[kernel][BT])
    cap = lambda tile, n: max(16, min(tile, next_power_of_2(n)))
    return LaunchConfig(cap(BK, K), cap(BV, V), cap(BD, Dh) if BD else 0, num_warps, num_stages)
