"""Launch configurations of the `linear_memory` kernels: one table used by the launchers and by
the compile report (`aot.py`), so what is reported is what runs.

Chosen by compiling candidate (value tile, warps, stages, key tile) for sm_90 and sm_80 with
every combination of momentum and DGD, and for `bwd_dh` with and without the final state's gradient
(`aot.flag_combinations`), with `benchmarks/linear_memory_spill_sweep.py`:
every entry is free of spills on sm_90 and on sm_80 (which compiles the same table) and fits the
shared memory of one block on both (232448 B on sm_90, 166912 B on sm_80). The key
tile BK bounds how many rows of K (and of the states) a kernel holds at once: `fwd_o` loops over
K in tiles of BK rows; the backward's parallel kernels (`bwd_dq`, `bwd_dk`, `bwd_dk_dgd`,
`bwd_dgd_inv`) run one program per key tile of BK rows, loop over V in tiles of BV columns and
share BK (their partial sums over key tiles share buffers); the recurrent ones (`fwd_h`,
`bwd_dh`) hold the state as at most two tiles (K ≤ 2·BK). num_stages
is per entry (it was fixed at 2): 1 wherever pipelining the loads only added registers (`bwd_dh` at
K = 256 with 32-token chunks spilled 48 B on sm_80 at 2, with DGD and no momentum), 2 where it took
some away (`bwd_dk` at K = 256 with 16-token chunks spilled 4 B there at 1), and 1 for `bwd_dh` with
64-token chunks and K ≥ 128, whose two stages of four BT × BT fp32 blocks and the Q and K tiles
needed more shared memory than a block may have.

`FP32_OPERANDS` replaces entries for fp32 operands (16-bit q, k, v loads converted to fp32 on Hopper
with Triton < 3.7.1, `utils/operand_precision.py`; fp32 inputs too), whose tiles take twice the
registers; chosen for sm_90 with the same sweep (`--operands fp32`, tf32 products). At K = 256,
and at K = 128 with 64-token chunks, the recurrences hold their states transposed on sm_90
(`transposed_states`, `--transposed 1`). With wgmma no candidate of the sweep was clean for the
reverse one with fp32 inputs at K = 256 and 32- or 64-token chunks (with 64-token chunks it holds
one 256-row tile, the (256, 64) entry, over SM90's two), the forward one at K = 256 with 64-token
chunks spilled 96 B under Triton 3.6, and with converted loads both spilled 332–1328 B at K ≥ 128
with 64-token chunks. Transposed, every entry but one is clean for fp32 inputs and converted loads
under Triton 3.8 and 3.6 (the (128, 64) entries: one 128-row tile, 8 warps, one stage); the
exception is the reverse one at K = 256 with 64-token chunks and converted loads (8–276 B for
every candidate of the sweep with momentum and DGD), where the backward makes fp32 copies instead
(`converts_loads`: the forward converts there too). On
sm_80 fp32 operands come only from fp32 inputs; with tf32 allowed, five of these configurations
spilled there (K ≥ 128, 64-token chunks) before the (128, 64) entries of `fwd_h` and `bwd_dh` became
one 128-row tile at 8 warps, which is clean on sm_80 too (held as it is; `bwd_dh`'s old entry, two
64-row tiles at 4 warps, spilled up to 328 B there): checked once with the sweep (`--arch 80
--operands fp32`), since CI's report has fp32-input rows for sm_90 alone. Every row of CI's report
compiles tf32 products; fp32 inputs without tf32 ("ieee", FMA) run the same entries, reported only
by `compile-report --fp32-inputs`, with sm_80's tf32 rows: many spill (exact fp32 products in all
seven kernels; with tf32 on sm_80, fwd_o and bwd_dh at K = 256 and bwd_dq at K ≥ 128, all with
64-token chunks, by 12–64 B: benchmarks/results/compile-fp32-inputs-2026-11-26.md). `bwd_dh` at
K = 128 with 32-token chunks holds the state as two 64-row tiles: one 128-row tile spilled 24 B without the final state's gradient; at K = 256 with
16-token chunks it pipelines two stages (one spilled 16 B there under Triton 3.6). So does
`bwd_dk_dgd` at K = 64 with 32-token chunks (with one, DGD without momentum spilled 8 B with
converted loads under Triton 3.6, and 20 B before the kernel read K per value tile).

`SM90` replaces entries on Hopper alone. `fwd_o` at K = 128 with 64-token chunks keeps 64-column
value tiles there (clean at 133–154 registers), where sm_80's mma.sync spills them (12–64 B with
16-bit states since the output kernel forms R = K M^c − V itself) and TABLE has 32. With
64-token chunks the backward's parallel kernels run
wgmma there, whose operands sit in shared memory, and take key tiles of 64 rows without spills
(sm_80's mma.sync holds them in registers and spills at 64, which is why TABLE has 32). Fewer key
tiles mean fewer partial sums of the gate and DGD-inverse gradients to write and add up (none at
K = 64), and fewer reads of dO, R, W and the chunk states, which every key tile's program reads in
full. `bwd_dh` at K = 256 with 64-token chunks holds the state as two 128-row tiles on Hopper and as
one 256-row tile on sm_80, where two tiles spilled 8 B without the final state's gradient and one
tile spills on sm_90 (16-bit operands; fp32 ones hold one transposed tile there,
FP32_OPERANDS). Chosen with the same sweep on sm_90 (bf16 and fp32 operands, Triton 3.8 and 3.6).
"""
from typing import NamedTuple, Optional

import torch

from ..utils.host_math import next_power_of_2
from ..utils.operand_precision import operand_dtype


class LaunchConfig(NamedTuple):
    BK: int
    BV: int
    num_warps: int
    num_stages: int


# kernel -> {(K bucket, BT): (BV, num_warps, num_stages, BK)}; K < 64 uses the K = 64 row. BK is
# the most rows of K a kernel holds at once (capped by K itself).
TABLE = {
    "fwd_h": {(64, 16): (32, 8, 2, 256), (64, 32): (32, 8, 2, 256), (64, 64): (32, 4, 2, 256),
              (128, 16): (32, 8, 2, 256), (128, 32): (32, 8, 2, 256), (128, 64): (16, 4, 2, 256),
              (256, 16): (16, 8, 2, 128), (256, 32): (16, 8, 2, 128), (256, 64): (16, 8, 2, 128)},
    "fwd_o": {(64, 16): (64, 8, 1, 64), (64, 32): (64, 8, 1, 64), (64, 64): (64, 8, 1, 64),
              (128, 16): (64, 8, 1, 64), (128, 32): (64, 8, 1, 64), (128, 64): (32, 8, 1, 32),
              (256, 16): (32, 4, 1, 64), (256, 32): (32, 8, 1, 64), (256, 64): (32, 8, 1, 64)},
    "bwd_dh": {(64, 16): (32, 8, 2, 256), (64, 32): (16, 4, 2, 256), (64, 64): (16, 4, 2, 256),
               (128, 16): (32, 8, 2, 256), (128, 32): (16, 8, 2, 256), (128, 64): (16, 4, 1, 256),
               (256, 16): (16, 8, 1, 128), (256, 32): (16, 4, 1, 128), (256, 64): (16, 8, 1, 256)},
    # the parallel kernels of the backward share their key tiling (one program per key tile; their
    # partial sums over key tiles share buffers)
    "bwd_dq": {(64, 16): (32, 8, 1, 64), (64, 32): (16, 8, 1, 64), (64, 64): (32, 8, 1, 32),
               (128, 16): (32, 8, 1, 128), (128, 32): (16, 8, 1, 64), (128, 64): (32, 8, 1, 32),
               (256, 16): (32, 8, 1, 128), (256, 32): (16, 8, 1, 64), (256, 64): (32, 8, 1, 32)},
    "bwd_dk": {(64, 16): (32, 8, 1, 64), (64, 32): (16, 8, 1, 64), (64, 64): (32, 8, 1, 32),
               (128, 16): (16, 8, 1, 128), (128, 32): (16, 8, 1, 64), (128, 64): (32, 8, 1, 32),
               (256, 16): (16, 8, 2, 128), (256, 32): (16, 8, 1, 64), (256, 64): (32, 8, 1, 32)},
    "bwd_dk_dgd": {(64, 16): (32, 8, 1, 64), (64, 32): (32, 8, 1, 64), (64, 64): (16, 8, 1, 32),
                   (128, 16): (32, 8, 1, 128), (128, 32): (32, 8, 1, 64), (128, 64): (16, 8, 1, 32),
                   (256, 16): (32, 8, 1, 128), (256, 32): (32, 8, 1, 64), (256, 64): (16, 8, 1, 32)},
    "bwd_dgd_inv": {(64, 16): (32, 8, 1, 64), (64, 32): (32, 8, 1, 64), (64, 64): (32, 8, 1, 32),
                    (128, 16): (32, 4, 1, 128), (128, 32): (32, 4, 1, 64), (128, 64): (32, 4, 1, 32),
                    (256, 16): (32, 4, 1, 128), (256, 32): (32, 4, 1, 64), (256, 64): (32, 4, 1, 32)}
}


# the entries that differ for fp32 operands
FP32_OPERANDS = {
    "fwd_h": {(128, 64): (16, 8, 1, 128), (256, 64): (16, 8, 1, 128)},
    "bwd_dh": {(64, 64): (16, 4, 1, 256), (128, 32): (16, 8, 2, 64), (128, 64): (16, 8, 1, 128),
               (256, 16): (16, 8, 2, 128), (256, 32): (16, 8, 2, 128), (256, 64): (16, 8, 1, 256)},
    "bwd_dk_dgd": {(64, 32): (16, 8, 2, 64), (128, 16): (16, 8, 1, 128), (128, 32): (16, 8, 1, 64),
                   (256, 16): (16, 8, 1, 128), (256, 32): (16, 8, 1, 64)},
}


# the entries that differ on sm_90 (both operand dtypes), before those of FP32_OPERANDS
SM90 = {part: {(D, 64): (32, 8, 1, 64) for D in (64, 128, 256)}
        for part in ("bwd_dq", "bwd_dk", "bwd_dk_dgd", "bwd_dgd_inv")}
SM90["fwd_o"] = {(128, 64): (64, 8, 1, 32)}
SM90["bwd_dh"] = {(256, 64): (16, 8, 1, 128)}


# the entries that differ on sm_90 with fp32 operands, after all of the above: timed on an H100
# (Triton 3.6, bf16 inputs with converted loads, B8-T2048-H16-D64 and B4-T4096-H16-D128, momentum,
# with and without DGD; benchmarks/results/config-sweep-h100-2026-11-27-7204b99-*), each kernel
# alone at its shipped entry and its neighbours. Each is the fastest candidate (fwd_o at K = 128:
# the least sum over both sweeps) that compiles clean (no spills; wgmma where the kernel had it) in
# every flag combination, for fp32 inputs and converted loads, under Triton 3.6 and 3.8
# (benchmarks/results/compile-check-sm90-fp32ops-2026-11-27.md, with the winners it turned away).
# Shipped → chosen ms, without DGD / with DGD where both were timed:
#   K = 64: fwd_o 0.247 → 0.166; bwd_dk 0.524 → 0.417.
#   K = 128: fwd_h 0.939 / 1.486 → 0.511 / 0.833; fwd_o 0.948 / 1.097 → 0.572 / 0.691;
#   bwd_dh 1.393 / 2.290 → 0.879 / 1.216; bwd_dq 1.279 / 1.621 → 1.030 / 1.283;
#   bwd_dk 1.722 / 2.029 → 1.426 / 1.665; bwd_dk_dgd 1.558 → 1.131; bwd_dgd_inv 1.094 → 0.605.
# Other shapes, and the 16-bit operands of Triton ≥ 3.7.1, were not timed and keep the entries
# above.
SM90_FP32_OPERANDS = {
    "fwd_h": {(128, 64): (32, 8, 2, 128)},
    "fwd_o": {(64, 64): (64, 4, 2, 64), (128, 64): (64, 4, 2, 32)},
    "bwd_dh": {(128, 64): (32, 8, 2, 128)},
    "bwd_dq": {(128, 64): (64, 8, 1, 64)},
    "bwd_dk": {(64, 64): (16, 4, 2, 64), (128, 64): (16, 4, 2, 64)},
    "bwd_dk_dgd": {(128, 64): (16, 4, 2, 64)},
    "bwd_dgd_inv": {(128, 64): (32, 4, 2, 64)},
}


# the entries (K bucket, BT) of the recurrent kernels that hold their states transposed with fp32
# operands on sm_90 (`transposed_states`): fp32 inputs and converted loads (`converts_loads`)
TRANSPOSED_STATES = {kernel: {(128, 64), (256, 16), (256, 32), (256, 64)} for kernel in ("fwd_h", "bwd_dh")}


def _pow2(n: int) -> int:
    """n rounded up to a power of two, at least 16 (the smallest tile)."""
    return max(16, next_power_of_2(n))


def converts_loads(K: int, BT: int, *, backward: bool) -> bool:
    """Whether the kernels of the forward (or of the `backward`, its recomputation of the chunk states
    included) take 16-bit q, k, v that need fp32 operands as they are and convert their loads
    (FP32_OPERANDS), rather than as fp32 copies made by the op. The forward's everywhere; the
    backward's everywhere but K = 256 with 64-token chunks, where bwd_dh spills with converted loads
    even with its state transposed (8–276 B with momentum and DGD for every candidate of
    `--operands bf16-fp32ops --transposed 1`): only the backward copies there (fwd_h, transposed,
    and fwd_o compile clean with converted loads at that shape, under Triton 3.8 and 3.6). At
    K = 128 with 64-token chunks and at K = 256 the recurrences take converted loads transposed
    (`transposed_states`): held as they are, with 64-token chunks they spilled 332–1128 B (fwd_h)
    and 32–1328 B (bwd_dh), and bwd_dh at K = 256 with 32-token chunks 12 B under Triton 3.6."""
    return not backward or _pow2(K) <= 128 or BT < 64


def needs_fp32_copies(k, BT: int, *, backward: bool) -> bool:
    """Whether the kernels of the forward (or of the `backward`) need fp32 copies of 16-bit keys `k`
    (and of q, v) from the op: where their products take fp32 operands (`utils/operand_precision.py`
    `operand_dtype`) and they do not convert their loads (`converts_loads`)."""
    return (k.dtype != torch.float32 and operand_dtype(k.device, k.dtype) == torch.float32
            and not converts_loads(k.shape[-1], BT, backward=backward))


def operands_in_fp32(k, BT: int, *, backward: bool) -> bool:
    """Whether the kernels' products take fp32 operands for keys `k`: fp32 inputs, their fp32 copies,
    or 16-bit loads the kernels convert, which only `converts_loads` shapes may get (of the forward,
    or of the `backward`)."""
    assert not needs_fp32_copies(k, BT, backward=backward), "fp32 copies expected here"
    return operand_dtype(k.device, k.dtype) == torch.float32


def launch_config(kernel: str, K: int, V: int, BT: int, fp32_operands: bool = False,
                  arch: Optional[int] = None) -> LaunchConfig:
    """`kernel` in TABLE; K ≤ 256 is read in tiles of BK rows, V is tiled by BV. `fp32_operands`:
    q, k, v, dO are fp32 (FP32_OPERANDS). `arch`: the device's sm_XY as XY (`utils/launch.py`
    `device_arch`; SM90 where it is 90, and SM90_FP32_OPERANDS with fp32 operands), None in the
    interpreter."""
    K_pow2 = _pow2(K)
    key = (max(K_pow2, 64), BT)
    entry = TABLE[kernel][key]
    if arch == 90:
        entry = SM90.get(kernel, {}).get(key, entry)
    if fp32_operands:
        entry = FP32_OPERANDS.get(kernel, {}).get(key, entry)
    if arch == 90 and fp32_operands:
        entry = SM90_FP32_OPERANDS.get(kernel, {}).get(key, entry)
    BV, num_warps, num_stages, BK = entry
    return LaunchConfig(min(BK, K_pow2), min(BV, _pow2(V)), num_warps, num_stages)


def transposed_states(kernel: str, K: int, BT: int, fp32_operands: bool, arch: Optional[int]) -> bool:
    """Whether recurrent `kernel` ("fwd_h", "bwd_dh") runs with TRANSPOSED (held_tiles.py): its
    products then have BV rows and run mma.sync, not wgmma. On sm_90 with fp32 operands at K = 256
    and at K = 128 with 64-token chunks (TRANSPOSED_STATES; README.md, "The transposed states"):
    where wgmma's tf32 steps spilled for fp32 inputs or converted loads. One table serves both, so
    fp32 inputs also run transposed where only converted loads spilled (K = 128 with 64-token
    chunks, fwd_h at K = 256 below 64-token chunks; their time either way is not measured)."""
    return arch == 90 and fp32_operands and (max(_pow2(K), 64), BT) in TRANSPOSED_STATES.get(kernel, ())
