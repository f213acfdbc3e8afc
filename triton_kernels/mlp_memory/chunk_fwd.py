"""Forward kernels of `mlp_memory` (SPEC §3) on chunks laid out flat: [T', H, ·] where every
sequence is padded to whole chunks of BT tokens. Gate matrices come from
`nested_kernels.common.chunk_gates` ([H, NC, BT+1, BT]: β, f, G, E); see README.md here.

States live in one buffer per weight, `[NS, H, ·, ·]` fp32 with NS = NC + N slots: sequence n
owns slots `chunk_offsets[n] + n ..= chunk_offsets[n+1] + n`, the start states of its chunks
followed by its final state. `mlp_memory_fwd_kernel_h` walks the chunks of one sequence × head
in order, reading slot s and writing slot s + 1 tile by tile (the weights are too large for
registers: K × Dh up to 128 × 512), and leaves per token the pre-activations Z, the
activations A, the residuals R, the errors δ and the DGD pseudo-values for the reads.
`mlp_memory_fwd_kernel_o` then reads every chunk in parallel.
"""
import triton
import triton.language as tl

from ..common.activations import ACT_CODES, phi, phi_grad
from ..utils.host_math import cdiv


@triton.jit(do_not_specialize=["NC"])
def mlp_memory_fwd_kernel_h(
    k, v, decay, carry, write, dgd_write, mom_decay_last, mom_write_last, last_rows, dgd_inv, kk_write,
    chunk_offsets, w1_0, w2_0, s1_0, s2_0, h1, h2, hs1, hs2, z, act, res, delta, dgd_rhs, pseudo,
    NC,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, DH: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
    BK: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr, ACTIVATION: tl.constexpr, USE_RESIDUAL: tl.constexpr,
    USE_SELF_TARGET: tl.constexpr, USE_MOMENTUM: tl.constexpr, USE_DGD: tl.constexpr, IS_SHARED: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """The chunk recurrence of one sequence × head. Per chunk, at the chunk-start weights (slot s),
    three loops over Dh tiles: (1) Z = K W1, A = φ(Z), F = (A − φ(V W1)) W2 (the self-target's
    part only with it), the state part of the DGD system, then R; (2) δ = (R W2ᵀ) ⊙ φ'(Z) and W2's
    rows of the tile into slot s + 1; (3) the DGD pseudo-values and W1's columns of the tile.
    BC = max(BT, 16) rows (`tl.dot` needs 16); rows ≥ BT are masked. Barriers order the global
    scratch and state traffic between the program's threads."""
    tl.static_assert(BV >= V)
    tl.static_assert(BC >= BT)
    i_nh = tl.program_id(0)
    i_n, i_h = i_nh // H, i_nh % H
    c_start = tl.load(chunk_offsets + i_n).to(tl.int64)
    c_end = tl.load(chunk_offsets + i_n + 1).to(tl.int64)
    o_t = tl.arange(0, BC)
    m_t = o_t < BT
    o_v = tl.arange(0, BV)
    m_v = o_v < V
    i_w0 = i_n * 0 if IS_SHARED else i_n

    # the initial state into the sequence's first slot
    slot0 = c_start + i_n
    for i_d in range(0, DH, BD):
        o_d = i_d + tl.arange(0, BD)
        m_d = o_d < DH
        for i_k in range(0, K, BK):
            o_k = i_k + tl.arange(0, BK)
            m_kd = (o_k < K)[:, None] & m_d[None, :]
            o_kd = o_k[:, None] * DH + o_d[None, :]
            b = tl.load(w1_0 + (i_w0 * H + i_h).to(tl.int64) * K * DH + o_kd, mask=m_kd, other=0.0)
            tl.store(h1 + (slot0 * H + i_h) * K * DH + o_kd, b, mask=m_kd)
            if USE_MOMENTUM:
                b = tl.load(s1_0 + i_nh.to(tl.int64) * K * DH + o_kd, mask=m_kd, other=0.0)
                tl.store(hs1 + (slot0 * H + i_h) * K * DH + o_kd, b, mask=m_kd)
        m_dv = m_d[:, None] & m_v[None, :]
        o_dv = o_d[:, None] * V + o_v[None, :]
        b = tl.load(w2_0 + (i_w0 * H + i_h).to(tl.int64) * DH * V + o_dv, mask=m_dv, other=0.0)
        tl.store(h2 + (slot0 * H + i_h) * DH * V + o_dv, b, mask=m_dv)
        if USE_MOMENTUM:
            b = tl.load(s2_0 + i_nh.to(tl.int64) * DH * V + o_dv, mask=m_dv, other=0.0)
            tl.store(hs2 + (slot0 * H + i_h) * DH * V + o_dv, b, mask=m_dv)
    tl.debug_barrier()

    for i_c in range(c_start, c_end):
        o_tok = i_c * BT + o_t                                                # rows of the flat layout
        o_chunk = i_h * NC + i_c                                              # gate matrices [H, NC, ...]
        o_gate = o_chunk * (BT + 1)
        p_w1 = h1 + ((i_c + i_n) * H + i_h) * K * DH                         # slot s: the chunk start
        p_w2 = h2 + ((i_c + i_n) * H + i_h) * DH * V
        q_w1 = p_w1 + H * K * DH                                              # slot s + 1
        q_w2 = p_w2 + H * DH * V
        if USE_MOMENTUM:
            p_s1 = hs1 + ((i_c + i_n) * H + i_h) * K * DH
            p_s2 = hs2 + ((i_c + i_n) * H + i_h) * DH * V
            q_s1 = p_s1 + H * K * DH
            q_s2 = p_s2 + H * DH * V
        o_tv = (o_tok[:, None] * H + i_h) * V + o_v[None, :]
        m_tv = m_t[:, None] & m_v[None, :]
        b_vv = tl.load(v + o_tv, mask=m_tv, other=0.0)
        dtype = b_vv.dtype

        # phase 1: Z = K W1^c, A = φ(Z), F = A W2^c (and the self-target's f_{W^c}(V))
        b_f = tl.zeros([BC, BV], dtype=tl.float32)
        for i_d in range(0, DH, BD):
            o_d = i_d + tl.arange(0, BD)
            m_d = o_d < DH
            b_z = tl.zeros([BC, BD], dtype=tl.float32)
            b_zv = tl.zeros([BC, BD], dtype=tl.float32)
            b_ks = tl.zeros([BC, BD], dtype=tl.float32)
            for i_k in range(0, K, BK):
                o_k = i_k + tl.arange(0, BK)
                m_k = o_k < K
                m_tk = m_t[:, None] & m_k[None, :]
                b_k = tl.load(k + (o_tok[:, None] * H + i_h) * K + o_k[None, :], mask=m_tk, other=0.0)
                b_w1 = tl.load(p_w1 + o_k[:, None] * DH + o_d[None, :], mask=m_k[:, None] & m_d[None, :], other=0.0)
                b_z += tl.dot(b_k, b_w1.to(dtype), input_precision=DOT_PRECISION)
                if USE_SELF_TARGET:                                           # K == V
                    b_vk = tl.load(v + (o_tok[:, None] * H + i_h) * V + o_k[None, :], mask=m_tk, other=0.0)
                    b_zv += tl.dot(b_vk, b_w1.to(dtype), input_precision=DOT_PRECISION)
                if USE_DGD and USE_MOMENTUM:
                    b_s1 = tl.load(p_s1 + o_k[:, None] * DH + o_d[None, :], mask=m_k[:, None] & m_d[None, :], other=0.0)
                    b_ks += tl.dot(b_k, b_s1.to(dtype), input_precision=DOT_PRECISION)
            o_td = (o_tok[:, None] * H + i_h) * DH + o_d[None, :]
            m_td = m_t[:, None] & m_d[None, :]
            tl.store(z + o_td, b_z, mask=m_td)
            if USE_DGD:                                                       # the state's part of the DGD system
                b_p = tl.load(decay + o_gate + o_t, mask=m_t, other=0.0)[:, None] * b_z
                if USE_MOMENTUM:
                    b_p += tl.load(carry + o_gate + o_t, mask=m_t, other=0.0)[:, None] * b_ks
                tl.store(dgd_rhs + o_td, b_p, mask=m_td)
            b_a = phi(b_z, ACTIVATION)
            tl.store(act + o_td, b_a, mask=m_td)
            if USE_SELF_TARGET:                                               # (A − φ(V W1)) W2: one accumulator
                b_a -= phi(b_zv, ACTIVATION)
            b_w2 = tl.load(p_w2 + o_d[:, None] * V + o_v[None, :], mask=m_d[:, None] & m_v[None, :], other=0.0)
            b_f += tl.dot(b_a.to(dtype), b_w2.to(dtype), input_precision=DOT_PRECISION)
        # R = [K +] A W2 − V, or with the self-target [K − V +] (A − φ(V W1)) W2
        b_r = b_f
        if USE_RESIDUAL or not USE_SELF_TARGET:
            b_r -= b_vv.to(tl.float32)
        if USE_RESIDUAL:                                                      # K == V
            b_r += tl.load(k + o_tv, mask=m_tv, other=0.0).to(tl.float32)
        tl.store(res + o_tv, b_r, mask=m_tv)
        tl.debug_barrier()

        # phase 2: δ and W2's rows, one Dh tile at a time. Only R (in the dot dtype) stays live
        # across the tiles: the gate rows scale A instead of R.
        b_r = b_r.to(dtype)
        i_last = tl.load(last_rows + i_c)
        b_decay_last = tl.load(decay + o_gate + i_last)
        if USE_MOMENTUM:
            b_carry_last = tl.load(carry + o_gate + i_last)
            b_mom_decay = tl.load(mom_decay_last + o_chunk)
        for i_d in range(0, DH, BD):
            o_d = i_d + tl.arange(0, BD)
            m_d = o_d < DH
            o_td = (o_tok[:, None] * H + i_h) * DH + o_d[None, :]
            m_td = m_t[:, None] & m_d[None, :]
            b_z = tl.load(z + o_td, mask=m_td, other=0.0)
            o_dv = o_d[:, None] * V + o_v[None, :]
            m_dv = m_d[:, None] & m_v[None, :]
            b_w2 = tl.load(p_w2 + o_dv, mask=m_dv, other=0.0)
            b_delta = tl.dot(b_r, tl.trans(b_w2.to(dtype)), input_precision=DOT_PRECISION) * phi_grad(
                b_z, ACTIVATION)                                              # δ = (R W2ᵀ) ⊙ φ'(Z)
            tl.store(delta + o_td, b_delta, mask=m_td)
            # W2 rows of the tile: β W2 + f S2 − (G ⊙ A)ᵀ R;  S2 = m S2 − (N ⊙ A)ᵀ R
            b_a = tl.load(act + o_td, mask=m_td, other=0.0)
            b_g_last = tl.load(write + (o_gate + i_last) * BT + o_t, mask=m_t, other=0.0)
            b_w2 = b_decay_last * b_w2 - tl.dot(tl.trans((b_g_last[:, None] * b_a).to(dtype)), b_r,
                                                input_precision=DOT_PRECISION)
            if USE_MOMENTUM:
                b_n_last = tl.load(mom_write_last + o_chunk * BT + o_t, mask=m_t, other=0.0)
                b_s2 = tl.load(p_s2 + o_dv, mask=m_dv, other=0.0)
                b_w2 += b_carry_last * b_s2
                b_s2 = b_mom_decay * b_s2 - tl.dot(tl.trans((b_n_last[:, None] * b_a).to(dtype)), b_r,
                                                   input_precision=DOT_PRECISION)
                tl.store(q_s2 + o_dv, b_s2, mask=m_dv)
            tl.store(q_w2 + o_dv, b_w2, mask=m_dv)
        tl.debug_barrier()

        # phase 3: the DGD pseudo-values and W1's columns, one Dh tile at a time (R is dead here)
        b_g_last = tl.load(write + (o_gate + i_last) * BT + o_t, mask=m_t, other=0.0)
        if USE_MOMENTUM:
            b_n_last = tl.load(mom_write_last + o_chunk * BT + o_t, mask=m_t, other=0.0)
        for i_d in range(0, DH, BD):
            o_d = i_d + tl.arange(0, BD)
            m_d = o_d < DH
            o_td = (o_tok[:, None] * H + i_h) * DH + o_d[None, :]
            m_td = m_t[:, None] & m_d[None, :]
            b_delta = tl.load(delta + o_td, mask=m_td, other=0.0)
            b_upd1 = b_g_last[:, None] * b_delta
            if USE_DGD:                                                       # W = (I + L)^{-1} P
                m_cc = m_t[:, None] & m_t[None, :]
                o_cc = (o_chunk * BT + o_t[:, None]) * BT + o_t[None, :]
                b_kk_write = tl.load(kk_write + o_cc, mask=m_cc, other=0.0)  # (K Kᵀ) ⊙ G, rows 0..BT−1
                b_p = tl.load(dgd_rhs + o_td, mask=m_td, other=0.0) - tl.dot(b_kk_write, b_delta,
                                                                              input_precision=DOT_PRECISION)
                b_w = tl.dot(tl.load(dgd_inv + o_cc, mask=m_cc, other=0.0), b_p, input_precision=DOT_PRECISION)
                tl.store(pseudo + o_td, b_w, mask=m_td)
                b_upd1 += tl.load(dgd_write + (o_gate + i_last) * BT + o_t, mask=m_t, other=0.0)[:, None] * b_w
            b_upd1 = b_upd1.to(dtype)
            if USE_MOMENTUM:
                b_mom_upd1 = (b_n_last[:, None] * b_delta).to(dtype)
            # W1 columns of the tile: β W1 + f S1 − Kᵀ (G ⊙ δ + E ⊙ W);  S1 = m S1 − Kᵀ (N ⊙ δ)
            for i_k in range(0, K, BK):
                o_k = i_k + tl.arange(0, BK)
                m_k = o_k < K
                b_k = tl.load(k + (o_tok[:, None] * H + i_h) * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :],
                              other=0.0)
                o_kd = o_k[:, None] * DH + o_d[None, :]
                m_kd = m_k[:, None] & m_d[None, :]
                b_w1 = b_decay_last * tl.load(p_w1 + o_kd, mask=m_kd, other=0.0) - tl.dot(
                    tl.trans(b_k), b_upd1, input_precision=DOT_PRECISION)
                if USE_MOMENTUM:
                    b_s1 = tl.load(p_s1 + o_kd, mask=m_kd, other=0.0)
                    b_w1 += b_carry_last * b_s1
                    b_s1 = b_mom_decay * b_s1 - tl.dot(tl.trans(b_k), b_mom_upd1, input_precision=DOT_PRECISION)
                    tl.store(q_s1 + o_kd, b_s1, mask=m_kd)
                tl.store(q_w1 + o_kd, b_w1, mask=m_kd)
        tl.debug_barrier()


@triton.jit(do_not_specialize=["NC"])
def mlp_memory_fwd_kernel_o(
    q, k, decay, carry, write, dgd_write, state_slots, h1, h2, hs1, hs2, act, res, delta, pseudo, o,
    NC,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, DH: tl.constexpr, BT: tl.constexpr, BC: tl.constexpr,
    BK: tl.constexpr, BD: tl.constexpr, BV: tl.constexpr, ACTIVATION: tl.constexpr, USE_RESIDUAL: tl.constexpr,
    USE_MOMENTUM: tl.constexpr, USE_DGD: tl.constexpr, IS_CURRENT: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """The reads of one chunk × head × value tile. `read="chunk_start"`: O = [Q +] φ(Q W1^c) W2^c.
    `read="current"` (the dual form, rows 1..BT of the gates): Zq = β ⊙ Q W1^c + f ⊙ Q S1^c
    − ((Q Kᵀ) ⊙ G) δ − [dgd] ((Q Kᵀ) ⊙ E) W, Aq = φ(Zq), O = [Q +] β ⊙ Aq W2^c + f ⊙ Aq S2^c
    − ((Aq Aᵀ) ⊙ G) R. Zq is recomputed for every value tile."""
    NV = tl.cdiv(V, BV)
    i_cv, i_h = tl.program_id(0), tl.program_id(1)                           # chunks × value tiles: the uncapped axis
    i_c, i_v = (i_cv // NV).to(tl.int64), i_cv % NV
    o_t = tl.arange(0, BC)
    m_t = o_t < BT
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    o_tok = i_c * BT + o_t
    o_chunk = i_h * NC + i_c
    o_gate = o_chunk * (BT + 1) + 1                                           # rows 1..BT: after each token
    slot = tl.load(state_slots + i_c).to(tl.int64)
    p_w1 = h1 + (slot * H + i_h) * K * DH
    p_w2 = h2 + (slot * H + i_h) * DH * V
    if USE_MOMENTUM:
        p_s1 = hs1 + (slot * H + i_h) * K * DH
        p_s2 = hs2 + (slot * H + i_h) * DH * V
    o_tv = (o_tok[:, None] * H + i_h) * V + o_v[None, :]
    m_tv = m_t[:, None] & m_v[None, :]
    dtype = q.dtype.element_ty

    if IS_CURRENT:
        m_cc = m_t[:, None] & m_t[None, :] & (o_t[:, None] >= o_t[None, :])
        o_cc = (o_gate + o_t[:, None]) * BT + o_t[None, :]
        b_qk = tl.zeros([BC, BC], dtype=tl.float32)
        for i_k in range(0, K, BK):
            o_k = i_k + tl.arange(0, BK)
            m_tk = m_t[:, None] & (o_k < K)[None, :]
            b_q = tl.load(q + (o_tok[:, None] * H + i_h) * K + o_k[None, :], mask=m_tk, other=0.0)
            b_k = tl.load(k + (o_tok[:, None] * H + i_h) * K + o_k[None, :], mask=m_tk, other=0.0)
            b_qk += tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PRECISION)
        b_qk_write = b_qk * tl.load(write + o_cc, mask=m_cc, other=0.0)
        if USE_DGD:
            b_qk_dgd = b_qk * tl.load(dgd_write + o_cc, mask=m_cc, other=0.0)
        b_decay = tl.load(decay + o_gate + o_t, mask=m_t, other=0.0)
        if USE_MOMENTUM:
            b_carry = tl.load(carry + o_gate + o_t, mask=m_t, other=0.0)
        b_aa = tl.zeros([BC, BC], dtype=tl.float32)
        b_os = tl.zeros([BC, BV], dtype=tl.float32)
    b_o = tl.zeros([BC, BV], dtype=tl.float32)
    for i_d in range(0, DH, BD):
        o_d = i_d + tl.arange(0, BD)
        m_d = o_d < DH
        b_zq = tl.zeros([BC, BD], dtype=tl.float32)
        if IS_CURRENT and USE_MOMENTUM:
            b_qs = tl.zeros([BC, BD], dtype=tl.float32)
        for i_k in range(0, K, BK):
            o_k = i_k + tl.arange(0, BK)
            m_k = o_k < K
            b_q = tl.load(q + (o_tok[:, None] * H + i_h) * K + o_k[None, :], mask=m_t[:, None] & m_k[None, :], other=0.0)
            o_kd = o_k[:, None] * DH + o_d[None, :]
            m_kd = m_k[:, None] & m_d[None, :]
            b_zq += tl.dot(b_q, tl.load(p_w1 + o_kd, mask=m_kd, other=0.0).to(dtype), input_precision=DOT_PRECISION)
            if IS_CURRENT and USE_MOMENTUM:
                b_qs += tl.dot(b_q, tl.load(p_s1 + o_kd, mask=m_kd, other=0.0).to(dtype), input_precision=DOT_PRECISION)
        o_dv = o_d[:, None] * V + o_v[None, :]
        m_dv = m_d[:, None] & m_v[None, :]
        if IS_CURRENT:
            o_td = (o_tok[:, None] * H + i_h) * DH + o_d[None, :]
            m_td = m_t[:, None] & m_d[None, :]
            b_zq = b_decay[:, None] * b_zq - tl.dot(b_qk_write, tl.load(delta + o_td, mask=m_td, other=0.0),
                                                    input_precision=DOT_PRECISION)
            if USE_MOMENTUM:
                b_zq += b_carry[:, None] * b_qs
            if USE_DGD:
                b_zq -= tl.dot(b_qk_dgd, tl.load(pseudo + o_td, mask=m_td, other=0.0), input_precision=DOT_PRECISION)
            b_aq = phi(b_zq, ACTIVATION).to(dtype)
            b_a = tl.load(act + o_td, mask=m_td, other=0.0).to(dtype)
            b_aa += tl.dot(b_aq, tl.trans(b_a), input_precision=DOT_PRECISION)
            if USE_MOMENTUM:
                b_os += tl.dot(b_aq, tl.load(p_s2 + o_dv, mask=m_dv, other=0.0).to(dtype), input_precision=DOT_PRECISION)
        else:
            b_aq = phi(b_zq, ACTIVATION).to(dtype)
        b_o += tl.dot(b_aq, tl.load(p_w2 + o_dv, mask=m_dv, other=0.0).to(dtype), input_precision=DOT_PRECISION)
    if IS_CURRENT:
        b_o = b_decay[:, None] * b_o
        if USE_MOMENTUM:
            b_o += b_carry[:, None] * b_os
        b_aa_write = b_aa * tl.load(write + o_cc, mask=m_cc, other=0.0)
        b_o -= tl.dot(b_aa_write, tl.load(res + o_tv, mask=m_tv, other=0.0), input_precision=DOT_PRECISION)
    if USE_RESIDUAL:                                                          # K == V
        b_o += tl.load(q + (o_tok[:, None] * H + i_h) * K + o_v[None, :], mask=m_tv, other=0.0).to(tl.float32)
    tl.store(o + o_tv, b_o.to(o.dtype.element_ty), mask=m_tv)


def state_slots(chunk_offsets):
    """[NC] int32: the state slot of each chunk's start (chunk c of sequence n: c + n)."""
    import torch

    counts = (chunk_offsets[1:] - chunk_offsets[:-1]).long()
    seq = torch.repeat_interleave(torch.arange(counts.numel(), device=chunk_offsets.device), counts)
    return (torch.arange(seq.numel(), device=seq.device) + seq).to(torch.int32)


def mlp_memory_fwd(q, k, v, gates, dgd_inv, kk_write, chunk_offsets, last_rows, w1_0, w2_0, s1_0, s2_0, *,
                   activation, residual, dgd, self_target, read, out_dtype):
    """Launch both forward kernels. q, k `[T', H, K]`, v `[T', H, V]` in the flat chunk layout;
    `gates` = (decay, carry, write, dgd_write, mom_decay_last, mom_write_last) over `[H, NC, ...]`;
    dgd_inv and kk_write = (K Kᵀ) ⊙ G rows 0..BT−1 `[H, NC, BT, BT]` with DGD (else None);
    w1_0 `[N | 1, H, K, Dh]`, w2_0 `[N | 1, H, Dh, V]`, s1_0, s2_0 `[N, H, ·, ·]` (None without momentum).
    `out_dtype` is the op's input dtype (q, k, v may be fp32 copies of 16-bit inputs): it sets the
    products' precision. Returns o (in `out_dtype`) and the states h1, h2, hs1, hs2 `[NC + N, H, ·, ·]`
    fp32 (slots as in the module docstring; hs1, hs2 None without momentum)."""
    import torch

    from ..utils.launch import launch
    from ..utils.operand_precision import dot_precision
    from .configs import launch_config

    decay, carry, write, dgd_write, mom_decay_last, mom_write_last = gates
    Tp, H, K = k.shape
    V, DH = v.shape[-1], w1_0.shape[-1]
    BT = write.shape[-1]
    NC = Tp // BT
    N = chunk_offsets.numel() - 1
    assert K <= 128 and V <= 128 and DH <= 512, f"mlp_memory triton: K, V up to 128, Dh up to 512; got {K}, {V}, {DH}"
    assert BT in (8, 16, 32, 64), f"mlp_memory triton: chunk_size in (8, 16, 32, 64), got {BT}"
    use_momentum = carry is not None
    precision = dot_precision(out_dtype)
    f32 = dict(dtype=torch.float32, device=k.device)
    NS = NC + N
    h1, h2 = torch.empty(NS, H, K, DH, **f32), torch.empty(NS, H, DH, V, **f32)
    hs1 = torch.empty(NS, H, K, DH, **f32) if use_momentum else None
    hs2 = torch.empty(NS, H, DH, V, **f32) if use_momentum else None
    z, act, delta = (torch.empty(Tp, H, DH, **f32) for _ in range(3))
    res = torch.empty(Tp, H, V, **f32)
    dgd_rhs = torch.empty(Tp, H, DH, **f32) if dgd else None
    pseudo = torch.empty(Tp, H, DH, **f32) if dgd else None
    common = dict(NC=NC, H=H, K=K, V=V, DH=DH, BT=BT, BC=max(16, BT),
                  ACTIVATION=ACT_CODES[activation], USE_RESIDUAL=residual,
                  USE_MOMENTUM=use_momentum, USE_DGD=dgd, DOT_PRECISION=precision)
    cfg = launch_config("fwd_h", K, V, DH, BT, fp32_operands=k.dtype == torch.float32)
    launch(
        mlp_memory_fwd_kernel_h, (N * H,), k.device,
        k=k, v=v, decay=decay, carry=carry, write=write, dgd_write=dgd_write, mom_decay_last=mom_decay_last,
        mom_write_last=mom_write_last, last_rows=last_rows, dgd_inv=dgd_inv, kk_write=kk_write,
        chunk_offsets=chunk_offsets, w1_0=w1_0, w2_0=w2_0, s1_0=s1_0, s2_0=s2_0, h1=h1, h2=h2, hs1=hs1, hs2=hs2,
        z=z, act=act, res=res, delta=delta, dgd_rhs=dgd_rhs, pseudo=pseudo, USE_SELF_TARGET=self_target,
        IS_SHARED=w1_0.shape[0] == 1 and N > 1, **common, **cfg._asdict(),
    )
    o = torch.empty(v.shape, dtype=out_dtype, device=v.device)
    cfg = launch_config("fwd_o", K, V, DH, BT, read_current=read == "current")
    if NC:
        launch(
            mlp_memory_fwd_kernel_o, (NC * cdiv(V, cfg.BV), H), k.device,
            q=q, k=k, decay=decay, carry=carry, write=write, dgd_write=dgd_write,
            state_slots=state_slots(chunk_offsets), h1=h1, h2=h2, hs1=hs1, hs2=hs2, act=act, res=res, delta=delta,
            pseudo=pseudo, o=o, IS_CURRENT=read == "current", **common, **cfg._asdict(),
        )
    return o, h1, h2, hs1, hs2
