"""Backward of ONE chunk of `mlp_memory` (SPEC §3), every (sequence, head) of the chunk in one
launch per stage; the derivation is in README_backward.md (BACKGROUND.md §4 plus the dual-form
reads). Per (sequence, head) the chunk holds C ≤ BT tokens; rows C..BT−1 are padding (zero
inputs, zero gradients). The hidden width Dh is cut into tiles of BD columns and every stage
that touches W1 [K, Dh] or W2 [Dh, V] runs one program per (Dh tile, sequence·head):

1. `mlp_memory_bwd_kernel_res`   R = f_{W^c}(K) − target, summed over the Dh tiles   [BH, BT, V];
   `mlp_memory_bwd_kernel_qk` (read="current" or DGD) Q Kᵀ, dO Rᵀ, K Kᵀ and their products
   with the gate matrices                                                       [BH, 7, BT, BT]
2. `mlp_memory_bwd_kernel_inner` per Dh tile: Z, A, P = R W2ᵀ, D = P ⊙ φ'(Z), with DGD the
   pseudo-values W = (I + L)^{-1} Rhs, the reads (Zq, Aq, their adjoints dAq, dZq);
   `mlp_memory_bwd_kernel_dd` per Dh tile, from those: with DGD dW and dRhs = (I + L)^{-T} dW,
   the adjoint dD and from it dP = dD ⊙ φ'(Z), dZ'' = dD ⊙ P ⊙ φ''(Z). Two kernels, so that no
   program holds the C×C blocks of the DGD system's forward and of its backward at once (one
   kernel spilled on sm_80). Both store their C×Dh tiles in scratch, and partial sums over the
   tile of every product that contracts Dh: Aq Aᵀ, dZq Dᵀ, dRhs Dᵀ, dZq Wᵀ, dRhs Wᵀ (C×C),
   dQ, dR (C×K, C×V) and the gate gradients.
3. `mlp_memory_bwd_kernel_dres`  (after the partials are summed over Dh tiles) the C×C side of
   the reads and of the DGD system: dR, dQ, the C×C part of dK, dV, and dG, dE.
4. `mlp_memory_bwd_kernel_dw`    per Dh tile: dA, dZ, and the weight gradients dW1[:, tile],
   dS1[:, tile], dW2[tile, :], dS2[tile, :] (each program owns its tile: no atomics), with the
   write part of dK and the self-target part of dV as partial sums.

Scratch (global memory, fp32, [BH, BT, Dh] each): Z, Aq, dZq, dP, dZ'' (P between `inner` and `dd`),
D (and W, dRhs). A C×Dh tile per intermediate is what the register file cannot hold across stages
(Dh ≤ 512, C ≤ 64).
All products accumulate in fp32 (inputs are converted on load).
"""
import triton
import triton.language as tl

from ..common.activations import phi, phi_grad, phi_grad2


@triton.jit
def _rows(ptr, o_row, m_t, o_col, m_col):
    """A [BT, B·] tile of a token-major tensor, as fp32 (padding rows and columns read 0)."""
    return tl.load(ptr + o_row[:, None] + o_col[None, :], mask=m_t[:, None] & m_col[None, :], other=0.0).to(tl.float32)


@triton.jit
def _tile(ptr, o_base, o_r, m_r, o_c, m_c, NCOL: tl.constexpr):
    """A tile of a row-major matrix with NCOL columns at o_base (padding reads 0)."""
    return tl.load(ptr + o_base + o_r[:, None] * NCOL + o_c[None, :], mask=m_r[:, None] & m_c[None, :], other=0.0)


@triton.jit
def _rows_t(ptr, o_row, m_t, o_col, m_col):
    """`_rows` transposed, [B·, BT], read by address (no layout conversion in registers)."""
    return tl.load(ptr + o_row[None, :] + o_col[:, None], mask=m_t[None, :] & m_col[:, None], other=0.0).to(tl.float32)


@triton.jit
def _tile_t(ptr, o_base, o_r, m_r, o_c, m_c, NCOL: tl.constexpr):
    """`_tile` transposed, [len(o_c), len(o_r)], read by address."""
    return tl.load(ptr + o_base + o_r[None, :] * NCOL + o_c[:, None], mask=m_r[None, :] & m_c[:, None], other=0.0)


@triton.jit
def _dh_tile_offsets(C, H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, DH: tl.constexpr, BT: tl.constexpr,
                     BD: tl.constexpr):
    """Ids and offsets of a Dh-tile program (grid (B·H, Dh/BD)): sequence·head, token rows and their
    mask, the tile's Dh columns and mask, the rows of q/k and of v/do, the (sequence, head)'s W1 and W2,
    its gate rows, its [BT, BD] scratch tile and its index in the [ND, BH, ...] partials."""
    i_bh, i_d = tl.program_id(0).to(tl.int64), tl.program_id(1)               # B·H on the uncapped axis
    i_b, i_h = i_bh // H, i_bh % H
    o_t = tl.arange(0, BT)
    o_d = i_d * BD + tl.arange(0, BD)
    o_tk = ((i_b * C + o_t) * H + i_h) * K
    o_tv = ((i_b * C + o_t) * H + i_h) * V
    o_scr = (i_bh * BT + o_t[:, None]) * DH + o_d[None, :]
    return (i_bh, o_t, o_t < C, o_d, o_d < DH, o_tk, o_tv, i_bh * K * DH, i_bh * DH * V, i_bh * (BT + 1), o_scr,
            i_d.to(tl.int64) * tl.num_programs(0) + i_bh)


@triton.jit(do_not_specialize=["C"])
def mlp_memory_bwd_kernel_res(
    k, v, w1, w2, res, C,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, DH: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, BD: tl.constexpr, ACT: tl.constexpr, IS_RESIDUAL: tl.constexpr, IS_SELF_TARGET: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """R = [K +] φ(K W1) W2 − target for one value tile, target = [V +] φ(V W1) W2 (self target) or V."""
    i_bh, i_v = tl.program_id(0).to(tl.int64), tl.program_id(1)
    i_b, i_h = i_bh // H, i_bh % H
    o_t = tl.arange(0, BT)
    m_t = o_t < C
    o_tk = ((i_b * C + o_t) * H + i_h) * K
    o_tv = ((i_b * C + o_t) * H + i_h) * V
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    b_f = tl.zeros([BT, BV], dtype=tl.float32)
    for d0 in range(0, DH, BD):
        o_d = d0 + tl.arange(0, BD)
        m_d = o_d < DH
        b_z = tl.zeros([BT, BD], dtype=tl.float32)
        b_zv = tl.zeros([BT, BD], dtype=tl.float32)
        for k0 in range(0, K, BK):
            o_k = k0 + tl.arange(0, BK)
            m_k = o_k < K
            b_w1 = _tile(w1, i_bh * K * DH, o_k, m_k, o_d, m_d, DH)
            b_z = tl.dot(_rows(k, o_tk, m_t, o_k, m_k), b_w1, b_z, input_precision=DOT_PRECISION)
            if IS_SELF_TARGET:                                                # K == V
                b_zv = tl.dot(_rows(v, o_tv, m_t, o_k, m_k), b_w1, b_zv, input_precision=DOT_PRECISION)
        b_w2 = _tile(w2, i_bh * DH * V, o_d, m_d, o_v, m_v, V)
        b_f = tl.dot(phi(b_z, ACT), b_w2, b_f, input_precision=DOT_PRECISION)
        if IS_SELF_TARGET:
            b_f = tl.dot(-phi(b_zv, ACT), b_w2, b_f, input_precision=DOT_PRECISION)
    if IS_RESIDUAL:
        b_f += _rows(k, o_tk, m_t, o_v, m_v)
    if IS_RESIDUAL or not IS_SELF_TARGET:
        b_f -= _rows(v, o_tv, m_t, o_v, m_v)
    tl.store(res + (i_bh * BT + o_t[:, None]) * V + o_v[None, :], b_f, mask=m_v[None, :])


@triton.jit(do_not_specialize=["C"])
def mlp_memory_bwd_kernel_qk(
    q, k, do, write, dgd_write, res, qk_dor, C,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_DGD: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """The Dh-free C×C products, once per (sequence, head), [BH, 7, BT, BT]: Q Kᵀ, dO Rᵀ, (DGD) K Kᵀ,
    and as the Dh-tile kernels use them, (Q Kᵀ) ⊙ G, (dO Rᵀ) ⊙ G (rows after each token, lower
    triangle with the diagonal), (DGD) (Q Kᵀ) ⊙ E and (K Kᵀ) ⊙ G_prev (rows before each token).
    Loading them keeps those kernels from holding C×C blocks through their loops over K and V."""
    i_bh = tl.program_id(0).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    o_t = tl.arange(0, BT)
    m_t = o_t < C
    o_tk = ((i_b * C + o_t) * H + i_h) * K
    o_tv = ((i_b * C + o_t) * H + i_h) * V
    o_mat = (i_bh * 7 * BT + o_t[:, None]) * BT + o_t[None, :]
    m_causal = o_t[:, None] >= o_t[None, :]
    o_rows_before = (i_bh * (BT + 1) + o_t[:, None]) * BT + o_t[None, :]
    b_qk = tl.zeros([BT, BT], dtype=tl.float32)
    b_kk = tl.zeros([BT, BT], dtype=tl.float32)
    for k0 in range(0, K, BK):
        o_k = k0 + tl.arange(0, BK)
        m_k = o_k < K
        b_kt = tl.trans(_rows(k, o_tk, m_t, o_k, m_k))
        b_qk = tl.dot(_rows(q, o_tk, m_t, o_k, m_k), b_kt, b_qk, input_precision=DOT_PRECISION)
        if USE_DGD:
            b_kk = tl.dot(_rows(k, o_tk, m_t, o_k, m_k), b_kt, b_kk, input_precision=DOT_PRECISION)
    tl.store(qk_dor + o_mat, b_qk)
    tl.store(qk_dor + o_mat + 3 * BT * BT, tl.where(m_causal, b_qk * tl.load(write + o_rows_before + BT), 0.0))
    if USE_DGD:
        tl.store(qk_dor + o_mat + 2 * BT * BT, b_kk)
        tl.store(qk_dor + o_mat + 5 * BT * BT, tl.where(m_causal, b_qk * tl.load(dgd_write + o_rows_before + BT), 0.0))
        tl.store(qk_dor + o_mat + 6 * BT * BT, b_kk * tl.load(write + o_rows_before))
    b_dor = tl.zeros([BT, BT], dtype=tl.float32)
    for v0 in range(0, V, BV):
        o_v = v0 + tl.arange(0, BV)
        m_v = o_v < V
        b_r = tl.load(res + (i_bh * BT + o_t[:, None]) * V + o_v[None, :], mask=m_v[None, :], other=0.0)
        b_dor = tl.dot(_rows(do, o_tv, m_t, o_v, m_v), tl.trans(b_r), b_dor, input_precision=DOT_PRECISION)
    tl.store(qk_dor + o_mat + BT * BT, b_dor)
    tl.store(qk_dor + o_mat + 4 * BT * BT, tl.where(m_causal, b_dor * tl.load(write + o_rows_before + BT), 0.0))


@triton.jit(do_not_specialize=["C"])
def mlp_memory_bwd_kernel_inner(
    q, k, do, w1, w2, s1, s2, dw1n, dw2n, ds1n, ds2n, decay, carry, dgd_write, dgd_inv, res, qk_dor, z_buf, aq_buf,
    dzq_buf, dz2_buf, d_buf, wp_buf, dq_part, cc_part, dvec_part, dlast_part, C,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, DH: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, BD: tl.constexpr, ACT: tl.constexpr, USE_MOMENTUM: tl.constexpr,
    IS_READ_CURRENT: tl.constexpr, USE_DGD: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One Dh tile, first half: the forward of the chunk at W^c and the adjoint of the reads. Stores Z, D,
    P (in dz2_buf, until `mlp_memory_bwd_kernel_dd` replaces it by dZ''), Aq, dZq and with DGD the
    pseudo-values W = (I + L)^{-1} Rhs, Rhs = diag(β_prev) K W1 + diag(f_prev) K S1 − ((K Kᵀ) ⊙ G_prev) D,
    which enter the reads of W1 like D does, with E for G (chunk_state.dgd_pseudo_values).
    Partial outputs ([ND, BH, ...], summed over Dh tiles by the launcher): dq_part = dZq-side of dQ
    [BT, K]; cc_part slots 0, 1, 3 = Aq Aᵀ, dZq Dᵀ, dZq Wᵀ [BT, BT]; dvec_part slots 0, 1 = dβ, df on
    the read rows [BT]; dlast_part = (dβ[C], df[C], dm[C], 0) [4]."""
    i_bh, o_t, m_t, o_d, m_d, o_tk, o_tv, o_w1, o_w2, o_gate, o_scr, o_part = _dh_tile_offsets(C, H, K, V, DH, BT, BD)

    # products over K: Z = K W1, Q W1 (and with momentum Q S1, K S1)
    b_z = tl.zeros([BT, BD], dtype=tl.float32)
    b_qw = tl.zeros([BT, BD], dtype=tl.float32)
    b_qs = tl.zeros([BT, BD], dtype=tl.float32)
    b_kss = tl.zeros([BT, BD], dtype=tl.float32)
    b_last_beta = tl.zeros([BD], dtype=tl.float32)                            # ⟨dW', W⟩ per column
    b_last_carry = tl.zeros([BD], dtype=tl.float32)                           # ⟨dW', S⟩
    b_last_mom = tl.zeros([BD], dtype=tl.float32)                             # ⟨dS', S⟩
    for k0 in range(0, K, BK):
        o_k = k0 + tl.arange(0, BK)
        m_k = o_k < K
        b_k = _rows(k, o_tk, m_t, o_k, m_k)
        b_q = _rows(q, o_tk, m_t, o_k, m_k)
        b_w1 = _tile(w1, o_w1, o_k, m_k, o_d, m_d, DH)
        b_dw1n = _tile(dw1n, o_w1, o_k, m_k, o_d, m_d, DH)
        b_z = tl.dot(b_k, b_w1, b_z, input_precision=DOT_PRECISION)
        b_qw = tl.dot(b_q, b_w1, b_qw, input_precision=DOT_PRECISION)
        b_last_beta += tl.sum(b_dw1n * b_w1, 0)
        if USE_MOMENTUM:
            b_s1 = _tile(s1, o_w1, o_k, m_k, o_d, m_d, DH)
            b_last_carry += tl.sum(b_dw1n * b_s1, 0)
            b_last_mom += tl.sum(_tile(ds1n, o_w1, o_k, m_k, o_d, m_d, DH) * b_s1, 0)
            if USE_DGD:
                b_kss = tl.dot(b_k, b_s1, b_kss, input_precision=DOT_PRECISION)
            if IS_READ_CURRENT:
                b_qs = tl.dot(b_q, b_s1, b_qs, input_precision=DOT_PRECISION)

    # products over V: P = R W2ᵀ, dO W2ᵀ (and dO S2ᵀ)
    b_p = tl.zeros([BT, BD], dtype=tl.float32)
    b_dow = tl.zeros([BT, BD], dtype=tl.float32)
    b_dos = tl.zeros([BT, BD], dtype=tl.float32)
    for v0 in range(0, V, BV):
        o_v = v0 + tl.arange(0, BV)
        m_v = o_v < V
        b_r = tl.load(res + (i_bh * BT + o_t[:, None]) * V + o_v[None, :], mask=m_v[None, :], other=0.0)
        b_do = _rows(do, o_tv, m_t, o_v, m_v)
        b_w2t = _tile_t(w2, o_w2, o_d, m_d, o_v, m_v, V)                     # [BV, BD]
        b_dw2nt = _tile_t(dw2n, o_w2, o_d, m_d, o_v, m_v, V)
        b_p = tl.dot(b_r, b_w2t, b_p, input_precision=DOT_PRECISION)
        b_dow = tl.dot(b_do, b_w2t, b_dow, input_precision=DOT_PRECISION)
        b_last_beta += tl.sum(b_dw2nt * b_w2t, 0)
        if USE_MOMENTUM:
            b_s2t = _tile_t(s2, o_w2, o_d, m_d, o_v, m_v, V)
            b_last_carry += tl.sum(b_dw2nt * b_s2t, 0)
            b_last_mom += tl.sum(_tile_t(ds2n, o_w2, o_d, m_d, o_v, m_v, V) * b_s2t, 0)
            if IS_READ_CURRENT:
                b_dos = tl.dot(b_do, b_s2t, b_dos, input_precision=DOT_PRECISION)
    tl.store(dlast_part + o_part * 4, tl.sum(b_last_beta, 0))
    tl.store(dlast_part + o_part * 4 + 1, tl.sum(b_last_carry, 0))
    tl.store(dlast_part + o_part * 4 + 2, tl.sum(b_last_mom, 0))

    b_a = phi(b_z, ACT)
    b_d = b_p * phi_grad(b_z, ACT)                                            # D = (R W2ᵀ) ⊙ φ'(Z)
    tl.store(z_buf + o_scr, b_z, mask=m_d[None, :])
    tl.store(dz2_buf + o_scr, b_p, mask=m_d[None, :])
    tl.store(d_buf + o_scr, b_d, mask=m_d[None, :])
    b_beta = tl.load(decay + o_gate + 1 + o_t)
    b_carry = tl.load(carry + o_gate + 1 + o_t) if USE_MOMENTUM else b_beta
    o_c7 = (i_bh * 7 * BT + o_t[:, None]) * BT + o_t[None, :]                # masked products: see kernel_qk
    if USE_DGD:
        # W = (I + L)^{-1} Rhs,  Rhs = diag(β_prev) Z + diag(f_prev) K S1 − ((K Kᵀ) ⊙ G_prev) D
        b_rhs = tl.load(decay + o_gate + o_t)[:, None] * b_z - tl.dot(tl.load(qk_dor + o_c7 + 6 * BT * BT), b_d,
                                                                     input_precision=DOT_PRECISION)
        if USE_MOMENTUM:
            b_rhs += tl.load(carry + o_gate + o_t)[:, None] * b_kss
        o_inv = (i_bh * BT + o_t[:, None]) * BT + o_t[None, :]
        b_wp = tl.dot(tl.load(dgd_inv + o_inv), b_rhs, input_precision=DOT_PRECISION)
        tl.store(wp_buf + o_scr, b_wp, mask=m_d[None, :])
    if IS_READ_CURRENT:
        # Zq = β ⊙ Q W1 + f ⊙ Q S1 − ((Q Kᵀ) ⊙ G) D;  dAq = β ⊙ dO W2ᵀ + f ⊙ dO S2ᵀ − ((dO Rᵀ) ⊙ G) A
        b_daq = b_beta[:, None] * b_dow - tl.dot(tl.load(qk_dor + o_c7 + 4 * BT * BT), b_a,
                                                 input_precision=DOT_PRECISION)
        b_zq = b_beta[:, None] * b_qw - tl.dot(tl.load(qk_dor + o_c7 + 3 * BT * BT), b_d, input_precision=DOT_PRECISION)
        if USE_DGD:                                                           # … − ((Q Kᵀ) ⊙ E) W
            b_zq -= tl.dot(tl.load(qk_dor + o_c7 + 5 * BT * BT), b_wp, input_precision=DOT_PRECISION)
        if USE_MOMENTUM:
            b_zq += b_carry[:, None] * b_qs
            b_daq += b_carry[:, None] * b_dos
    else:
        b_zq = b_qw                                                           # Zq = Q W1^c
        b_daq = b_dow
    b_aq = phi(b_zq, ACT)
    b_dzq = b_daq * phi_grad(b_zq, ACT)
    tl.store(aq_buf + o_scr, b_aq, mask=m_d[None, :])
    tl.store(dzq_buf + o_scr, b_dzq, mask=m_d[None, :])
    if IS_READ_CURRENT:
        o_vec = o_part * 8 * BT + o_t
        tl.store(dvec_part + o_vec, tl.sum(b_aq * b_dow, 1) + tl.sum(b_dzq * b_qw, 1))
        if USE_MOMENTUM:
            tl.store(dvec_part + o_vec + BT, tl.sum(b_aq * b_dos, 1) + tl.sum(b_dzq * b_qs, 1))
        o_cc = (o_part * 5 * BT + o_t[:, None]) * BT + o_t[None, :]
        tl.store(cc_part + o_cc, tl.dot(b_aq, tl.trans(b_a), input_precision=DOT_PRECISION))
        tl.store(cc_part + o_cc + BT * BT, tl.dot(b_dzq, tl.trans(b_d), input_precision=DOT_PRECISION))
        if USE_DGD:
            tl.store(cc_part + o_cc + 3 * BT * BT, tl.dot(b_dzq, tl.trans(b_wp), input_precision=DOT_PRECISION))

    # dQ ∋ (β ⊙ dZq) W1ᵀ + (f ⊙ dZq) S1ᵀ, per key tile
    if IS_READ_CURRENT:
        b_dzq_beta = b_beta[:, None] * b_dzq
    else:
        b_dzq_beta = b_dzq
    for k0 in range(0, K, BK):
        o_k = k0 + tl.arange(0, BK)
        m_k = o_k < K
        b_dq = tl.dot(b_dzq_beta, _tile_t(w1, o_w1, o_k, m_k, o_d, m_d, DH), input_precision=DOT_PRECISION)
        if USE_MOMENTUM and IS_READ_CURRENT:
            b_dq = tl.dot(b_carry[:, None] * b_dzq, _tile_t(s1, o_w1, o_k, m_k, o_d, m_d, DH), b_dq,
                          input_precision=DOT_PRECISION)
        tl.store(dq_part + (o_part * BT + o_t[:, None]) * K + o_k[None, :], b_dq, mask=m_k[None, :])


@triton.jit(do_not_specialize=["C"])
def mlp_memory_bwd_kernel_dd(
    k, w2, s1, dw1n, dw2n, ds1n, ds2n, write, mom_write, dgd_write, dgd_inv, res, qk_dor, z_buf, dzq_buf, dp_buf,
    dz2_buf, d_buf, wp_buf, drhs_buf, dr_part, cc_part, dvec_part, C,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, DH: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, BD: tl.constexpr, ACT: tl.constexpr, USE_MOMENTUM: tl.constexpr,
    IS_READ_CURRENT: tl.constexpr, USE_DGD: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One Dh tile, second half (after `mlp_memory_bwd_kernel_inner`): the adjoint dD = −G[C] ⊙ K dW1'
    − N[C] ⊙ K dS1' − ((Q Kᵀ) ⊙ G)ᵀ dZq, with DGD dW = −E[C] ⊙ K dW1' − ((Q Kᵀ) ⊙ E)ᵀ dZq,
    dRhs = (I + L)^{-T} dW and dD ∋ −((K Kᵀ) ⊙ G_prev)ᵀ dRhs; stores dP = dD ⊙ φ'(Z), dZ'' = dD ⊙ P ⊙ φ''(Z)
    (over P, which `inner` left in dz2_buf) and dRhs. The DGD system's forward and backward run in
    separate stages, so neither holds both sets of C×C blocks. Partial outputs: dr_part = dP W2 −
    G[C] ⊙ A dW2' − N[C] ⊙ A dS2' [BT, V]; cc_part slots 2, 4 = dRhs Dᵀ, dRhs Wᵀ; dvec_part slots
    2..6 = dG[C], dN[C], and with DGD dβ, df on the rows before each token, dE[C]."""
    i_bh, o_t, m_t, o_d, m_d, o_tk, o_tv, o_w1, o_w2, o_gate, o_scr, o_part = _dh_tile_offsets(C, H, K, V, DH, BT, BD)

    # products over K: K dW1' (and with momentum K dS1')
    b_kg = tl.zeros([BT, BD], dtype=tl.float32)
    b_ks = tl.zeros([BT, BD], dtype=tl.float32)
    for k0 in range(0, K, BK):
        o_k = k0 + tl.arange(0, BK)
        m_k = o_k < K
        b_k = _rows(k, o_tk, m_t, o_k, m_k)
        b_kg = tl.dot(b_k, _tile(dw1n, o_w1, o_k, m_k, o_d, m_d, DH), b_kg, input_precision=DOT_PRECISION)
        if USE_MOMENTUM:
            b_ks = tl.dot(b_k, _tile(ds1n, o_w1, o_k, m_k, o_d, m_d, DH), b_ks, input_precision=DOT_PRECISION)

    b_d = tl.load(d_buf + o_scr, mask=m_d[None, :], other=0.0)
    b_gl = tl.load(write + (o_gate + C) * BT + o_t)                           # G[C]
    b_dd = -b_gl[:, None] * b_kg                                              # dD = −G[C] ⊙ K dW1' …
    b_dgl = -tl.sum(b_kg * b_d, 1)
    b_dnl = tl.zeros([BT], dtype=tl.float32)
    if USE_MOMENTUM:
        b_nl = tl.load(mom_write + (o_gate + C) * BT + o_t)                   # N[C]
        b_dd -= b_nl[:, None] * b_ks                                          # … − N[C] ⊙ K dS1'
        b_dnl -= tl.sum(b_ks * b_d, 1)
    o_vec = o_part * 8 * BT + o_t
    if USE_DGD:                                                               # dW = −E[C] ⊙ K dW1' …
        b_wp = tl.load(wp_buf + o_scr, mask=m_d[None, :], other=0.0)
        b_dwp = -tl.load(dgd_write + (o_gate + C) * BT + o_t)[:, None] * b_kg
        tl.store(dvec_part + o_vec + 6 * BT, -tl.sum(b_kg * b_wp, 1))
    o_cct = o_t[None, :] * BT + o_t[:, None]                                  # a C×C block read transposed
    if IS_READ_CURRENT or USE_DGD:
        p_c7 = qk_dor + i_bh * 7 * BT * BT                                   # kernel_qk's products
    if IS_READ_CURRENT:
        b_dzq = tl.load(dzq_buf + o_scr, mask=m_d[None, :], other=0.0)
        b_dd -= tl.dot(tl.load(p_c7 + o_cct + 3 * BT * BT), b_dzq, input_precision=DOT_PRECISION)
        if USE_DGD:                                                           # … − ((Q Kᵀ) ⊙ E)ᵀ dZq
            b_dwp -= tl.dot(tl.load(p_c7 + o_cct + 5 * BT * BT), b_dzq, input_precision=DOT_PRECISION)
    b_z = tl.load(z_buf + o_scr, mask=m_d[None, :], other=0.0)
    if USE_DGD:
        # dRhs = (I + L)^{-T} dW;  dD ∋ −((K Kᵀ) ⊙ G_prev)ᵀ dRhs
        b_drhs = tl.dot(tl.load(dgd_inv + i_bh * BT * BT + o_cct), b_dwp, input_precision=DOT_PRECISION)
        b_dd -= tl.dot(tl.load(p_c7 + o_cct + 6 * BT * BT), b_drhs, input_precision=DOT_PRECISION)
        tl.store(drhs_buf + o_scr, b_drhs, mask=m_d[None, :])
        tl.store(dvec_part + o_vec + 4 * BT, tl.sum(b_drhs * b_z, 1))
        p_cc = cc_part + o_part * 5 * BT * BT + tl.trans(o_cct)
        tl.store(p_cc + 2 * BT * BT, tl.dot(b_drhs, tl.trans(b_d), input_precision=DOT_PRECISION))
        tl.store(p_cc + 4 * BT * BT, tl.dot(b_drhs, tl.trans(b_wp), input_precision=DOT_PRECISION))
        if USE_MOMENTUM:                                                      # df_prev = rowsum(dRhs ⊙ K S1),
            b_kss = tl.zeros([BT, BD], dtype=tl.float32)                      # K S1 recomputed here, not kept live
            for k0 in range(0, K, BK):
                o_k = k0 + tl.arange(0, BK)
                m_k = o_k < K
                b_kss = tl.dot(_rows(k, o_tk, m_t, o_k, m_k), _tile(s1, o_w1, o_k, m_k, o_d, m_d, DH), b_kss,
                               input_precision=DOT_PRECISION)
            tl.store(dvec_part + o_vec + 5 * BT, tl.sum(b_drhs * b_kss, 1))
    b_dp = b_dd * phi_grad(b_z, ACT)                                          # dP = dD ⊙ φ'(Z)
    b_p = tl.load(dz2_buf + o_scr, mask=m_d[None, :], other=0.0)
    tl.store(dz2_buf + o_scr, b_dd * b_p * phi_grad2(b_z, ACT), mask=m_d[None, :])   # dZ ∋ dD ⊙ P ⊙ φ''(Z)
    tl.store(dp_buf + o_scr, b_dp, mask=m_d[None, :])

    # dR ∋ dP W2 − G[C] ⊙ A dW2' − N[C] ⊙ A dS2', per value tile; dG[C], dN[C] ∋ −rowsum(A dW2' ⊙ R)
    b_a = phi(b_z, ACT)
    for v0 in range(0, V, BV):
        o_v = v0 + tl.arange(0, BV)
        m_v = o_v < V
        b_r = tl.load(res + (i_bh * BT + o_t[:, None]) * V + o_v[None, :], mask=m_v[None, :], other=0.0)
        b_aw = tl.dot(b_a, _tile(dw2n, o_w2, o_d, m_d, o_v, m_v, V), input_precision=DOT_PRECISION)
        b_dr = tl.dot(b_dp, _tile(w2, o_w2, o_d, m_d, o_v, m_v, V), input_precision=DOT_PRECISION)
        b_dr -= b_gl[:, None] * b_aw
        b_dgl -= tl.sum(b_aw * b_r, 1)
        if USE_MOMENTUM:
            b_as = tl.dot(b_a, _tile(ds2n, o_w2, o_d, m_d, o_v, m_v, V), input_precision=DOT_PRECISION)
            b_dr -= b_nl[:, None] * b_as
            b_dnl -= tl.sum(b_as * b_r, 1)
        tl.store(dr_part + (o_part * BT + o_t[:, None]) * V + o_v[None, :], b_dr, mask=m_v[None, :])
    tl.store(dvec_part + o_vec + 2 * BT, b_dgl)
    tl.store(dvec_part + o_vec + 3 * BT, b_dnl)


@triton.jit(do_not_specialize=["C"])
def mlp_memory_bwd_kernel_dres(
    q, k, do, write, dgd_write, qk_dor, cc, dq_sum, dr_sum, dres, dq, dk, dv, d_gm, d_em, d_gprev, d_eprev, C,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    IS_RESIDUAL: tl.constexpr, IS_SELF_TARGET: tl.constexpr, IS_READ_CURRENT: tl.constexpr, USE_DGD: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """The C×C side of the dual-form reads, once the Dh-tile partials are summed (cc = Aq Aᵀ, dZq Dᵀ):
    dR = dr_sum − ((Aq Aᵀ) ⊙ G)ᵀ dO;  dPq = −(dZq Dᵀ) ⊙ G:  dQ = dq_sum + dPq K [+ dO],
    dK (read part) = dPqᵀ Q [+ dR];  dV = −dR (when the target holds V);
    dG on rows 1..C = −(dO Rᵀ) ⊙ (Aq Aᵀ) − (dZq Dᵀ) ⊙ (Q Kᵀ). With DGD (cc also dRhs Dᵀ, dZq Wᵀ):
    dPq ∋ −(dZq Wᵀ) ⊙ E, dE on rows 1..C = −(dZq Wᵀ) ⊙ (Q Kᵀ), d(K Kᵀ) = −(dRhs Dᵀ) ⊙ G_prev
    (dK ∋ (d(K Kᵀ) + d(K Kᵀ)ᵀ) K) and dG on the rows before each token = −(dRhs Dᵀ) ⊙ (K Kᵀ); the DGD
    system W = (I + L)^{-1} Rhs, L = (K Kᵀ) ⊙ E_prev strictly lower, gives dL = −dRhs Wᵀ (cc slot 4), so
    d(K Kᵀ) ∋ dL ⊙ E_prev and dE on the rows before each token = dL ⊙ (K Kᵀ)."""
    i_bh = tl.program_id(0).to(tl.int64)
    i_b, i_h = i_bh // H, i_bh % H
    o_t = tl.arange(0, BT)
    m_t = o_t < C
    m_causal = o_t[:, None] >= o_t[None, :]
    o_tk = ((i_b * C + o_t) * H + i_h) * K
    o_tv = ((i_b * C + o_t) * H + i_h) * V
    o_mat = (i_bh * BT + o_t[:, None]) * BT + o_t[None, :]
    o_gate = i_bh * (BT + 1)
    o_cc = (i_bh * 5 * BT + o_t[:, None]) * BT + o_t[None, :]
    o_c7 = (i_bh * 7 * BT + o_t[:, None]) * BT + o_t[None, :]
    o_rows_after = (o_gate + 1 + o_t[:, None]) * BT + o_t[None, :]
    if IS_READ_CURRENT:
        b_gm = tl.where(m_causal, tl.load(write + o_rows_after), 0.0)
        b_cc1 = tl.load(cc + o_cc)
        b_cc2 = tl.load(cc + o_cc + BT * BT)
        b_qk, b_dor = tl.load(qk_dor + o_c7), tl.load(qk_dor + o_c7 + BT * BT)
        tl.store(d_gm + o_mat, tl.where(m_causal, -b_dor * b_cc1 - b_cc2 * b_qk, 0.0))
        b_dpq = -b_cc2 * b_gm
        b_ccg = b_cc1 * b_gm
        if USE_DGD:
            b_cc4 = tl.load(cc + o_cc + 3 * BT * BT)
            b_dpq -= b_cc4 * tl.where(m_causal, tl.load(dgd_write + o_rows_after), 0.0)
            tl.store(d_em + o_mat, tl.where(m_causal, -b_cc4 * b_qk, 0.0))
    if USE_DGD:
        b_cc3 = tl.load(cc + o_cc + 2 * BT * BT)
        m_strict = o_t[:, None] > o_t[None, :]                                # G_prev is strictly lower
        b_kk = tl.load(qk_dor + o_c7 + 2 * BT * BT)
        b_dl = tl.where(m_strict, -tl.load(cc + o_cc + 4 * BT * BT), 0.0)    # dL = −dRhs Wᵀ
        b_dkk = tl.where(m_strict, -b_cc3 * tl.load(write + o_rows_after - BT), 0.0)
        b_dkk += b_dl * tl.load(dgd_write + o_rows_after - BT)
        tl.store(d_gprev + o_mat, tl.where(m_strict, -b_cc3 * b_kk, 0.0))
        tl.store(d_eprev + o_mat, b_dl * b_kk)
        b_dkk = b_dkk + tl.trans(b_dkk)
    for v0 in range(0, V, BV):
        o_v = v0 + tl.arange(0, BV)
        m_v = o_v < V
        b_dr = tl.load(dr_sum + (i_bh * BT + o_t[:, None]) * V + o_v[None, :], mask=m_v[None, :], other=0.0)
        if IS_READ_CURRENT:
            b_dr -= tl.dot(tl.trans(b_ccg), _rows(do, o_tv, m_t, o_v, m_v), input_precision=DOT_PRECISION)
        tl.store(dres + (i_bh * BT + o_t[:, None]) * V + o_v[None, :], b_dr, mask=m_v[None, :])
        if IS_RESIDUAL or not IS_SELF_TARGET:
            b_dv = -b_dr
        else:
            b_dv = tl.zeros([BT, BV], dtype=tl.float32)
        tl.store(dv + o_tv[:, None] + o_v[None, :], b_dv, mask=m_t[:, None] & m_v[None, :])
    for k0 in range(0, K, BK):
        o_k = k0 + tl.arange(0, BK)
        m_k = o_k < K
        b_dq = tl.load(dq_sum + (i_bh * BT + o_t[:, None]) * K + o_k[None, :], mask=m_k[None, :], other=0.0)
        b_dk = tl.zeros([BT, BK], dtype=tl.float32)
        if IS_READ_CURRENT:
            b_dq = tl.dot(b_dpq, _rows(k, o_tk, m_t, o_k, m_k), b_dq, input_precision=DOT_PRECISION)
            b_dk = tl.dot(tl.trans(b_dpq), _rows(q, o_tk, m_t, o_k, m_k), b_dk, input_precision=DOT_PRECISION)
        if USE_DGD:
            b_dk = tl.dot(b_dkk, _rows(k, o_tk, m_t, o_k, m_k), b_dk, input_precision=DOT_PRECISION)
        if IS_RESIDUAL:                                                       # K == V: o = q + …, R = k + …
            b_dq += _rows(do, o_tv, m_t, o_k, m_k)
            b_dk += tl.load(dr_sum + (i_bh * BT + o_t[:, None]) * V + o_k[None, :], mask=m_k[None, :], other=0.0)
            if IS_READ_CURRENT:
                b_dk -= tl.dot(tl.trans(b_ccg), _rows(do, o_tv, m_t, o_k, m_k), input_precision=DOT_PRECISION)
        tl.store(dq + o_tk[:, None] + o_k[None, :], b_dq, mask=m_t[:, None] & m_k[None, :])
        tl.store(dk + o_tk[:, None] + o_k[None, :], b_dk, mask=m_t[:, None] & m_k[None, :])


@triton.jit(do_not_specialize=["C"])
def mlp_memory_bwd_kernel_dw(
    q, k, v, do, w1, w2, s1, dw1n, dw2n, ds1n, ds2n, decay, carry, write, mom_decay, mom_write, dgd_write, res, dres,
    qk_dor, z_buf, aq_buf, dzq_buf, dp_buf, dz2_buf, d_buf, wp_buf, drhs_buf, dw1, dw2, ds1, ds2, dk_part, dv_part,
    C,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, DH: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    BV: tl.constexpr, BD: tl.constexpr, ACT: tl.constexpr, USE_MOMENTUM: tl.constexpr,
    IS_READ_CURRENT: tl.constexpr, IS_SELF_TARGET: tl.constexpr, USE_DGD: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """One Dh tile, given dR: dA = dR W2ᵀ − (G[C] ⊙ R) dW2'ᵀ − (N[C] ⊙ R) dS2'ᵀ + dPqᵀ Aq, dZ = dA ⊙ φ'(Z) + dZ'',
    dW1 = β[C] dW1' + Qᵀ(β ⊙ dZq) + Kᵀ dZ [+ Vᵀ dZv],  dS1 = f[C] dW1' + m[C] dS1' + Qᵀ(f ⊙ dZq),
    dW2 = β[C] dW2' + Aqᵀ(β ⊙ dO) + dPᵀ R + (A − Av)ᵀ dR,  dS2 = f[C] dW2' + m[C] dS2' + Aqᵀ(f ⊙ dO);
    partial dK = dZ W1ᵀ − (G[C] ⊙ D) dW1'ᵀ − (N[C] ⊙ D) dS1'ᵀ and (self target) dV = dZv W1ᵀ.
    DGD: Rhs = diag(β_prev) K W1 + … adds β_prev ⊙ dRhs to dZ, and dK ∋ (f_prev ⊙ dRhs) S1ᵀ − (E[C] ⊙ W) dW1'ᵀ,
    dS1 ∋ Kᵀ (f_prev ⊙ dRhs)."""
    i_bh, o_t, m_t, o_d, m_d, o_tk, o_tv, o_w1, o_w2, o_gate, o_scr, o_part = _dh_tile_offsets(C, H, K, V, DH, BT, BD)
    b_gl = tl.load(write + (o_gate + C) * BT + o_t)
    b_beta_last = tl.load(decay + o_gate + C)
    if USE_MOMENTUM:
        b_nl = tl.load(mom_write + (o_gate + C) * BT + o_t)
        b_carry_last = tl.load(carry + o_gate + C)
        b_mom_last = tl.load(mom_decay + o_gate + C)

    b_da = tl.zeros([BT, BD], dtype=tl.float32)
    b_dav = tl.zeros([BT, BD], dtype=tl.float32)
    for v0 in range(0, V, BV):
        o_v = v0 + tl.arange(0, BV)
        m_v = o_v < V
        o_rv = (i_bh * BT + o_t[:, None]) * V + o_v[None, :]
        b_r = tl.load(res + o_rv, mask=m_v[None, :], other=0.0)
        b_dr = tl.load(dres + o_rv, mask=m_v[None, :], other=0.0)
        b_w2t = _tile_t(w2, o_w2, o_d, m_d, o_v, m_v, V)
        b_da = tl.dot(b_dr, b_w2t, b_da, input_precision=DOT_PRECISION)
        b_da = tl.dot(-b_gl[:, None] * b_r, _tile_t(dw2n, o_w2, o_d, m_d, o_v, m_v, V), b_da,
                      input_precision=DOT_PRECISION)
        if USE_MOMENTUM:
            b_da = tl.dot(-b_nl[:, None] * b_r, _tile_t(ds2n, o_w2, o_d, m_d, o_v, m_v, V), b_da,
                          input_precision=DOT_PRECISION)
        if IS_SELF_TARGET:
            b_dav = tl.dot(-b_dr, b_w2t, b_dav, input_precision=DOT_PRECISION)   # dAv = −dR W2ᵀ
    if IS_READ_CURRENT:
        b_dorg = tl.load(qk_dor + (i_bh * 7 * BT + 4 * BT + o_t[:, None]) * BT + o_t[None, :])   # (dO Rᵀ) ⊙ G
        b_da = tl.dot(tl.trans(-b_dorg), tl.load(aq_buf + o_scr, mask=m_d[None, :], other=0.0), b_da,
                      input_precision=DOT_PRECISION)
    b_z = tl.load(z_buf + o_scr, mask=m_d[None, :], other=0.0)
    b_dz = b_da * phi_grad(b_z, ACT) + tl.load(dz2_buf + o_scr, mask=m_d[None, :], other=0.0)
    b_a = phi(b_z, ACT)
    if IS_SELF_TARGET:                                                        # Zv = V W1 (K == V)
        b_zv = tl.zeros([BT, BD], dtype=tl.float32)
        for k0 in range(0, K, BK):
            o_k = k0 + tl.arange(0, BK)
            m_k = o_k < K
            b_zv = tl.dot(_rows(v, o_tv, m_t, o_k, m_k), _tile(w1, o_w1, o_k, m_k, o_d, m_d, DH), b_zv,
                          input_precision=DOT_PRECISION)
        b_dzv = b_dav * phi_grad(b_zv, ACT)
        b_a -= phi(b_zv, ACT)                                                 # R = … − Av W2: dW2 ∋ (A − Av)ᵀ dR

    b_dzq = tl.load(dzq_buf + o_scr, mask=m_d[None, :], other=0.0)
    b_d = tl.load(d_buf + o_scr, mask=m_d[None, :], other=0.0)
    if USE_DGD:
        b_drhs = tl.load(drhs_buf + o_scr, mask=m_d[None, :], other=0.0)
        b_dz += tl.load(decay + o_gate + o_t)[:, None] * b_drhs               # Rhs ∋ diag(β_prev) K W1: like Z
        b_wpe = tl.load(dgd_write + (o_gate + C) * BT + o_t)[:, None] * tl.load(wp_buf + o_scr, mask=m_d[None, :],
                                                                                other=0.0)
        if USE_MOMENTUM:
            b_drhs_carry = tl.load(carry + o_gate + o_t)[:, None] * b_drhs
    if IS_READ_CURRENT:
        b_beta = tl.load(decay + o_gate + 1 + o_t)
        b_dzq_beta = b_beta[:, None] * b_dzq
        if USE_MOMENTUM:
            b_carry = tl.load(carry + o_gate + 1 + o_t)
            b_dzq_carry = b_carry[:, None] * b_dzq
    else:
        b_dzq_beta = b_dzq
    for k0 in range(0, K, BK):
        o_k = k0 + tl.arange(0, BK)
        m_k = o_k < K
        m_kd = m_k[:, None] & m_d[None, :]
        o_kd = o_w1 + o_k[:, None] * DH + o_d[None, :]
        b_qt = _rows_t(q, o_tk, m_t, o_k, m_k)                               # [BK, BT]
        b_kt = _rows_t(k, o_tk, m_t, o_k, m_k)
        b_w1t = _tile_t(w1, o_w1, o_k, m_k, o_d, m_d, DH)                    # [BD, BK]
        b_dw1nt = _tile_t(dw1n, o_w1, o_k, m_k, o_d, m_d, DH)
        b_dw1 = tl.dot(b_qt, b_dzq_beta, b_beta_last * tl.load(dw1n + o_kd, mask=m_kd, other=0.0),
                       input_precision=DOT_PRECISION)
        b_dw1 = tl.dot(b_kt, b_dz, b_dw1, input_precision=DOT_PRECISION)
        b_dk = tl.dot(b_dz, b_w1t, input_precision=DOT_PRECISION)
        b_dk = tl.dot(-b_gl[:, None] * b_d, b_dw1nt, b_dk, input_precision=DOT_PRECISION)
        if USE_DGD:
            b_dk = tl.dot(-b_wpe, b_dw1nt, b_dk, input_precision=DOT_PRECISION)
        if IS_SELF_TARGET:
            b_dw1 = tl.dot(_rows_t(v, o_tv, m_t, o_k, m_k), b_dzv, b_dw1, input_precision=DOT_PRECISION)
            tl.store(dv_part + (o_part * BT + o_t[:, None]) * K + o_k[None, :],
                     tl.dot(b_dzv, b_w1t, input_precision=DOT_PRECISION), mask=m_k[None, :])
        if USE_MOMENTUM:
            b_dk = tl.dot(-b_nl[:, None] * b_d, _tile_t(ds1n, o_w1, o_k, m_k, o_d, m_d, DH), b_dk,
                          input_precision=DOT_PRECISION)
            b_ds1 = (b_carry_last * tl.load(dw1n + o_kd, mask=m_kd, other=0.0)
                     + b_mom_last * tl.load(ds1n + o_kd, mask=m_kd, other=0.0))
            if IS_READ_CURRENT:
                b_ds1 = tl.dot(b_qt, b_dzq_carry, b_ds1, input_precision=DOT_PRECISION)
            if USE_DGD:
                b_ds1 = tl.dot(b_kt, b_drhs_carry, b_ds1, input_precision=DOT_PRECISION)
                b_dk = tl.dot(b_drhs_carry, _tile_t(s1, o_w1, o_k, m_k, o_d, m_d, DH), b_dk,
                              input_precision=DOT_PRECISION)
            tl.store(ds1 + o_kd, b_ds1, mask=m_kd)
        tl.store(dw1 + o_kd, b_dw1, mask=m_kd)
        tl.store(dk_part + (o_part * BT + o_t[:, None]) * K + o_k[None, :], b_dk, mask=m_k[None, :])

    b_aq = tl.load(aq_buf + o_scr, mask=m_d[None, :], other=0.0)
    b_dp = tl.load(dp_buf + o_scr, mask=m_d[None, :], other=0.0)
    for v0 in range(0, V, BV):
        o_v = v0 + tl.arange(0, BV)
        m_v = o_v < V
        m_dv = m_d[:, None] & m_v[None, :]
        o_dv = o_w2 + o_d[:, None] * V + o_v[None, :]
        o_rv = (i_bh * BT + o_t[:, None]) * V + o_v[None, :]
        b_do = _rows(do, o_tv, m_t, o_v, m_v)
        b_dw2n = tl.load(dw2n + o_dv, mask=m_dv, other=0.0)
        if IS_READ_CURRENT:
            b_do_beta = b_beta[:, None] * b_do
        else:
            b_do_beta = b_do
        b_dw2 = tl.dot(tl.trans(b_aq), b_do_beta, b_beta_last * b_dw2n, input_precision=DOT_PRECISION)
        b_dw2 = tl.dot(tl.trans(b_dp), tl.load(res + o_rv, mask=m_v[None, :], other=0.0), b_dw2,
                       input_precision=DOT_PRECISION)
        b_dw2 = tl.dot(tl.trans(b_a), tl.load(dres + o_rv, mask=m_v[None, :], other=0.0), b_dw2,
                       input_precision=DOT_PRECISION)
        tl.store(dw2 + o_dv, b_dw2, mask=m_dv)
        if USE_MOMENTUM:
            b_ds2 = b_carry_last * b_dw2n + b_mom_last * tl.load(ds2n + o_dv, mask=m_dv, other=0.0)
            if IS_READ_CURRENT:
                b_ds2 = tl.dot(tl.trans(b_aq), b_carry[:, None] * b_do, b_ds2, input_precision=DOT_PRECISION)
            tl.store(ds2 + o_dv, b_ds2, mask=m_dv)
