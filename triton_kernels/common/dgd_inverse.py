"""The DGD system of each chunk (nested_kernels/common/chunk_state.py `dgd_inverse`, SPEC §2):
(I + L)^{-1} with L_tj = (k_t·k_j) E_{t−1, j} strictly lower, one program per (chunk, head),
blocked in 16 × 16 tiles (NB = C / 16 tile rows; X = (I + L)^{-1}, also block lower triangular).
L is formed first, from one C × C product K Kᵀ (at the op's input precision, `dot_precision`: on
the matrix units for 16-bit inputs, whose values tf32 holds exactly; exact fp32 for fp32 inputs
unless torch allows tf32), and stored into the output (zeros above the diagonal, which stay),
where the inverse is then formed; for linear_memory's forward the same product times G is also
stored as its DGD product kk_write (`chunk_products` need not run there). The diagonal tiles are
inverted by forward substitution in registers, row r of every tile in one step,
    X_ii = (I + L_ii)^{-1}:  X_ii[r, :] = e_r − Σ_{s<r} L_ii[r, s] X_ii[s, :],
each row of L_ii loaded from where it was stored (as fla's solve_tril reads its rows of A), and
X_ii held transposed, so that the row's sum is within a warp; then the tiles below the diagonal
by block forward substitution, two to four tile products each, with L_im loaded back,
    X_ij = −X_ii Σ_{m=j}^{i−1} L_im X_mj   (i > j);
then, once no warp reads L any more, every tile of X on and below the diagonal is stored over it.

History, all at B8 T2048 H16 D64, chunk 64: the row-by-row substitution over the whole C × C
matrix took 1.84 ms of the 2.79 ms DGD forward on an H200 (benchmarks/results/h200-2026-11-26.md);
the blocked form with the diagonal tiles one after the other 1.43 ms of 2.06 on an H100
(h100-2026-11-27.md), a chain of 60 rows with two cross-warp reductions each (321 barriers in its
sm_90 code under Triton 3.6). All diagonal tiles per row (dc11f88): 15 rows with one cross-warp
reduction each (three barriers a row in the loop). Then, in sm_90 SASS under Triton 3.6 and 3.8,
every shipped configuration: the loaded rows (051596b) left the substitution loop without barrier
or shared memory at chunks 32 and 64 (at 16, unrolled, 58 barriers became 14); the batched L
(5e7ff14), one exchange of operands per block of keys instead of one per tile, took chunk 64
with 64 keys from 100 barriers to 45 and from 2216 instructions to 1568, at 128 registers (chunk
16, unrolled: 14 barriers). With all three, 0.48 ms on an H100 at B8 T2048 H16 D64 (0.77 at D128,
under the profiler: benchmarks/results/h100-2026-11-27-7204b99.md); none of the three was timed
alone. That batched L was exact fp32 for every input: a loop over blocks of 16 keys, each an FMA
product of 16 tile pairs (532 FFMA in the sm_90 code of bf16's chunk 64 under Triton 3.8). L as
one C × C product on tf32 for 16-bit inputs (the kernel as it is): 8 wgmma at K = 64, 16 at
K = 128, and 276 FFMA in all (the substitution's), 1296 instructions at K = 64 where there were
1520, with 53 barriers where there were 45 (61 at K = 128: the products' operands pass through
shared memory, block by block); and linear_memory's DGD forward launches one kernel fewer. Not
timed on a card. Replaces a batched K Kᵀ, a mask and `torch.linalg.solve_triangular` on
[H, NC, C, C].

Its backward, one program per (chunk, head) as well: with A = I + L and inv = A^{-1},
dA = −invᵀ d(inv) invᵀ, kept strictly lower (dL); L = (K Kᵀ) ⊙ E_prev gives
dE_prev = dL ⊙ (K Kᵀ) (E's last row is not in L: 0) and dK = (dL ⊙ E_prev + (dL ⊙ E_prev)ᵀ) K.
Replaces fp32 copies of K, three batched products, a mask and a zero-filled dE in PyTorch. K Kᵀ
is recomputed as in the forward (it was exact fp32 FMA for every input, 544 FFMA in the sm_90 code
of bf16's chunk 64, now 32; on tf32, fp32 inputs where torch allows it spill 4 B at K = 64, chunk
64 on sm_80 under Triton 3.6, `compile-report --fp32-inputs`); the three other products run on
the matrix units at the op's input precision (`dot_precision`: tf32 for 16-bit inputs, whose fp32
copies included), except that exact fp32 ("ieee", fp32 inputs) becomes three-pass tf32
("tf32x3", close to fp32): exact fp32 FMA products of C × C blocks spilled kilobytes. dA is summed
over blocks of 32 columns at C = 64: two 64 × 64 tf32x3 products with their operands in registers
(sm_80's mma.sync holds each split in high and low parts) spilled 360 B there."""
import torch
import triton
import triton.language as tl

from ..utils import launch as launcher           # module attributes: tests patch them

from ..utils.operand_precision import dot_precision


TILE = tl.constexpr(16)          # the tiles of the forward's blocked inverse


@triton.jit
def _kk(k, o_tok, i_h, H: tl.constexpr, K: tl.constexpr, C: tl.constexpr, BK: tl.constexpr,
        KK_PRECISION: tl.constexpr):
    """K Kᵀ [C, C] of the tokens `o_tok` (C rows of the flat layout) of one head, on fp32 operands at
    the op's input precision (`dot_precision`): tf32 for 16-bit inputs, which it holds exactly (exact
    products on the matrix units, summed in fp32), exact fp32 for fp32 inputs unless torch allows tf32."""
    kk = tl.zeros([C, C], dtype=tl.float32)
    for k0 in range(0, K, BK):
        o_k = k0 + tl.arange(0, BK)
        b_k = tl.load(k + (o_tok[:, None] * H + i_h) * K + o_k[None, :], mask=o_k[None, :] < K, other=0.0)
        b_k = b_k.to(tl.float32)
        kk = tl.dot(b_k, tl.trans(b_k), kk, input_precision=KK_PRECISION)
    return kk


@triton.jit
def _tile_offsets(o_chunk, ti, tj, C: tl.constexpr):
    """Offsets of tile (ti, tj) of a chunk's C × C matrix in [H, NC, C, C], [TILE, TILE]."""
    o = tl.arange(0, TILE)
    return (o_chunk * C + ti * TILE + o[:, None]) * C + tj * TILE + o[None, :]


@triton.jit
def _store_l(k, dgd_write, write, inv, kk_write, i_c, i_h, o_chunk, H: tl.constexpr, K: tl.constexpr,
             C: tl.constexpr, BK: tl.constexpr, KK_PRECISION: tl.constexpr):
    """L = (K Kᵀ) ⊙ E_prev, strictly lower, into `inv` (zeros above the diagonal, where they stay),
    from one C × C product; with `kk_write` also (K Kᵀ) ⊙ G_prev there (`chunk_products`' kk_write,
    which the chunk kernels read with DGD: K Kᵀ once per chunk)."""
    o = tl.arange(0, C)
    rows, cols = o[:, None], o[None, :]
    kk = _kk(k, i_c * C + o, i_h, H, K, C, BK, KK_PRECISION)
    o_prev = (o_chunk * (C + 1) + rows) * C + cols                            # rows 0..C−1 of the gates
    o_mat = (o_chunk * C + rows) * C + cols
    tl.store(inv + o_mat, tl.where(rows > cols, kk * tl.load(dgd_write + o_prev), 0.0))
    if kk_write is not None:
        tl.store(kk_write + o_mat, kk * tl.load(write + o_prev))


@triton.jit
def _diagonal_inverses(inv, o_chunk, C: tl.constexpr):
    """X_ii = (I + L_ii)^{-1} of every diagonal tile at once, by forward substitution, one row of all
    NB tiles per step:  X_ii[r, :] = e_r − Σ_s L_ii[r, s] X_ii[s, :].
    Returned transposed, `[NB, TILE, TILE]` (tile, column c, row s) = X_ii[s, c], so that the sum over
    s is a reduction over the last axis, within a warp. Row r of L_ii is loaded at each step from
    the diagonal tiles of `inv` (`_store_l`): a load, which no step waits on, in place of
    a reduction of L's registers."""
    NB: tl.constexpr = C // TILE
    o_b, o = tl.arange(0, NB), tl.arange(0, TILE)
    tiles, rows, cols = o_b[:, None, None], o[None, :, None], o[None, None, :]
    xt = tl.where(rows == cols, 1.0, 0.0) + tl.zeros([NB, TILE, TILE], dtype=tl.float32)
    for r in range(1, TILE):
        l_row = tl.load(inv + (o_chunk * C + tiles * TILE + r) * C + tiles * TILE + cols)   # [NB, 1, TILE]: L_ii[r, s]
        row = tl.where(o[None, :] == r, 1.0, 0.0) - tl.sum(l_row * xt, axis=2)             # [NB, TILE]: X_ii[r, c]
        xt = tl.where(cols == r, row[:, :, None], xt)
    return xt


@triton.jit
def _tile_of(xt, i: tl.constexpr):
    """Tile i of `[NB, TILE, TILE]` tiles held transposed (`_diagonal_inverses`), as a tile."""
    return tl.trans(tl.sum(tl.where(tl.arange(0, xt.shape[0])[:, None, None] == i, xt, 0.0), axis=0))


@triton.jit
def _dot(a, b):
    return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _l(inv, o_chunk, TI: tl.constexpr, TJ: tl.constexpr, C: tl.constexpr):
    """L_ij (TI > TJ), where `_store_l` put it."""
    return tl.load(inv + _tile_offsets(o_chunk, TI, TJ, C))


@triton.jit
def _store(inv, o_chunk, TI: tl.constexpr, TJ: tl.constexpr, C: tl.constexpr, x):
    tl.store(inv + _tile_offsets(o_chunk, TI, TJ, C), x)


@triton.jit(do_not_specialize=["NC"])
def dgd_inverse_kernel(k, dgd_write, write, inv, kk_write, NC, H: tl.constexpr, K: tl.constexpr, C: tl.constexpr,
                       BK: tl.constexpr, KK_PRECISION: tl.constexpr):
    """L into inv (and, with `kk_write`, the DGD product there); the diagonal tiles' inverses from
    their rows; the tiles below the diagonal by block forward substitution, with L_ij loaded back;
    then, once no warp reads L, every tile of X on and below the diagonal stored over it."""
    tl.static_assert(C == TILE or C == 2 * TILE or C == 4 * TILE, "chunk sizes 16, 32, 64")
    i_c, i_h = tl.program_id(0).to(tl.int64), tl.program_id(1)
    o_chunk = i_h * NC + i_c
    _store_l(k, dgd_write, write, inv, kk_write, i_c, i_h, o_chunk, H, K, C, BK, KK_PRECISION)
    tl.debug_barrier()                                       # L stored before any warp reads it
    x_diag = _diagonal_inverses(inv, o_chunk, C)
    x00 = _tile_of(x_diag, 0)
    if C >= 2 * TILE:
        x11 = _tile_of(x_diag, 1)
        x10 = -_dot(x11, _dot(_l(inv, o_chunk, 1, 0, C), x00))
    if C == 4 * TILE:
        x22, x33 = _tile_of(x_diag, 2), _tile_of(x_diag, 3)
        l21, l31, l32 = _l(inv, o_chunk, 2, 1, C), _l(inv, o_chunk, 3, 1, C), _l(inv, o_chunk, 3, 2, C)
        x21 = -_dot(x22, _dot(l21, x11))
        x20 = -_dot(x22, _dot(_l(inv, o_chunk, 2, 0, C), x00) + _dot(l21, x10))
        x32 = -_dot(x33, _dot(l32, x22))
        x31 = -_dot(x33, _dot(l31, x11) + _dot(l32, x21))
        x30 = -_dot(x33, _dot(_l(inv, o_chunk, 3, 0, C), x00) + _dot(l31, x10) + _dot(l32, x20))
    tl.debug_barrier()                                       # every read of L done before X goes over it
    _store(inv, o_chunk, 0, 0, C, x00)
    if C >= 2 * TILE:
        _store(inv, o_chunk, 1, 0, C, x10)
        _store(inv, o_chunk, 1, 1, C, x11)
    if C == 4 * TILE:
        _store(inv, o_chunk, 2, 0, C, x20)
        _store(inv, o_chunk, 2, 1, C, x21)
        _store(inv, o_chunk, 2, 2, C, x22)
        _store(inv, o_chunk, 3, 0, C, x30)
        _store(inv, o_chunk, 3, 1, C, x31)
        _store(inv, o_chunk, 3, 2, C, x32)
        _store(inv, o_chunk, 3, 3, C, x33)


@triton.jit(do_not_specialize=["NC"])
def dgd_inverse_bwd_kernel(k, dgd_write, inv, d_inv, dk_partial, dk, d_dgd_write, NC, H: tl.constexpr,
                           K: tl.constexpr, C: tl.constexpr, BK: tl.constexpr, DOT_PRECISION: tl.constexpr,
                           KK_PRECISION: tl.constexpr):
    """dK (plus `dk_partial`, fp32, where given: the rest of the caller's dK, added before dK's one
    rounding to its dtype) and dE_prev through inv = (I + L)^{-1}."""
    i_c, i_h = tl.program_id(0).to(tl.int64), tl.program_id(1)
    o = tl.arange(0, C)
    rows, cols = o[:, None], o[None, :]
    o_tok = i_c * C + o
    o_chunk = i_h * NC + i_c
    # dA = invᵀ d(inv) invᵀ = Σ_b (Σ_a invᵀ[:, a] d(inv)[a, b]) invᵀ[b, :] over column blocks a, b of BB,
    # each block read by address (invᵀ transposed): no C × C right operand is live
    BB: tl.constexpr = C // 2 if C > 32 else C
    o_b = tl.arange(0, BB)
    b_da = tl.zeros([C, C], dtype=tl.float32)
    for b in tl.static_range(0, C, BB):
        b_z = tl.zeros([C, BB], dtype=tl.float32)
        for a in tl.static_range(0, C, BB):
            b_inv_t = tl.load(inv + (o_chunk * C + a + o_b[None, :]) * C + rows)
            b_d_inv = tl.load(d_inv + (o_chunk * C + a + o_b[:, None]) * C + b + o_b[None, :])
            b_z = tl.dot(b_inv_t, b_d_inv, b_z, input_precision=DOT_PRECISION)
        b_inv_t = tl.load(inv + (o_chunk * C + cols) * C + b + o_b[:, None])
        b_da = tl.dot(b_z, b_inv_t, b_da, input_precision=DOT_PRECISION)
    b_dl = tl.where(rows > cols, -b_da, 0.0)                                  # dL = strictly lower part of dA
    o_e = (o_chunk * (C + 1) + rows) * C + cols                               # E rows 0..C−1: E_prev
    tl.store(d_dgd_write + o_e, b_dl * _kk(k, o_tok, i_h, H, K, C, BK, KK_PRECISION))
    tl.store(d_dgd_write + (o_chunk * (C + 1) + C) * C + o, tl.zeros([C], dtype=tl.float32))
    b_dkk = b_dl * tl.load(dgd_write + o_e)                                   # d(K Kᵀ)
    b_dkk += tl.trans(b_dkk)
    for k0 in range(0, K, BK):
        o_tk = (o_tok[:, None] * H + i_h) * K + k0 + tl.arange(0, BK)[None, :]
        m_k = k0 + tl.arange(0, BK)[None, :] < K
        b_k = tl.load(k + o_tk, mask=m_k, other=0.0).to(tl.float32)
        b_dk = tl.dot(b_dkk, b_k, input_precision=DOT_PRECISION)
        if dk_partial is not None:
            b_dk += tl.load(dk_partial + o_tk, mask=m_k, other=0.0)
        tl.store(dk + o_tk, b_dk.to(dk.dtype.element_ty), mask=m_k)


def launch_params(part: str, C: int) -> dict:
    """BK (the blocks of K in K Kᵀ, and of dK in the backward) and num_warps of the forward ("fwd":
    16 × 16 tiles) and the backward ("bwd": C × C blocks). The forward at C = 64 takes 8 warps: with
    4 its batched L of tile pairs held 230 registers (Triton 3.6, sm_90; 16 warps used a 16-byte
    stack). With 8, BK = 16 and L as one C × C product it holds 128 on sm_90 (Triton 3.6 and 3.8), so
    two programs share an SM; on sm_80 up to 142 for 16-bit inputs at K ≥ 64 (one program per SM;
    not timed; BK = 32 or 64 spilled the backward there under Triton 3.6). The backward
    at C = 64 takes 4 warps: timed alone on an H100 (Triton 3.6, the DGD backward of the benchmark's
    first two shapes, benchmarks/results/config-sweep-h100-2026-11-27-7204b99-*), 4 warps took
    0.36 ms at K = 64 and 0.59 at K = 128, the 8 it had 0.67 and 1.09. 2 warps were faster (0.28,
    0.44), but the compile report (Triton 3.8, sm_90) finds them spilling with fp32 keys (16 B;
    464 B for tf32x3) and on mma rather than wgmma; 16 warps broke the CUDA context there."""
    return dict(BK=16, num_warps={16: 4, 32: 4, 64: {"fwd": 8, "bwd": 4}[part]}[C])


def dgd_inverse_fwd(k, dgd_write, *, input_dtype=None, write=None):
    """k `[T', H, K]` (flat chunk layout, any float dtype), dgd_write `[H, NC, C+1, C]` fp32
    contiguous. Returns (I + L)^{-1} `[H, NC, C, C]` fp32. `input_dtype` is the op's (default k's;
    k may be an fp32 copy of 16-bit keys): the precision of K Kᵀ. With `write` (G `[H, NC, C+1, C]`
    fp32 contiguous) returns (inv, kk_write): also `chunk_products`' K Kᵀ ⊙ G_{0..C−1}, from the
    same product."""
    Tp, H, K = k.shape
    _, NC, _, C = dgd_write.shape
    new = lambda: torch.empty(H, NC, C, C, dtype=torch.float32, device=k.device)
    inv, kk_write = new(), None if write is None else new()
    launcher.launch(dgd_inverse_kernel, (NC, H), k.device, k, dgd_write, write, inv, kk_write, NC, H=H, K=K, C=C,
                    KK_PRECISION=dot_precision(input_dtype or k.dtype), **launch_params("fwd", C))
    return inv if write is None else (inv, kk_write)


def dgd_inverse_bwd(k, dgd_write, inv, d_inv, *, input_dtype, dk_partial=None):
    """The gradients of k `[T', H, K]` (in k's dtype) and of dgd_write `[H, NC, C+1, C]` (fp32)
    through inv = `dgd_inverse_fwd(k, dgd_write)`, given d_inv; every tensor contiguous.
    `input_dtype` is the op's (k may be an fp32 copy of 16-bit keys): its products' precision.
    `dk_partial` (fp32, like k): the caller's other part of dK, added in the kernel before the
    store (no fp32 sum and cast after it: two elementwise passes over dK)."""
    Tp, H, K = k.shape
    _, NC, _, C = dgd_write.shape
    dk, d_dgd_write = torch.empty_like(k), torch.empty_like(dgd_write)
    kk_precision = dot_precision(input_dtype)                                 # K Kᵀ as in the forward
    precision = {"ieee": "tf32x3"}.get(kk_precision, "tf32")                  # tf32x3: exact fp32 spilled
    launcher.launch(dgd_inverse_bwd_kernel, (NC, H), k.device, k, dgd_write, inv, d_inv, dk_partial, dk, d_dgd_write,
                    NC, H=H, K=K, C=C, DOT_PRECISION=precision, KK_PRECISION=kk_precision,
                    **launch_params("bwd", C))
    return dk, d_dgd_write
