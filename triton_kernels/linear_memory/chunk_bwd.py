"""Backward kernels of `linear_memory` on the flat chunk layout (see chunk_fwd.py, README.md).

`linear_memory_bwd_kernel_dh` runs the chunks of a sequence in reverse, carrying the adjoints
(dM, dS) of the chunk-end state in fp32 registers per value tile; per chunk it stores them and
the adjoints dR, dW, dP of the residuals, the DGD pseudo-values and the DGD right-hand side.
`linear_memory_bwd_kernel_dq` (the reads' side), `linear_memory_bwd_kernel_dk` (the writes' side)
and, with DGD, `linear_memory_bwd_kernel_dk_dgd` and `linear_memory_bwd_kernel_dgd_inv` (the
right-hand side P) then form, in parallel over chunks and key tiles, each looping over the value
tiles, dQ and dK (exact) and the gradients of the gate matrices and of the DGD inverse (partial
sums per key tile).
"""
import torch
import triton
import triton.language as tl

from ..common.chunk_products import chunk_products
from ..common.tiles import load_operand
from ..utils import launch as launcher           # module attributes: tests patch them
from ..utils.host_math import cdiv
from ..utils.operand_precision import dot_precision
from . import chunk_fwd, configs
from .held_tiles import (
    along_cols, along_rows, held, held_dot, held_trans, initial_state, state_offsets, state_tiles, token_offsets,
)


@triton.jit
def _dh_tile_step(q, k, o_tk, m_k, b_dx, b_ds, b_do_decay, b_k_rhs, b_decay_last, b_do_carry, b_dp_carry,
                  b_carry_last, b_mom_decay, USE_MOMENTUM: tl.constexpr, USE_DGD: tl.constexpr,
                  DOT_PRECISION: tl.constexpr, FP32_OPERANDS: tl.constexpr, TRANSPOSED: tl.constexpr):
    """One row tile of the adjoints (dM, dS) a chunk back, its Q and K tiles (offsets `o_tk`) each
    read just before its two products, so one K = 256 tile is live at a time:
    dS = f[last] dM + m dS + Qᵀ(f ⊙ dO) + Kᵀ(f ⊙ dP),  dM = β[last] dM + Qᵀ(β ⊙ dO) + Kᵀ(dR + β ⊙ dP)."""
    if USE_MOMENTUM:
        b_ds = b_carry_last * b_dx + b_mom_decay * b_ds
    b_dx = b_decay_last * b_dx
    b_qt = held_trans(load_operand(q + o_tk, m_k[None, :], FP32_OPERANDS), TRANSPOSED)
    # dM's Q product before dS's: the other way, transposed at K = 256, momentum alone spilled 8–36 B
    b_dx = held_dot(b_qt, b_do_decay, b_dx, TRANSPOSED, DOT_PRECISION)
    if USE_MOMENTUM:
        b_ds = held_dot(b_qt, b_do_carry, b_ds, TRANSPOSED, DOT_PRECISION)
    b_kt = held_trans(load_operand(k + o_tk, m_k[None, :], FP32_OPERANDS), TRANSPOSED)
    if USE_MOMENTUM and USE_DGD:
        b_ds = held_dot(b_kt, b_dp_carry, b_ds, TRANSPOSED, DOT_PRECISION)
    b_dx = held_dot(b_kt, b_k_rhs, b_dx, TRANSPOSED, DOT_PRECISION)               # R = K M^c − V
    return b_dx, b_ds


@triton.jit(do_not_specialize=["NC"])
def linear_memory_bwd_kernel_dh(
    q, k, do, decay, carry, write, dgd_write, mom_decay_last, mom_write_last, last_rows, dgd_inv,
    qk_write, qk_dgd_write, kk_write, chunk_offsets, dht, dst, dh, ds, dres, dpseudo, drhs, dh0, ds0, scale,
    NC,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_MOMENTUM: tl.constexpr, USE_DGD: tl.constexpr, USE_FINAL_STATE_GRADIENT: tl.constexpr,
    DOT_PRECISION: tl.constexpr, FP32_OPERANDS: tl.constexpr, TRANSPOSED: tl.constexpr,
):
    """The reverse chunk recurrence of one value tile. The adjoints (dM, dS) are held as two row
    tiles of BK rows (rows BK..2·BK−1 only when K > BK; K ≤ 2·BK): K dM and K dS are summed over
    the two, and each tile is updated with its own rows of Qᵀ and Kᵀ. The state-free BT × BT
    products come computed ([H, NC, BT, BT]): `qk_write` = tril(Q Kᵀ) ⊙ G and `qk_dgd_write` =
    tril(Q Kᵀ) ⊙ E (rows after each token), `kk_write` = (K Kᵀ) ⊙ G (rows before each token).
    TRANSPOSED holds every state and token × value tile transposed (held_tiles.py)."""
    i_nh, i_v = tl.program_id(0), tl.program_id(1)                           # sequence × head on the uncapped axis
    i_n, i_h = i_nh // H, i_nh % H
    c_start = tl.load(chunk_offsets + i_n).to(tl.int64)
    c_end = tl.load(chunk_offsets + i_n + 1).to(tl.int64)
    o_t = tl.arange(0, BT)
    o_k0, o_k1, o_v, m_k0, m_k1, m_v, m_kv0, m_kv1, m_tv, o_state0, o_state1 = state_tiles(
        i_nh, i_v, K, V, BK, BV, TRANSPOSED)

    b_dx0, b_ds0, b_dx1, b_ds1 = initial_state(dht, dst, o_state0, o_state1, m_kv0, m_kv1, K, BK, BV,
                                               USE_FINAL_STATE_GRADIENT, USE_MOMENTUM, TRANSPOSED)

    for i_r in range(c_start, c_end):
        i_c = c_start + c_end - 1 - i_r                                       # chunks in reverse
        o_tok = i_c * BT + o_t
        o_chunk = i_h * NC + i_c
        o_tv = token_offsets(o_tok, i_h, o_v, H, V, TRANSPOSED)
        b_k0 = load_operand(k + (o_tok[:, None] * H + i_h) * K + o_k0[None, :], m_k0[None, :], FP32_OPERANDS)
        o_hc0 = state_offsets(o_chunk, o_k0, o_v, K, V, TRANSPOSED)
        tl.store(dh + o_hc0, b_dx0, mask=m_kv0)                               # ∂L/∂M at the chunk end
        b_kdx = held_dot(held(b_k0, TRANSPOSED), b_dx0.to(b_k0.dtype), None, TRANSPOSED, DOT_PRECISION)
        if USE_MOMENTUM:
            tl.store(ds + o_hc0, b_ds0, mask=m_kv0)
            b_kds = held_dot(held(b_k0, TRANSPOSED), b_ds0.to(b_k0.dtype), None, TRANSPOSED, DOT_PRECISION)
        if K > BK:
            b_k1 = load_operand(k + (o_tok[:, None] * H + i_h) * K + o_k1[None, :], m_k1[None, :], FP32_OPERANDS)
            o_hc1 = state_offsets(o_chunk, o_k1, o_v, K, V, TRANSPOSED)
            tl.store(dh + o_hc1, b_dx1, mask=m_kv1)
            b_kdx = held_dot(held(b_k1, TRANSPOSED), b_dx1.to(b_k1.dtype), b_kdx, TRANSPOSED, DOT_PRECISION)
            if USE_MOMENTUM:
                tl.store(ds + o_hc1, b_ds1, mask=m_kv1)
                b_kds = held_dot(held(b_k1, TRANSPOSED), b_ds1.to(b_k1.dtype), b_kds, TRANSPOSED, DOT_PRECISION)
        b_do = scale * tl.load(do + o_tv, mask=m_tv, other=0.0).to(tl.float32)

        i_last = tl.load(last_rows + i_c)
        o_gate = o_chunk * (BT + 1)
        # BT × BT blocks A, read as Aᵀ (as A itself with TRANSPOSED: the held form of Aᵀ)
        o_mat_t = (o_chunk * BT + along_cols(o_t, TRANSPOSED)) * BT + along_rows(o_t, TRANSPOSED)
        # dR = −G[last] ⊙ K dM − N[last] ⊙ K dS − ((Q Kᵀ) ⊙ G)ᵀ dO; the products accumulate into
        # what they are added to (no second BT × BV tile live)
        b_neg_do = -b_do
        b_dr = -along_rows(tl.load(write + (o_gate + i_last) * BT + o_t), TRANSPOSED) * b_kdx
        if USE_MOMENTUM:
            b_dr -= along_rows(tl.load(mom_write_last + o_chunk * BT + o_t), TRANSPOSED) * b_kds
        b_dr = held_dot(tl.load(qk_write + o_mat_t), b_neg_do, b_dr, TRANSPOSED, DOT_PRECISION)
        if USE_DGD:
            # dW = −E[last] ⊙ K dM − ((Q Kᵀ) ⊙ E)ᵀ dO;  dP = (I + L)^{-T} dW
            b_dw = held_dot(tl.load(qk_dgd_write + o_mat_t), b_neg_do,
                            -along_rows(tl.load(dgd_write + (o_gate + i_last) * BT + o_t), TRANSPOSED) * b_kdx,
                            TRANSPOSED, DOT_PRECISION)
            tl.store(dpseudo + o_tv, b_dw, mask=m_tv)
            b_dp = held_dot(tl.load(dgd_inv + o_mat_t), b_dw, None, TRANSPOSED, DOT_PRECISION)
            tl.store(drhs + o_tv, b_dp, mask=m_tv)
            b_dr = held_dot(tl.load(kk_write + o_mat_t), -b_dp, b_dr, TRANSPOSED, DOT_PRECISION)
        tl.store(dres + o_tv, b_dr, mask=m_tv)
        b_k_rhs = b_dr                                                        # what Kᵀ(·) adds to dM
        b_dp_carry = None                                                     # with momentum and DGD only
        if USE_DGD:
            b_k_rhs += along_rows(tl.load(decay + o_gate + o_t), TRANSPOSED) * b_dp
            if USE_MOMENTUM:
                b_dp_carry = (along_rows(tl.load(carry + o_gate + o_t), TRANSPOSED) * b_dp).to(b_k0.dtype)

        # dM = β[last] dM + Qᵀ(β ⊙ dO) + Kᵀ(dR + β ⊙ dP),  dS = f[last] dM + m dS + Qᵀ(f ⊙ dO) + Kᵀ(f ⊙ dP)
        if BT >= 32:  # read dO again rather than keep it live (keeps 32- and 64-token chunks of K = 256 clean)
            b_do = scale * tl.load(do + o_tv, mask=m_tv, other=0.0).to(tl.float32)
        b_do_decay = (along_rows(tl.load(decay + o_gate + 1 + o_t), TRANSPOSED) * b_do).to(b_k0.dtype)
        b_k_rhs = b_k_rhs.to(b_k0.dtype)
        b_decay_last = tl.load(decay + o_gate + i_last)
        b_do_carry, b_carry_last, b_mom_decay = None, None, None              # with momentum only
        if USE_MOMENTUM:
            b_do_carry = (along_rows(tl.load(carry + o_gate + 1 + o_t), TRANSPOSED) * b_do).to(b_k0.dtype)
            b_carry_last = tl.load(carry + o_gate + i_last)
            b_mom_decay = tl.load(mom_decay_last + o_chunk)
        o_tk = (o_tok[:, None] * H + i_h) * K
        b_dx0, b_ds0 = _dh_tile_step(q, k, o_tk + o_k0[None, :], m_k0, b_dx0, b_ds0, b_do_decay, b_k_rhs, b_decay_last,
                                     b_do_carry, b_dp_carry, b_carry_last, b_mom_decay, USE_MOMENTUM, USE_DGD,
                                     DOT_PRECISION, FP32_OPERANDS, TRANSPOSED)
        if K > BK:
            b_dx1, b_ds1 = _dh_tile_step(q, k, o_tk + o_k1[None, :], m_k1, b_dx1, b_ds1, b_do_decay, b_k_rhs,
                                         b_decay_last, b_do_carry, b_dp_carry, b_carry_last, b_mom_decay,
                                         USE_MOMENTUM, USE_DGD, DOT_PRECISION, FP32_OPERANDS, TRANSPOSED)

    # the state's offsets again, from its scalar base: kept from before the loop, they spilled
    o_kv0 = state_offsets(0, o_k0, o_v, K, V, TRANSPOSED)
    o_kv1 = state_offsets(0, o_k1, o_v, K, V, TRANSPOSED)
    o_state = i_nh.to(tl.int64) * K * V
    tl.store(dh0 + o_state + o_kv0, b_dx0, mask=m_kv0)
    if USE_MOMENTUM:
        tl.store(ds0 + o_state + o_kv0, b_ds0, mask=m_kv0)
    if K > BK:
        tl.store(dh0 + o_state + o_kv1, b_dx1, mask=m_kv1)
        if USE_MOMENTUM:
            tl.store(ds0 + o_state + o_kv1, b_ds1, mask=m_kv1)


@triton.jit
def _key_tile(NC, H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr):
    """Ids and offsets of a program of the parallel kernels (grid (NC, key tiles, H)): chunk, key
    tile and head; the chunk's token rows, the tile's key columns and mask, their offsets in q/k
    (`[T', H, K]`), the (head, chunk) index of `[H, NC, ...]` tensors and of the `[NK, H, NC, ...]`
    partial sums."""
    i_c, i_k, i_h = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    o_t = tl.arange(0, BT)
    o_k = i_k * BK + tl.arange(0, BK)
    o_tok = i_c * BT + o_t
    o_chunk = i_h * NC + i_c
    return (i_c, i_k, i_h, o_t, o_k, o_k < K, o_tok, (o_tok[:, None] * H + i_h) * K + o_k[None, :], o_chunk,
            i_k * H * NC + o_chunk)


@triton.jit
def _value_tile(i_v, i_h, o_chunk, o_tok, o_k, m_k, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr,
                BV: tl.constexpr):
    """Offsets and masks of value tile i_v in the parallel kernels: the chunk's tokens by the tile
    (`[T', H, V]` tensors) and the key tile by the value tile (chunk states `[H, NC, K, V]`)."""
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    o_tv = (o_tok[:, None] * H + i_h) * V + o_v[None, :]
    o_hc = (o_chunk * K + o_k[:, None]) * V + o_v[None, :]
    return o_tv, o_hc, m_v[None, :], m_k[:, None] & m_v[None, :]


@triton.jit(do_not_specialize=["NC"])
def linear_memory_bwd_kernel_dq(
    q, k, do, decay, carry, write, dgd_write, h, s, res, pseudo, dq, dqk, d_decay, d_carry, d_write, d_dgd_write,
    scale,
    NC,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_MOMENTUM: tl.constexpr, USE_DGD: tl.constexpr, DOT_PRECISION: tl.constexpr, FP32_OPERANDS: tl.constexpr,
):
    """The reads' side of key tile i_k, looping over the value tiles: dQ (exact), dQ̃ = tril(−(Ō Rᵀ) ⊙ G
    − (Ō Wᵀ) ⊙ E) (exact, stored by the first key tile for dK) and the gradients of β, f, G, E on the
    rows after each token: rows 1..BT of the gates' gradients, partial over key tiles
    ([NK, H, NC, BT + 1, ...]; row 0 set to 0 here, the other kernels add to them in place)."""
    i_c, i_k, i_h, o_t, o_k, m_k, o_tok, o_tk, o_chunk, o_part = _key_tile(NC, H, K, BT, BK)
    m_causal = o_t[:, None] >= o_t[None, :]
    o_gate = o_chunk * (BT + 1) + 1                                           # rows after each token
    o_mat = o_t[:, None] * BT + o_t[None, :]

    b_q = load_operand(q + o_tk, m_k[None, :], FP32_OPERANDS)
    b_decay = tl.load(decay + o_gate + o_t)
    b_carry = tl.load(carry + o_gate + o_t) if USE_MOMENTUM else b_decay
    b_dor = tl.zeros([BT, BT], dtype=tl.float32)
    b_dow = tl.zeros([BT, BT], dtype=tl.float32)
    b_dq = tl.zeros([BT, BK], dtype=tl.float32)
    b_d_decay = tl.zeros([BT], dtype=tl.float32)
    b_d_carry = tl.zeros([BT], dtype=tl.float32)
    for i_v in range(0, tl.cdiv(V, BV)):                                      # Ō Rᵀ, Ō Wᵀ, dQ summed over V
        o_tv, o_hc, m_tv, m_kv = _value_tile(i_v, i_h, o_chunk, o_tok, o_k, m_k, H, K, V, BV)
        b_do = scale * tl.load(do + o_tv, mask=m_tv, other=0.0).to(tl.float32)
        b_r = tl.load(res + o_tv, mask=m_tv, other=0.0)
        b_dor += tl.dot(b_do, tl.trans(b_r), input_precision=DOT_PRECISION)
        if USE_DGD:
            b_w = tl.load(pseudo + o_tv, mask=m_tv, other=0.0)
            b_dow += tl.dot(b_do, tl.trans(b_w), input_precision=DOT_PRECISION)
        b_x = tl.load(h + o_hc, mask=m_kv, other=0.0)
        b_dq += b_decay[:, None] * tl.dot(b_do, tl.trans(b_x), input_precision=DOT_PRECISION)
        b_d_decay += tl.sum(b_do * tl.dot(b_q, b_x.to(b_q.dtype), input_precision=DOT_PRECISION), 1)
        if USE_MOMENTUM:
            b_s = tl.load(s + o_hc, mask=m_kv, other=0.0)
            b_dq += b_carry[:, None] * tl.dot(b_do, tl.trans(b_s), input_precision=DOT_PRECISION)
            b_d_carry += tl.sum(b_do * tl.dot(b_q, b_s.to(b_q.dtype), input_precision=DOT_PRECISION), 1)
    b_dqk = -b_dor * tl.load(write + o_gate * BT + o_mat)
    if USE_DGD:
        b_dqk -= b_dow * tl.load(dgd_write + o_gate * BT + o_mat)
    b_dqk = tl.where(m_causal, b_dqk, 0.0)
    if i_k == 0:
        tl.store(dqk + o_chunk * BT * BT + o_mat, b_dqk)
    b_k = load_operand(k + o_tk, m_k[None, :], FP32_OPERANDS)
    b_dq += tl.dot(b_dqk, b_k.to(tl.float32), input_precision=DOT_PRECISION)
    tl.store(dq + o_tk, b_dq.to(dq.dtype.element_ty), mask=m_k[None, :])
    b_qk = tl.where(m_causal, tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PRECISION), 0.0)
    o_vec = o_part * (BT + 1)                                                 # the gates' rows 0..BT
    zero_row = tl.zeros([BT], dtype=tl.float32)
    tl.store(d_decay + o_vec + o_t, zero_row, mask=o_t == 0)                  # row 0, then rows 1..BT
    tl.store(d_decay + o_vec + 1 + o_t, b_d_decay)
    if USE_MOMENTUM:
        tl.store(d_carry + o_vec + o_t, zero_row, mask=o_t == 0)
        tl.store(d_carry + o_vec + 1 + o_t, b_d_carry)
    tl.store(d_write + o_vec * BT + o_t, zero_row)
    tl.store(d_write + o_vec * BT + BT + o_mat, -b_qk * b_dor)
    if USE_DGD:
        tl.store(d_dgd_write + o_vec * BT + o_t, zero_row)
        tl.store(d_dgd_write + o_vec * BT + BT + o_mat, -b_qk * b_dow)


@triton.jit(do_not_specialize=["NC"])
def linear_memory_bwd_kernel_dk(
    q, k, write, dgd_write, mom_write_last, last_rows, h, s, res, pseudo, dh, ds, dres,
    dqk, dk, dv, d_decay, d_carry, d_write, d_dgd_write, d_mom,
    NC,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_MOMENTUM: tl.constexpr, USE_DGD: tl.constexpr, DOT_PRECISION: tl.constexpr, FP32_OPERANDS: tl.constexpr,
):
    """The writes' side of key tile i_k, looping over the value tiles: dK (exact, but its DGD
    right-hand-side terms, added by `linear_memory_bwd_kernel_dk_dgd`) and the gradients of the
    last-row gates, partial over key tiles: G[last, :], E[last, :], β[last], f[last] added to row
    `last` of d_write, d_dgd_write, d_decay, d_carry (after `linear_memory_bwd_kernel_dq`), N[last, :]
    and m[last] stored in d_mom [NK, H, NC, 2, BT]. The first key tile also stores dV = −dR, in
    dv's dtype."""
    i_c, i_k, i_h, o_t, o_k, m_k, o_tok, o_tk, o_chunk, o_part = _key_tile(NC, H, K, BT, BK)
    o_gate = o_chunk * (BT + 1)
    i_last = tl.load(last_rows + i_c)
    b_first = tl.where(o_t == 0, 1.0, 0.0)

    b_k = load_operand(k + o_tk, m_k[None, :], FP32_OPERANDS)
    b_g_last = tl.load(write + (o_gate + i_last) * BT + o_t)                  # rows whose Kᵀ(·) enters M[last]
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    b_d_g_last = tl.zeros([BT], dtype=tl.float32)
    b_d_e_last = tl.zeros([BT], dtype=tl.float32)
    b_d_n_last = tl.zeros([BT], dtype=tl.float32)
    b_dx_x = tl.zeros([BV], dtype=tl.float32)
    b_dx_s = tl.zeros([BV], dtype=tl.float32)
    b_ds_s = tl.zeros([BV], dtype=tl.float32)
    for i_v in range(0, tl.cdiv(V, BV)):
        o_tv, o_hc, m_tv, m_kv = _value_tile(i_v, i_h, o_chunk, o_tok, o_k, m_k, H, K, V, BV)
        b_r = tl.load(res + o_tv, mask=m_tv, other=0.0)
        b_x = tl.load(h + o_hc, mask=m_kv, other=0.0)
        b_dx = tl.load(dh + o_hc, mask=m_kv, other=0.0)
        b_kdx = tl.dot(b_k, b_dx.to(b_k.dtype), input_precision=DOT_PRECISION)
        b_d_g_last -= tl.sum(b_kdx * b_r, 1)
        b_dx_x += tl.sum(b_dx * b_x, 0)
        b_dres = tl.load(dres + o_tv, mask=m_tv, other=0.0)
        if i_k == 0:
            tl.store(dv + o_tv, (-b_dres).to(dv.dtype.element_ty), mask=m_tv)   # R = K M^c − V
        b_dk += tl.dot(b_dres, tl.trans(b_x), input_precision=DOT_PRECISION)
        b_upd = b_g_last[:, None] * b_r
        if USE_DGD:
            b_w = tl.load(pseudo + o_tv, mask=m_tv, other=0.0)
            b_d_e_last -= tl.sum(b_kdx * b_w, 1)
            b_upd += tl.load(dgd_write + (o_gate + i_last) * BT + o_t)[:, None] * b_w
        b_dk -= tl.dot(b_upd.to(b_k.dtype), tl.trans(b_dx.to(b_k.dtype)), input_precision=DOT_PRECISION)
        if USE_MOMENTUM:
            b_s = tl.load(s + o_hc, mask=m_kv, other=0.0)
            b_dsn = tl.load(ds + o_hc, mask=m_kv, other=0.0)
            b_d_n_last -= tl.sum(tl.dot(b_k, b_dsn.to(b_k.dtype), input_precision=DOT_PRECISION) * b_r, 1)
            b_dx_s += tl.sum(b_dx * b_s, 0)
            b_ds_s += tl.sum(b_dsn * b_s, 0)
            b_n_upd = tl.load(mom_write_last + o_chunk * BT + o_t)[:, None] * b_r
            b_dk -= tl.dot(b_n_upd.to(b_k.dtype), tl.trans(b_dsn.to(b_k.dtype)), input_precision=DOT_PRECISION)
    o_mat = o_t[:, None] * BT + o_t[None, :]
    b_q = load_operand(q + o_tk, m_k[None, :], FP32_OPERANDS)
    b_dk += tl.dot(tl.trans(tl.load(dqk + o_chunk * BT * BT + o_mat)), b_q.to(tl.float32),
                   input_precision=DOT_PRECISION)
    tl.store(dk + o_tk, b_dk.to(dk.dtype.element_ty), mask=m_k[None, :])
    o_last = o_part * (BT + 1) + i_last                                       # the last real row
    tl.store(d_decay + o_last, tl.load(d_decay + o_last) + tl.sum(b_dx_x, 0))
    tl.store(d_write + o_last * BT + o_t, tl.load(d_write + o_last * BT + o_t) + b_d_g_last)
    if USE_MOMENTUM:
        tl.store(d_carry + o_last, tl.load(d_carry + o_last) + tl.sum(b_dx_s, 0))
        tl.store(d_mom + o_part * 2 * BT + o_t, b_d_n_last)                              # N[last, :]
        tl.store(d_mom + o_part * 2 * BT + BT + o_t, b_first * tl.sum(b_ds_s, 0))        # m[last]
    if USE_DGD:
        tl.store(d_dgd_write + o_last * BT + o_t, tl.load(d_dgd_write + o_last * BT + o_t) + b_d_e_last)


@triton.jit(do_not_specialize=["NC"])
def linear_memory_bwd_kernel_dk_dgd(
    k, decay, carry, write, h, s, res, drhs, dk, d_decay, d_carry, d_write,
    NC,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_MOMENTUM: tl.constexpr, DOT_PRECISION: tl.constexpr, FP32_OPERANDS: tl.constexpr,
):
    """The DGD right-hand side P = diag(β) K M^c + diag(f) K S^c − ((K Kᵀ) ⊙ G) R (rows before each
    token) for key tile i_k, looping over the value tiles: its part of dK, added to dK in place
    (exact), and, partial over key tiles, the gradients of β, f, G on those rows (rows 0..BT−1 of
    d_decay, d_carry, d_write, added in place after the other kernels)."""
    i_c, i_k, i_h, o_t, o_k, m_k, o_tok, o_tk, o_chunk, o_part = _key_tile(NC, H, K, BT, BK)
    o_gate = o_chunk * (BT + 1)
    o_mat = o_t[:, None] * BT + o_t[None, :]

    b_decay = tl.load(decay + o_gate + o_t)
    b_carry = tl.load(carry + o_gate + o_t) if USE_MOMENTUM else b_decay
    b_dpr = tl.zeros([BT, BT], dtype=tl.float32)
    b_dk = tl.zeros([BT, BK], dtype=tl.float32)
    b_d_decay = tl.zeros([BT], dtype=tl.float32)
    b_d_carry = tl.zeros([BT], dtype=tl.float32)
    for i_v in range(0, tl.cdiv(V, BV)):
        o_tv, o_hc, m_tv, m_kv = _value_tile(i_v, i_h, o_chunk, o_tok, o_k, m_k, H, K, V, BV)
        b_dp = tl.load(drhs + o_tv, mask=m_tv, other=0.0)
        b_dpr += tl.dot(b_dp, tl.trans(tl.load(res + o_tv, mask=m_tv, other=0.0)),
                        input_precision=DOT_PRECISION)
        b_x = tl.load(h + o_hc, mask=m_kv, other=0.0)
        b_k = load_operand(k + o_tk, m_k[None, :], FP32_OPERANDS)           # read per value tile, not kept live
        b_d_decay += tl.sum(b_dp * tl.dot(b_k, b_x.to(b_k.dtype), input_precision=DOT_PRECISION), 1)
        # diag(β) (dP Mᵀ) = (β ⊙ dP) Mᵀ, accumulated into dK (no second [BT, BK] tile live)
        b_dk = tl.dot(b_decay[:, None] * b_dp, tl.trans(b_x), b_dk, input_precision=DOT_PRECISION)
        if USE_MOMENTUM:
            b_s = tl.load(s + o_hc, mask=m_kv, other=0.0)
            b_d_carry += tl.sum(b_dp * tl.dot(b_k, b_s.to(b_k.dtype), input_precision=DOT_PRECISION), 1)
            b_dk = tl.dot(b_carry[:, None] * b_dp, tl.trans(b_s), b_dk, input_precision=DOT_PRECISION)
    b_k = load_operand(k + o_tk, m_k[None, :], FP32_OPERANDS)
    b_dkk = -b_dpr * tl.load(write + o_gate * BT + o_mat)                     # dÂ, Â = (K Kᵀ) ⊙ G
    b_dk += tl.dot(b_dkk + tl.trans(b_dkk), b_k.to(tl.float32), input_precision=DOT_PRECISION)
    b_dk += tl.load(dk + o_tk, mask=m_k[None, :], other=0.0)                 # the writes' side
    tl.store(dk + o_tk, b_dk.to(dk.dtype.element_ty), mask=m_k[None, :])
    o_vec = o_part * (BT + 1)                                                 # rows 0..BT−1 of the gates
    tl.store(d_decay + o_vec + o_t, tl.load(d_decay + o_vec + o_t) + b_d_decay)
    if USE_MOMENTUM:
        tl.store(d_carry + o_vec + o_t, tl.load(d_carry + o_vec + o_t) + b_d_carry)
    b_kk = tl.dot(b_k, tl.trans(b_k), input_precision=DOT_PRECISION)         # this key tile's part of K Kᵀ
    tl.store(d_write + o_vec * BT + o_mat, tl.load(d_write + o_vec * BT + o_mat) - b_kk * b_dpr)


@triton.jit(do_not_specialize=["NC"])
def linear_memory_bwd_kernel_dgd_inv(
    k, decay, carry, write, h, s, res, dpseudo, d_dgd_inv,
    NC,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_MOMENTUM: tl.constexpr, DOT_PRECISION: tl.constexpr, FP32_OPERANDS: tl.constexpr,
):
    """The gradient of the DGD inverse, d(I + L)^{-1} = dW Pᵀ, partial over key tiles: key tile i_k's
    part of P = diag(β) K M^c + diag(f) K S^c − ((K Kᵀ) ⊙ G) R, a value tile at a time. Apart from
    `linear_memory_bwd_kernel_dk_dgd`: the two BT × BT sums of one kernel spilled hundreds of bytes."""
    i_c, i_k, i_h, o_t, o_k, m_k, o_tok, o_tk, o_chunk, o_part = _key_tile(NC, H, K, BT, BK)
    o_gate = o_chunk * (BT + 1)
    o_mat = o_t[:, None] * BT + o_t[None, :]

    b_k = load_operand(k + o_tk, m_k[None, :], FP32_OPERANDS)
    b_decay = tl.load(decay + o_gate + o_t)
    # this key tile's part of (K Kᵀ) ⊙ G
    b_kk_write = tl.dot(b_k, tl.trans(b_k), input_precision=DOT_PRECISION) * tl.load(write + o_gate * BT + o_mat)
    b_d_inv = tl.zeros([BT, BT], dtype=tl.float32)
    for i_v in range(0, tl.cdiv(V, BV)):
        o_tv, o_hc, m_tv, m_kv = _value_tile(i_v, i_h, o_chunk, o_tok, o_k, m_k, H, K, V, BV)
        b_x = tl.load(h + o_hc, mask=m_kv, other=0.0)
        b_p = b_decay[:, None] * tl.dot(b_k, b_x.to(b_k.dtype), input_precision=DOT_PRECISION) - tl.dot(
            b_kk_write, tl.load(res + o_tv, mask=m_tv, other=0.0), input_precision=DOT_PRECISION)
        if USE_MOMENTUM:
            b_s = tl.load(s + o_hc, mask=m_kv, other=0.0)
            b_p += tl.load(carry + o_gate + o_t)[:, None] * tl.dot(b_k, b_s.to(b_k.dtype),
                                                                  input_precision=DOT_PRECISION)
        b_d_inv += tl.dot(tl.load(dpseudo + o_tv, mask=m_tv, other=0.0), tl.trans(b_p),
                          input_precision=DOT_PRECISION)
    tl.store(d_dgd_inv + o_part * BT * BT + o_mat, b_d_inv)


def linear_memory_bwd(q, k, v, do, dht, dst, gates, dgd_inv, chunk_offsets, last_rows, h0, s0, fwd, *, scale, dgd,
                      grad_dtypes):
    """Launch the backward kernels. `fwd` = (h, s, R, W) kept by `linear_memory_fwd`, or None: then
    its state recurrence runs again first. Returns dq, dk, dv (flat layout) in `grad_dtypes` (the
    kernels store them so: no fp32 copies to cast), but dq and dk in fp32 with DGD (the DGD kernel
    adds to dk; storing a 16-bit dq spilled 4 B on sm_80 at K = 128 and 256, chunk 64, with momentum),
    the gradients of `gates` (same order and shapes; None for dgd_write without DGD), of `dgd_inv`,
    and dh0, ds0."""
    decay, carry, write, dgd_write, mom_decay_last, mom_write_last = gates
    Tp, H, K = k.shape
    V = do.shape[-1]
    BT = write.shape[-1]
    NC = Tp // BT
    N = chunk_offsets.numel() - 1
    use_momentum = carry is not None
    precision = dot_precision(do.dtype)                                      # dO has the op's input dtype
    fp32_operands = configs.operands_in_fp32(k, BT, backward=True)
    arch = launcher.device_arch(k.device)
    f32 = dict(dtype=torch.float32, device=k.device)
    dh, dres = torch.empty(H, NC, K, V, **f32), torch.empty(Tp, H, V, **f32)
    ds = torch.empty(H, NC, K, V, **f32) if use_momentum else None
    dpseudo = torch.empty(Tp, H, V, **f32) if dgd else None
    drhs = torch.empty(Tp, H, V, **f32) if dgd else None
    dh0 = torch.empty(N, H, K, V, **f32)
    ds0 = torch.empty(N, H, K, V, **f32) if use_momentum else None
    common = dict(NC=NC, H=H, K=K, V=V, BT=BT, USE_MOMENTUM=use_momentum, USE_DGD=dgd, DOT_PRECISION=precision,
                  FP32_OPERANDS=fp32_operands)
    qk_write, qk_dgd_write, kk_write = chunk_products(q, k, write, dgd_write, reads=True, dgd=dgd, precision=precision)
    if fwd is None:                                                           # not kept: the chunk states again
        fwd = chunk_fwd.linear_memory_fwd(q, k, v, gates, dgd_inv, chunk_offsets, last_rows, h0, s0, scale=scale,
                                          dgd=dgd, output_final_state=False, out_dtype=do.dtype, output=False,
                                          kk_write=kk_write)[1:5]
    h, s, res, pseudo = fwd
    cfg = configs.launch_config("bwd_dh", K, V, BT, fp32_operands, arch)
    transposed = configs.transposed_states("bwd_dh", K, BT, fp32_operands, arch)
    assert K <= 2 * cfg.BK, "linear_memory_bwd_kernel_dh holds the adjoints as at most two row tiles of BK"
    launcher.launch(
        linear_memory_bwd_kernel_dh, (N * H, cdiv(V, cfg.BV)), k.device,
        q=q, k=k, do=do, decay=decay, carry=carry, write=write, dgd_write=dgd_write, mom_decay_last=mom_decay_last,
        mom_write_last=mom_write_last, last_rows=last_rows, dgd_inv=dgd_inv, chunk_offsets=chunk_offsets,
        qk_write=qk_write, qk_dgd_write=qk_dgd_write, kk_write=kk_write,
        dht=dht, dst=dst, dh=dh, ds=ds, dres=dres, dpseudo=dpseudo, drhs=drhs, dh0=dh0, ds0=ds0, scale=scale,
        USE_FINAL_STATE_GRADIENT=dht is not None, TRANSPOSED=transposed,
        **common, **cfg._asdict(),
    )
    # The parallel kernels: one program per (key tile, chunk, head), looping over the value tiles, so
    # dQ, dK and dQ̃ come exact; what sums over K (the gate gradients, the DGD inverse's) is partial
    # over the NK key tiles, [NK, H, NC, ...], summed here (NK = 1 when one tile holds K). The gate
    # gradients are laid out as the gates, [.., BT + 1(, BT)]: the dQ kernel writes rows 1..BT (after
    # each token) and zeros row 0, the dK kernel adds the last real row's, the DGD kernel rows 0..BT−1.
    parts = ("bwd_dq", "bwd_dk", "bwd_dk_dgd", "bwd_dgd_inv")
    cfgs = {part: configs.launch_config(part, K, V, BT, fp32_operands, arch) for part in parts}
    BK = cfgs["bwd_dq"].BK
    assert all(c.BK == BK for c in cfgs.values()), "the parallel kernels share the key tiling of their partial sums"
    NK = cdiv(K, BK)
    partial = lambda *shape: torch.empty(NK, H, NC, *shape, **f32)
    dq_dtype, dk_dtype, dv_dtype = (torch.float32, torch.float32, grad_dtypes[2]) if dgd else grad_dtypes
    dq, dk = (torch.empty(Tp, H, K, dtype=dtype, device=k.device) for dtype in (dq_dtype, dk_dtype))
    dv = torch.empty(Tp, H, V, dtype=dv_dtype, device=v.device)
    dqk = torch.empty(H, NC, BT, BT, **f32)
    d_decay, d_write = partial(BT + 1), partial(BT + 1, BT)
    d_carry = partial(BT + 1) if use_momentum else None
    d_mom = partial(2, BT) if use_momentum else None
    d_dgd_write = partial(BT + 1, BT) if dgd else None
    d_dgd_inv = partial(BT, BT) if dgd else None
    grid = (NC, NK, H)                                                        # NC on the axis without the 65535 cap
    launcher.launch(
        linear_memory_bwd_kernel_dq, grid, k.device,
        q=q, k=k, do=do, decay=decay, carry=carry, write=write, dgd_write=dgd_write, h=h, s=s, res=res,
        pseudo=pseudo, dq=dq, dqk=dqk, d_decay=d_decay, d_carry=d_carry, d_write=d_write, d_dgd_write=d_dgd_write,
        scale=scale, **common, **cfgs["bwd_dq"]._asdict(),
    )
    launcher.launch(
        linear_memory_bwd_kernel_dk, grid, k.device,
        q=q, k=k, write=write, dgd_write=dgd_write, mom_write_last=mom_write_last, last_rows=last_rows, h=h, s=s,
        res=res, pseudo=pseudo, dh=dh, ds=ds, dres=dres, dqk=dqk, dk=dk, dv=dv, d_decay=d_decay, d_carry=d_carry,
        d_write=d_write, d_dgd_write=d_dgd_write, d_mom=d_mom, **common, **cfgs["bwd_dk"]._asdict(),
    )
    if dgd:
        rhs = dict(NC=NC, H=H, K=K, V=V, BT=BT, USE_MOMENTUM=use_momentum, DOT_PRECISION=precision,
                   FP32_OPERANDS=fp32_operands)
        launcher.launch(
            linear_memory_bwd_kernel_dk_dgd, grid, k.device,
            k=k, decay=decay, carry=carry, write=write, h=h, s=s, res=res, drhs=drhs, dk=dk,
            d_decay=d_decay, d_carry=d_carry, d_write=d_write, **rhs, **cfgs["bwd_dk_dgd"]._asdict(),
        )
        launcher.launch(
            linear_memory_bwd_kernel_dgd_inv, grid, k.device,
            k=k, decay=decay, carry=carry, write=write, h=h, s=s, res=res, dpseudo=dpseudo, d_dgd_inv=d_dgd_inv,
            **rhs, **cfgs["bwd_dgd_inv"]._asdict(),
        )
    total = lambda x: None if x is None else x[0] if NK == 1 else x.sum(0)   # over the key tiles
    d_mom = total(d_mom)
    grads = (
        total(d_decay),
        total(d_carry),
        total(d_write),
        total(d_dgd_write) if dgd else None,                                 # E is DGD's alone
        d_mom[:, :, 1, 0].clone() if use_momentum else None,                # two tensors, not views of one
        d_mom[:, :, 0].clone() if use_momentum else None,
    )
    return dq, dk, dv, grads, total(d_dgd_inv), dh0, ds0
