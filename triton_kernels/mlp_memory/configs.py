"""Launch configurations of the `mlp_memory` kernels: one function used by the launchers and by
the compile report (`aot.py`), so what is reported is what runs.

BK and BD are the key and hidden (Dh) tiles the kernels loop over, BV the value tile (the
recurrent kernel holds all of V: R and F are [BC, V]). Chosen by compiling every shipped shape
(K = V in 32/64/128, Dh in K/2K/4K, chunks of 8 to 64) for sm_90 and sm_80 with momentum, DGD
and the self-target on (the most registers), `nested-kernels compile-report --kernel mlp_memory`:
all free of spills on both. What it took: 64-token chunks need 8 warps and tiles of 32 keys
and 16 hidden units (the recurrent kernel with BK = 64 spilled 32 B on sm_90 at K = V = 128,
the read kernel 216 B at K = 64); 4 warps spill on sm_80 at K = 32, Dh = 128, 8-token chunks
unless BD = 32; the recurrent kernel's BD = 32 at V = 128 spilled up to 36 B on sm_80. With fp32
q, k, v (fp32 inputs, or the fp32 copies of 16-bit ones on Hopper with Triton < 3.7.1,
`utils/operand_precision.py`) the recurrent kernel at V = 128 and 64-token chunks reads keys in tiles
of 16 (32 spilled 124 B on sm_90). The read kernel pipelines two stages below 64-token chunks:
with one, K = 32, Dh = 64 with 8-token chunks spilled 8 B on sm_90 under Triton 3.6 (a stack
slot at 72 registers). There `read="chunk_start"` takes hidden tiles of 16: with 32, K = 64,
Dh = 128 with 8-token chunks spilled 4 B on sm_90 under Triton 3.8 (64 registers), and one stage
spilled at three shapes.
"""
from typing import NamedTuple

from ..utils.host_math import next_power_of_2


class LaunchConfig(NamedTuple):
    BK: int
    BD: int
    BV: int
    num_warps: int
    num_stages: int


def launch_config(kernel: str, K: int, V: int, DH: int, BT: int, fp32_operands: bool = False,
                  read_current: bool = True) -> LaunchConfig:
    """`kernel` in ("fwd_h", "fwd_o") for K, V ≤ 128, Dh ≤ 512 and chunks of BT ≤ 64 tokens;
    `fp32_operands`: q, k, v are fp32; `read_current`: the read kernel's `read="current"` (see the
    module docstring)."""
    pow2 = lambda x: max(16, next_power_of_2(x))
    K2, V2, D2 = pow2(K), pow2(V), pow2(DH)
    BC = max(16, BT)
    if kernel == "fwd_h":
        BK = min(K2, (16 if fp32_operands and V2 == 128 else 32) if BC == 64 else 64)
        BD = 32 if V2 <= 32 and BC <= 32 else 16
        return LaunchConfig(BK, BD, V2, 8 if BC == 64 or BC * V2 > 32 * 64 else 4, 1)
    if BC == 64:
        return LaunchConfig(min(K2, 32), 16, min(V2, 64), 8, 1)
    return LaunchConfig(min(K2, 64), min(D2, 32 if read_current else 16), min(V2, 64), 4, 2)
