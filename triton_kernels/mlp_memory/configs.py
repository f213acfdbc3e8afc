"""Launch configurations of the `mlp_memory` kernels: one table used by the launchers and by the
compile report (`aot.py`), so what is reported is what runs.

BK and BD are the key and hidden (Dh) tiles the kernels loop over, BV the value tile (the
recurrent kernel holds all of V: R and F are [BC, V]). Chosen by compiling the shipped shapes
for sm_90 and sm_80 with momentum, DGD and the self-target on (the most registers):
`nested-kernels compile-report --kernel mlp_memory`.
"""
from typing import NamedTuple

import triton


class LaunchConfig(NamedTuple):
    BK: int
    BD: int
    BV: int
    num_warps: int
    num_stages: int


def launch_config(kernel: str, K: int, V: int, DH: int, BT: int) -> LaunchConfig:
    """`kernel` in ("fwd_h", "fwd_o") for K, V ≤ 128 and chunks of BT ≤ 64 tokens."""
    pow2 = lambda x: max(16, triton.next_power_of_2(x))
    K2, V2, D2 = pow2(K), pow2(V), pow2(DH)
    BC = max(16, BT)
    if kernel == "fwd_h":
        BD = min(D2, 32 if BC * V2 <= 32 * 128 else 16)
        return LaunchConfig(min(K2, 64), BD, V2, 4 if BC * V2 <= 32 * 64 else 8, 1)
    BV = min(V2, 64)
    return LaunchConfig(min(K2, 64), min(D2, 32), BV, 4 if BC <= 32 else 8, 1)
