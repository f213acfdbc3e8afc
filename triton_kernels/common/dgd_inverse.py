"""The DGD system of each chunk (nested_kernels/common/chunk_state.py `dgd_inverse`, SPEC §2):
(I + L)^{-1} with L_tj = (k_t·k_j) E_{t−1, j} strictly lower, one program per (chunk, head),
blocked in 16 × 16 tiles (NB = C / 16 tile rows; X = (I + L)^{-1}, also block lower triangular):
the diagonal tiles by forward substitution in registers, row r of every tile in one step,
    X_ii = (I + L_ii)^{-1}:  X_ii[r, :] = e_r − Σ_{s<r} L_ii[r, s] X_ii[s, :],
then the tiles below the diagonal by block forward substitution, two to four tile products each,
    X_ij = −X_ii Σ_{m=j}^{i−1} L_im X_mj   (i > j),
where L_im = (K_i K_mᵀ) ⊙ E_prev[i, m] is formed per tile (exact fp32 products). The row-by-row
substitution over the whole C × C matrix it replaces took 1.84 ms of the 2.79 ms DGD forward at
B8 T2048 H16 D64, chunk 64, on an H200 (benchmarks/results/h200-2026-11-26.md); the blocked form
with the diagonal tiles one after the other took 1.43 ms of 2.06 there on an H100
(h100-2026-11-27.md), a chain of 60 rows with two cross-warp reductions each (321 barriers in its
sm_90 code under Triton 3.6). All tiles per row (dc11f88): 15 rows with one cross-warp reduction
each (three barriers a row in the loop's sm_90 code). Now each row of L_ii is loaded from where it
was stored (fla's solve_tril reads its rows of A the same way) and X_ii is held transposed, so the
row's sum is within a warp: at chunks 32 and 64 the loop has no barrier and no shared memory
(SASS of Triton 3.6 and 3.8, sm_90, every shipped configuration), and at chunk 16, unrolled, the
kernel has 14 barriers instead of 58. Neither of the last two is timed on a card yet.
Replaces a batched K Kᵀ, a mask and `torch.linalg.solve_triangular` on [H, NC, C, C].

Its backward, one program per (chunk, head) as well: with A = I + L and inv = A^{-1},
dA = −invᵀ d(inv) invᵀ, kept strictly lower (dL); L = (K Kᵀ) ⊙ E_prev gives
dE_prev = dL ⊙ (K Kᵀ) (E's last row is not in L: 0) and dK = (dL ⊙ E_prev + (dL ⊙ E_prev)ᵀ) K.
Replaces fp32 copies of K, three batched products, a mask and a zero-filled dE in PyTorch. K Kᵀ
is recomputed in exact fp32 as in the forward; the three other products run on the matrix units
at the op's input precision (`dot_precision`: tf32 for 16-bit inputs, whose fp32 copies
included), except that exact fp32 ("ieee", fp32 inputs) becomes three-pass tf32 ("tf32x3", close
to fp32): exact fp32 FMA products of C × C blocks spilled kilobytes. dA is summed over blocks of
32 columns at C = 64: two 64 × 64 tf32x3 products with their operands in registers (sm_80's
mma.sync holds each split in high and low parts) spilled 360 B there."""
import torch
import triton
import triton.language as tl

from ..utils import launch as launcher           # module attributes: tests patch them

from ..utils.operand_precision import dot_precision


TILE = tl.constexpr(16)          # the tiles of the forward's blocked inverse


@triton.jit
def _kk_block(k, o_rows, o_cols, i_h, H: tl.constexpr, K: tl.constexpr, R: tl.constexpr, S: tl.constexpr,
              BK: tl.constexpr):
    """k_t·k_j [R, S] for the tokens `o_rows` (R) and `o_cols` (S) of one head (rows of the flat
    layout), exact fp32."""
    kk = tl.zeros([R, S], dtype=tl.float32)
    for k0 in range(0, K, BK):
        o_k = k0 + tl.arange(0, BK)
        b_k = tl.load(k + (o_rows[:, None] * H + i_h) * K + o_k[None, :], mask=o_k[None, :] < K, other=0.0)
        b_kt = tl.load(k + (o_cols[None, :] * H + i_h) * K + o_k[:, None], mask=o_k[:, None] < K, other=0.0)
        kk += tl.dot(b_k.to(tl.float32), b_kt.to(tl.float32), input_precision="ieee")
    return kk


@triton.jit
def _l_tile(k, dgd_write, i_c, i_h, o_chunk, TI: tl.constexpr, TJ: tl.constexpr, H: tl.constexpr,
            K: tl.constexpr, C: tl.constexpr, BK: tl.constexpr):
    """L_ij: tile (TI, TJ) of L = (K Kᵀ) ⊙ E_prev below the diagonal (TI > TJ)."""
    o = tl.arange(0, TILE)
    rows, cols = o + TI * TILE, o + TJ * TILE
    kk = _kk_block(k, i_c * C + rows, i_c * C + cols, i_h, H, K, TILE, TILE, BK)
    return kk * tl.load(dgd_write + (o_chunk * (C + 1) + rows[:, None]) * C + cols[None, :])   # E rows 0..C−1


@triton.jit
def _diagonal_inverses(k, dgd_write, inv, i_c, i_h, o_chunk, H: tl.constexpr, K: tl.constexpr, C: tl.constexpr,
                       BK: tl.constexpr):
    """X_ii = (I + L_ii)^{-1} of every diagonal tile at once, by forward substitution, one row of all
    NB tiles per step:  X_ii[r, :] = e_r − Σ_s L_ii[r, s] X_ii[s, :].
    Returned transposed, `[NB, TILE, TILE]` (tile, column c, row s) = X_ii[s, c], so that the sum over
    s is a reduction over the last axis, within a warp. Row r of L_ii is loaded at each step from
    the diagonal tiles of `inv` (their final X_ii is stored over them later), where it was stored
    first: a load, which no step waits on, in place of a reduction of L's registers."""
    NB: tl.constexpr = C // TILE
    o_b, o = tl.arange(0, NB), tl.arange(0, TILE)
    tiles, rows, cols = o_b[:, None, None], o[None, :, None], o[None, None, :]
    tok_r = i_c * C + tiles * TILE + rows                                   # [NB, TILE, 1]: the token of r
    tok_s = i_c * C + tiles * TILE + cols                                   # [NB, 1, TILE]: the token of s
    kk = tl.zeros([NB, TILE, TILE], dtype=tl.float32)                       # k_r·k_s
    for k0 in range(0, K, BK):
        o_k = k0 + tl.arange(0, BK)
        m_k = o_k < K
        b_k = tl.load(k + (tok_r * H + i_h) * K + o_k[None, None, :], mask=m_k[None, None, :], other=0.0)
        b_kt = tl.load(k + (tok_s * H + i_h) * K + o_k[None, :, None], mask=m_k[None, :, None], other=0.0)
        kk = tl.dot(b_k.to(tl.float32), b_kt.to(tl.float32), kk, input_precision="ieee")
    o_tiles = (o_chunk * C + tiles * TILE + rows) * C + tiles * TILE + cols    # [i, r, s]: the tiles in inv
    e = tl.load(dgd_write + (o_chunk * (C + 1) + tiles * TILE + rows) * C + tiles * TILE + cols)   # E[r, s]
    tl.store(inv + o_tiles, tl.where(rows > cols, kk * e, 0.0))             # L_ii, strictly lower
    tl.debug_barrier()                                                      # stored before any row is read
    xt = tl.where(rows == cols, 1.0, 0.0) + tl.zeros([NB, TILE, TILE], dtype=tl.float32)
    for r in range(1, TILE):
        l_row = tl.load(inv + (o_chunk * C + tiles * TILE + r) * C + tiles * TILE + cols)   # [NB, 1, TILE]: L_ii[r, s]
        row = tl.where(o[None, :] == r, 1.0, 0.0) - tl.sum(l_row * xt, axis=2)             # [NB, TILE]: X_ii[r, c]
        xt = tl.where(cols == r, row[:, :, None], xt)
    tl.debug_barrier()                                                      # every row read before X_ii is stored
    return xt


@triton.jit
def _tile_of(xt, i: tl.constexpr):
    """Tile i of `[NB, TILE, TILE]` tiles held transposed (`_diagonal_inverses`), as a tile."""
    return tl.trans(tl.sum(tl.where(tl.arange(0, xt.shape[0])[:, None, None] == i, xt, 0.0), axis=0))


@triton.jit
def _dot(a, b):
    return tl.dot(a, b, input_precision="ieee")


@triton.jit
def _store_tile(inv, o_chunk, TI: tl.constexpr, TJ: tl.constexpr, C: tl.constexpr, x):
    o = tl.arange(0, TILE)
    tl.store(inv + (o_chunk * C + o[:, None] + TI * TILE) * C + o[None, :] + TJ * TILE, x)


@triton.jit(do_not_specialize=["NC"])
def dgd_inverse_kernel(k, dgd_write, inv, NC, H: tl.constexpr, K: tl.constexpr, C: tl.constexpr,
                       BK: tl.constexpr):
    tl.static_assert(C == TILE or C == 2 * TILE or C == 4 * TILE, "chunk sizes 16, 32, 64")
    i_c, i_h = tl.program_id(0).to(tl.int64), tl.program_id(1)
    o_chunk = i_h * NC + i_c
    for ti in tl.static_range(C // TILE):                    # above the diagonal: 0
        for tj in tl.static_range(ti + 1, C // TILE):
            _store_tile(inv, o_chunk, ti, tj, C, tl.zeros([TILE, TILE], dtype=tl.float32))
    x_diag = _diagonal_inverses(k, dgd_write, inv, i_c, i_h, o_chunk, H, K, C, BK)
    x00 = _tile_of(x_diag, 0)
    _store_tile(inv, o_chunk, 0, 0, C, x00)
    if C >= 2 * TILE:
        x11 = _tile_of(x_diag, 1)
        l10 = _l_tile(k, dgd_write, i_c, i_h, o_chunk, 1, 0, H, K, C, BK)
        _store_tile(inv, o_chunk, 1, 1, C, x11)
        x10 = -_dot(x11, _dot(l10, x00))
        _store_tile(inv, o_chunk, 1, 0, C, x10)
    if C == 4 * TILE:                                        # each tile stored once final: short live ranges
        x22 = _tile_of(x_diag, 2)
        _store_tile(inv, o_chunk, 2, 2, C, x22)
        l21 = _l_tile(k, dgd_write, i_c, i_h, o_chunk, 2, 1, H, K, C, BK)
        x21 = -_dot(x22, _dot(l21, x11))
        _store_tile(inv, o_chunk, 2, 1, C, x21)
        x20 = -_dot(x22, _dot(_l_tile(k, dgd_write, i_c, i_h, o_chunk, 2, 0, H, K, C, BK), x00) + _dot(l21, x10))
        _store_tile(inv, o_chunk, 2, 0, C, x20)
        x33 = _tile_of(x_diag, 3)
        _store_tile(inv, o_chunk, 3, 3, C, x33)
        l32 = _l_tile(k, dgd_write, i_c, i_h, o_chunk, 3, 2, H, K, C, BK)
        _store_tile(inv, o_chunk, 3, 2, C, -_dot(x33, _dot(l32, x22)))
        l31 = _l_tile(k, dgd_write, i_c, i_h, o_chunk, 3, 1, H, K, C, BK)
        _store_tile(inv, o_chunk, 3, 1, C, -_dot(x33, _dot(l31, x11) + _dot(l32, x21)))
        l30 = _l_tile(k, dgd_write, i_c, i_h, o_chunk, 3, 0, H, K, C, BK)
        _store_tile(inv, o_chunk, 3, 0, C, -_dot(x33, _dot(l30, x00) + _dot(l31, x10) + _dot(l32, x20)))


@triton.jit(do_not_specialize=["NC"])
def dgd_inverse_bwd_kernel(k, dgd_write, inv, d_inv, dk, d_dgd_write, NC, H: tl.constexpr, K: tl.constexpr,
                           C: tl.constexpr, BK: tl.constexpr, DOT_PRECISION: tl.constexpr):
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
    tl.store(d_dgd_write + o_e, b_dl * _kk_block(k, o_tok, o_tok, i_h, H, K, C, C, BK))
    tl.store(d_dgd_write + (o_chunk * (C + 1) + C) * C + o, tl.zeros([C], dtype=tl.float32))
    b_dkk = b_dl * tl.load(dgd_write + o_e)                                   # d(K Kᵀ)
    b_dkk += tl.trans(b_dkk)
    for k0 in range(0, K, BK):
        o_tk = (o_tok[:, None] * H + i_h) * K + k0 + tl.arange(0, BK)[None, :]
        m_k = k0 + tl.arange(0, BK)[None, :] < K
        b_k = tl.load(k + o_tk, mask=m_k, other=0.0).to(tl.float32)
        tl.store(dk + o_tk, tl.dot(b_dkk, b_k, input_precision=DOT_PRECISION).to(dk.dtype.element_ty), mask=m_k)


def launch_params(part: str, C: int) -> dict:
    """BK (the blocks of K in K Kᵀ) and num_warps of the forward ("fwd": 16 × 16 tiles) and the
    backward ("bwd": C × C blocks; exact fp32 K Kᵀ products are FMA loops, short operands). The
    forward at C = 64 needs 8 warps: with 4 it held 167–184 registers (Triton 3.6, sm_90), and
    BK = 32 held 136–142 at 8 warps, BK = 16 128–132 (bf16 keys): at most 128 lets two programs
    share an SM."""
    return dict(BK=16, num_warps={16: 4, 32: 4, 64: 8}[C])


def dgd_inverse_fwd(k, dgd_write):
    """k `[T', H, K]` (flat chunk layout, any float dtype), dgd_write `[H, NC, C+1, C]` fp32
    contiguous. Returns (I + L)^{-1} `[H, NC, C, C]` fp32."""
    Tp, H, K = k.shape
    _, NC, _, C = dgd_write.shape
    inv = torch.empty(H, NC, C, C, dtype=torch.float32, device=k.device)
    launcher.launch(dgd_inverse_kernel, (NC, H), k.device, k, dgd_write, inv, NC, H=H, K=K, C=C,
                    **launch_params("fwd", C))
    return inv


def dgd_inverse_bwd(k, dgd_write, inv, d_inv, *, input_dtype):
    """The gradients of k `[T', H, K]` (in k's dtype) and of dgd_write `[H, NC, C+1, C]` (fp32)
    through inv = `dgd_inverse_fwd(k, dgd_write)`, given d_inv; every tensor contiguous.
    `input_dtype` is the op's (k may be an fp32 copy of 16-bit keys): its products' precision."""
    Tp, H, K = k.shape
    _, NC, _, C = dgd_write.shape
    dk, d_dgd_write = torch.empty_like(k), torch.empty_like(dgd_write)
    precision = {"ieee": "tf32x3"}.get(dot_precision(input_dtype), "tf32")   # tf32x3: exact fp32 spilled
    launcher.launch(dgd_inverse_bwd_kernel, (NC, H), k.device, k, dgd_write, inv, d_inv, dk, d_dgd_write, NC, H=H,
                    K=K, C=C, DOT_PRECISION=precision, **launch_params("bwd", C))
    return dk, d_dgd_write
