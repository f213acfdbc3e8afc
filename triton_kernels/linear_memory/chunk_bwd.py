"""Backward kernels of `linear_memory` on the flat chunk layout (see chunk_fwd.py, README.md).

`linear_memory_bwd_kernel_dh` runs the chunks of a sequence in reverse, carrying the adjoints
(dM, dS) of the chunk-end state in fp32 registers per value tile; per chunk it stores them and
the adjoints dR, dW, dP of the residuals, the DGD pseudo-values and the DGD right-hand side.
`linear_memory_bwd_kernel_dq` (the reads' side) and `linear_memory_bwd_kernel_dk` (the writes'
side) then form, in parallel over chunks, dQ, dK and the gradients of the gate matrices and of
the DGD inverse, as partial sums per value tile.
"""
import triton
import triton.language as tl


@triton.jit(do_not_specialize=["NC"])
def linear_memory_bwd_kernel_dh(
    q, k, do, decay, carry, write, dgd_write, mom_decay_last, mom_write_last, last_rows, dgd_inv,
    chunk_offsets, dht, dst, dh, ds, dres, dpseudo, drhs, dh0, ds0, scale,
    NC,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_MOMENTUM: tl.constexpr, USE_DGD: tl.constexpr, USE_FINAL_STATE_GRADIENT: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    i_v, i_nh = tl.program_id(0), tl.program_id(1)
    i_n, i_h = i_nh // H, i_nh % H
    c_start = tl.load(chunk_offsets + i_n).to(tl.int64)
    c_end = tl.load(chunk_offsets + i_n + 1).to(tl.int64)
    o_t = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    m_causal = o_t[:, None] >= o_t[None, :]
    o_state = (i_nh.to(tl.int64) * K + o_k[:, None]) * V + o_v[None, :]

    b_dx = tl.zeros([BK, BV], dtype=tl.float32)
    b_ds = tl.zeros([BK, BV], dtype=tl.float32)
    if USE_FINAL_STATE_GRADIENT:
        b_dx += tl.load(dht + o_state, mask=m_kv, other=0.0)
        if USE_MOMENTUM:
            b_ds += tl.load(dst + o_state, mask=m_kv, other=0.0)

    for i_r in range(c_start, c_end):
        i_c = c_start + c_end - 1 - i_r                                       # chunks in reverse
        o_tok = i_c * BT + o_t
        b_q = tl.load(q + (o_tok[:, None] * H + i_h) * K + o_k[None, :], mask=m_k[None, :], other=0.0)
        b_k = tl.load(k + (o_tok[:, None] * H + i_h) * K + o_k[None, :], mask=m_k[None, :], other=0.0)
        o_tv = (o_tok[:, None] * H + i_h) * V + o_v[None, :]
        b_do = scale * tl.load(do + o_tv, mask=m_v[None, :], other=0.0).to(tl.float32)
        o_chunk = i_h * NC + i_c
        o_hc = (o_chunk * K + o_k[:, None]) * V + o_v[None, :]
        tl.store(dh + o_hc, b_dx, mask=m_kv)                                  # ∂L/∂M at the chunk end
        if USE_MOMENTUM:
            tl.store(ds + o_hc, b_ds, mask=m_kv)

        i_last = tl.load(last_rows + i_c)
        o_gate = o_chunk * (BT + 1)
        b_qk = tl.where(m_causal, tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PRECISION), 0.0)
        b_kdx = tl.dot(b_k, b_dx.to(b_k.dtype), input_precision=DOT_PRECISION)
        b_write_after = tl.load(write + (o_gate + 1 + o_t[:, None]) * BT + o_t[None, :])
        # dR = −G[last] ⊙ K dM − N[last] ⊙ K dS − ((Q Kᵀ) ⊙ G)ᵀ dO
        b_dr = -tl.load(write + (o_gate + i_last) * BT + o_t)[:, None] * b_kdx - tl.dot(
            tl.trans(b_qk * b_write_after), b_do, input_precision=DOT_PRECISION)
        b_decay_after = tl.load(decay + o_gate + 1 + o_t)
        b_dx_new = tl.load(decay + o_gate + i_last) * b_dx + tl.dot(
            tl.trans(b_q), (b_decay_after[:, None] * b_do).to(b_q.dtype), input_precision=DOT_PRECISION)
        if USE_MOMENTUM:
            b_kds = tl.dot(b_k, b_ds.to(b_k.dtype), input_precision=DOT_PRECISION)
            b_dr -= tl.load(mom_write_last + o_chunk * BT + o_t)[:, None] * b_kds
            b_carry_after = tl.load(carry + o_gate + 1 + o_t)
            b_ds_new = tl.load(carry + o_gate + i_last) * b_dx + tl.load(mom_decay_last + o_chunk) * b_ds + tl.dot(
                tl.trans(b_q), (b_carry_after[:, None] * b_do).to(b_q.dtype), input_precision=DOT_PRECISION)
        if USE_DGD:
            b_dgd_after = tl.load(dgd_write + (o_gate + 1 + o_t[:, None]) * BT + o_t[None, :])
            # dW = −E[last] ⊙ K dM − ((Q Kᵀ) ⊙ E)ᵀ dO;  dP = (I + L)^{-T} dW
            b_dw = -tl.load(dgd_write + (o_gate + i_last) * BT + o_t)[:, None] * b_kdx - tl.dot(
                tl.trans(b_qk * b_dgd_after), b_do, input_precision=DOT_PRECISION)
            tl.store(dpseudo + o_tv, b_dw, mask=m_v[None, :])
            b_inv = tl.load(dgd_inv + (o_chunk * BT + o_t[:, None]) * BT + o_t[None, :])
            b_dp = tl.dot(tl.trans(b_inv), b_dw, input_precision=DOT_PRECISION)
            tl.store(drhs + o_tv, b_dp, mask=m_v[None, :])
            b_kk = tl.dot(b_k, tl.trans(b_k), input_precision=DOT_PRECISION)
            b_write_before = tl.load(write + (o_gate + o_t[:, None]) * BT + o_t[None, :])
            b_dr -= tl.dot(tl.trans(b_kk * b_write_before), b_dp, input_precision=DOT_PRECISION)
            b_dx_new += tl.dot(tl.trans(b_k), (tl.load(decay + o_gate + o_t)[:, None] * b_dp).to(b_k.dtype),
                               input_precision=DOT_PRECISION)
            if USE_MOMENTUM:
                b_ds_new += tl.dot(tl.trans(b_k), (tl.load(carry + o_gate + o_t)[:, None] * b_dp).to(b_k.dtype),
                                   input_precision=DOT_PRECISION)
        tl.store(dres + o_tv, b_dr, mask=m_v[None, :])
        b_dx = b_dx_new + tl.dot(tl.trans(b_k), b_dr.to(b_k.dtype), input_precision=DOT_PRECISION)  # R = K M^c − V
        if USE_MOMENTUM:
            b_ds = b_ds_new

    tl.store(dh0 + o_state, b_dx, mask=m_kv)
    if USE_MOMENTUM:
        tl.store(ds0 + o_state, b_ds, mask=m_kv)


@triton.jit(do_not_specialize=["NC"])
def linear_memory_bwd_kernel_dq(
    q, k, do, decay, carry, write, dgd_write, h, s, res, pseudo, dq, dqk, d_decay, d_carry, d_write, d_dgd_write,
    scale,
    NC,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_MOMENTUM: tl.constexpr, USE_DGD: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """The reads' side, partial over value tile i_v: dQ, dQ̃ = tril(−(Ō Rᵀ) ⊙ G − (Ō Wᵀ) ⊙ E) (kept for dK),
    and the gradients of β, f, G, E on the rows after each token. Partial outputs are laid out
    [NV, H, NC, 3, ...] with slot 0 = rows after each token (see `linear_memory_bwd`)."""
    i_v, i_c, i_h = tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2)
    o_t = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    m_causal = o_t[:, None] >= o_t[None, :]
    o_tok = i_c * BT + o_t
    o_tk = (o_tok[:, None] * H + i_h) * K + o_k[None, :]
    o_tv = (o_tok[:, None] * H + i_h) * V + o_v[None, :]
    o_chunk = i_h * NC + i_c
    o_hc = (o_chunk * K + o_k[:, None]) * V + o_v[None, :]
    o_gate = o_chunk * (BT + 1) + 1                                           # rows after each token
    o_part = i_v * H * NC + o_chunk
    o_mat = o_t[:, None] * BT + o_t[None, :]

    b_q = tl.load(q + o_tk, mask=m_k[None, :], other=0.0)
    b_k = tl.load(k + o_tk, mask=m_k[None, :], other=0.0)
    b_do = scale * tl.load(do + o_tv, mask=m_v[None, :], other=0.0).to(tl.float32)
    b_x = tl.load(h + o_hc, mask=m_kv, other=0.0)
    b_r = tl.load(res + o_tv, mask=m_v[None, :], other=0.0)
    b_qk = tl.where(m_causal, tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PRECISION), 0.0)
    b_dor = tl.dot(b_do, tl.trans(b_r), input_precision=DOT_PRECISION)
    tl.store(d_write + o_part * 3 * BT * BT + o_mat, -b_qk * b_dor)
    b_dqk = -b_dor * tl.load(write + o_gate * BT + o_mat)
    b_dq = tl.load(decay + o_gate + o_t)[:, None] * tl.dot(b_do, tl.trans(b_x), input_precision=DOT_PRECISION)
    tl.store(d_decay + o_part * 3 * BT + o_t,
             tl.sum(b_do * tl.dot(b_q, b_x.to(b_q.dtype), input_precision=DOT_PRECISION), 1))
    if USE_MOMENTUM:
        b_s = tl.load(s + o_hc, mask=m_kv, other=0.0)
        b_dq += tl.load(carry + o_gate + o_t)[:, None] * tl.dot(b_do, tl.trans(b_s), input_precision=DOT_PRECISION)
        tl.store(d_carry + o_part * 3 * BT + o_t,
                 tl.sum(b_do * tl.dot(b_q, b_s.to(b_q.dtype), input_precision=DOT_PRECISION), 1))
    if USE_DGD:
        b_w = tl.load(pseudo + o_tv, mask=m_v[None, :], other=0.0)
        b_dow = tl.dot(b_do, tl.trans(b_w), input_precision=DOT_PRECISION)
        tl.store(d_dgd_write + o_part * 3 * BT * BT + o_mat, -b_qk * b_dow)
        b_dqk -= b_dow * tl.load(dgd_write + o_gate * BT + o_mat)
    b_dqk = tl.where(m_causal, b_dqk, 0.0)
    tl.store(dqk + o_part * BT * BT + o_mat, b_dqk)
    b_dq += tl.dot(b_dqk, b_k.to(tl.float32), input_precision=DOT_PRECISION)
    tl.store(dq + (i_v * (NC * BT) + o_tok[:, None]) * H * K + i_h * K + o_k[None, :], b_dq, mask=m_k[None, :])


@triton.jit(do_not_specialize=["NC"])
def linear_memory_bwd_kernel_dk(
    q, k, decay, carry, write, dgd_write, mom_write_last, last_rows, h, s, res, pseudo, dh, ds, dres,
    dqk, dk, d_decay, d_carry, d_write, d_dgd_write, d_mom,
    NC,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_MOMENTUM: tl.constexpr, USE_DGD: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """The writes' side, partial over value tile i_v: dK (but its DGD right-hand-side terms, see
    `linear_memory_bwd_kernel_dk_dgd`) and the gradients of the last-row gates (slot 2; G[last],
    E[last] as the first row of slot 2, β[last], f[last] as its first entry), of N[last] and m[last]
    (d_mom [NV, H, NC, 2, BT])."""
    i_v, i_c, i_h = tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2)
    o_t = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_tok = i_c * BT + o_t
    o_tk = (o_tok[:, None] * H + i_h) * K + o_k[None, :]
    o_tv = (o_tok[:, None] * H + i_h) * V + o_v[None, :]
    o_chunk = i_h * NC + i_c
    o_hc = (o_chunk * K + o_k[:, None]) * V + o_v[None, :]
    o_gate = o_chunk * (BT + 1)
    o_part = i_v * H * NC + o_chunk
    o_mat = o_t[:, None] * BT + o_t[None, :]
    o_dvec = o_part * 3 * BT
    o_dmat = o_part * 3 * BT * BT
    i_last = tl.load(last_rows + i_c)
    b_last_slot = tl.where(o_t == 0, 1.0, 0.0)

    b_q = tl.load(q + o_tk, mask=m_k[None, :], other=0.0)
    b_k = tl.load(k + o_tk, mask=m_k[None, :], other=0.0)
    b_x = tl.load(h + o_hc, mask=m_kv, other=0.0)
    b_dx = tl.load(dh + o_hc, mask=m_kv, other=0.0)
    b_r = tl.load(res + o_tv, mask=m_v[None, :], other=0.0)
    b_dr = tl.load(dres + o_tv, mask=m_v[None, :], other=0.0)
    b_kdx = tl.dot(b_k, b_dx.to(b_k.dtype), input_precision=DOT_PRECISION)
    b_dk = tl.dot(tl.trans(tl.load(dqk + o_part * BT * BT + o_mat)), b_q.to(tl.float32), input_precision=DOT_PRECISION)
    b_dk += tl.dot(b_dr, tl.trans(b_x), input_precision=DOT_PRECISION)       # R = K M^c − V
    b_upd = tl.load(write + (o_gate + i_last) * BT + o_t)[:, None] * b_r      # rows whose Kᵀ(·) enters M[last]
    tl.store(d_decay + o_dvec + 2 * BT + o_t, b_last_slot * tl.sum(tl.sum(b_dx * b_x, 1), 0))
    tl.store(d_write + o_dmat + 2 * BT * BT + o_t, -tl.sum(b_kdx * b_r, 1))
    if USE_MOMENTUM:
        b_s = tl.load(s + o_hc, mask=m_kv, other=0.0)
        b_dsn = tl.load(ds + o_hc, mask=m_kv, other=0.0)
        b_kds = tl.dot(b_k, b_dsn.to(b_k.dtype), input_precision=DOT_PRECISION)
        b_n_last = tl.load(mom_write_last + o_chunk * BT + o_t)
        b_dk -= tl.dot((b_n_last[:, None] * b_r).to(b_k.dtype), tl.trans(b_dsn.to(b_k.dtype)),
                       input_precision=DOT_PRECISION)
        tl.store(d_carry + o_dvec + 2 * BT + o_t, b_last_slot * tl.sum(tl.sum(b_dx * b_s, 1), 0))
        tl.store(d_mom + o_part * 2 * BT + o_t, -tl.sum(b_kds * b_r, 1))     # N[last, :]
        tl.store(d_mom + o_part * 2 * BT + BT + o_t, b_last_slot * tl.sum(tl.sum(b_dsn * b_s, 1), 0))  # m[last]
    if USE_DGD:
        b_w = tl.load(pseudo + o_tv, mask=m_v[None, :], other=0.0)
        b_upd += tl.load(dgd_write + (o_gate + i_last) * BT + o_t)[:, None] * b_w
        tl.store(d_dgd_write + o_dmat + 2 * BT * BT + o_t, -tl.sum(b_kdx * b_w, 1))
    b_dk -= tl.dot(b_upd.to(b_k.dtype), tl.trans(b_dx.to(b_k.dtype)), input_precision=DOT_PRECISION)
    tl.store(dk + (i_v * (NC * BT) + o_tok[:, None]) * H * K + i_h * K + o_k[None, :], b_dk, mask=m_k[None, :])


@triton.jit(do_not_specialize=["NC"])
def linear_memory_bwd_kernel_dk_dgd(
    k, decay, carry, write, h, s, res, dpseudo, drhs, dk, d_decay, d_carry, d_write, d_dgd_inv,
    NC,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_MOMENTUM: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """The DGD right-hand side P = diag(β) K M^c + diag(f) K S^c − ((K Kᵀ) ⊙ G) R (rows before each
    token), partial over value tile i_v: its part of dK, the gradients of β, f, G on those rows
    (slot 1) and of the DGD inverse, d(I + L)^{-1} = dW Pᵀ."""
    i_v, i_c, i_h = tl.program_id(0), tl.program_id(1).to(tl.int64), tl.program_id(2)
    o_t = tl.arange(0, BT)
    o_k = tl.arange(0, BK)
    o_v = i_v * BV + tl.arange(0, BV)
    m_k, m_v = o_k < K, o_v < V
    m_kv = m_k[:, None] & m_v[None, :]
    o_tok = i_c * BT + o_t
    o_tv = (o_tok[:, None] * H + i_h) * V + o_v[None, :]
    o_chunk = i_h * NC + i_c
    o_hc = (o_chunk * K + o_k[:, None]) * V + o_v[None, :]
    o_gate = o_chunk * (BT + 1)
    o_part = i_v * H * NC + o_chunk
    o_mat = o_t[:, None] * BT + o_t[None, :]

    b_k = tl.load(k + (o_tok[:, None] * H + i_h) * K + o_k[None, :], mask=m_k[None, :], other=0.0)
    b_x = tl.load(h + o_hc, mask=m_kv, other=0.0)
    b_r = tl.load(res + o_tv, mask=m_v[None, :], other=0.0)
    b_dp = tl.load(drhs + o_tv, mask=m_v[None, :], other=0.0)
    b_kx = tl.dot(b_k, b_x.to(b_k.dtype), input_precision=DOT_PRECISION)
    b_decay = tl.load(decay + o_gate + o_t)
    b_kk = tl.dot(b_k, tl.trans(b_k), input_precision=DOT_PRECISION)
    b_write = tl.load(write + o_gate * BT + o_mat)
    b_p = b_decay[:, None] * b_kx - tl.dot(b_kk * b_write, b_r, input_precision=DOT_PRECISION)
    b_dk = b_decay[:, None] * tl.dot(b_dp, tl.trans(b_x), input_precision=DOT_PRECISION)
    tl.store(d_decay + o_part * 3 * BT + BT + o_t, tl.sum(b_dp * b_kx, 1))
    if USE_MOMENTUM:
        b_s = tl.load(s + o_hc, mask=m_kv, other=0.0)
        b_ks = tl.dot(b_k, b_s.to(b_k.dtype), input_precision=DOT_PRECISION)
        b_carry = tl.load(carry + o_gate + o_t)
        b_p += b_carry[:, None] * b_ks
        b_dk += b_carry[:, None] * tl.dot(b_dp, tl.trans(b_s), input_precision=DOT_PRECISION)
        tl.store(d_carry + o_part * 3 * BT + BT + o_t, tl.sum(b_dp * b_ks, 1))
    b_dpr = tl.dot(b_dp, tl.trans(b_r), input_precision=DOT_PRECISION)
    tl.store(d_write + o_part * 3 * BT * BT + BT * BT + o_mat, -b_kk * b_dpr)
    b_dkk = -b_dpr * b_write
    b_dk += tl.dot(b_dkk + tl.trans(b_dkk), b_k.to(tl.float32), input_precision=DOT_PRECISION)
    b_dw = tl.load(dpseudo + o_tv, mask=m_v[None, :], other=0.0)
    tl.store(d_dgd_inv + o_part * BT * BT + o_mat, tl.dot(b_dw, tl.trans(b_p), input_precision=DOT_PRECISION))
    tl.store(dk + (i_v * (NC * BT) + o_tok[:, None]) * H * K + i_h * K + o_k[None, :], b_dk, mask=m_k[None, :])


def linear_memory_bwd(q, k, do, dht, dst, gates, dgd_inv, chunk_offsets, last_rows, fwd, *, scale, dgd):
    """Launch both backward kernels. `fwd` = (h, s, R, W) from `linear_memory_fwd` (stored or
    recomputed). Returns dq, dk, dv (fp32, flat layout), the gradients of `gates` (same order and
    shapes), of `dgd_inv`, and dh0, ds0."""
    import torch

    from ..utils.launch import launch
    from .configs import launch_config

    decay, carry, write, dgd_write, mom_decay_last, mom_write_last = gates
    h, s, res, pseudo = fwd
    Tp, H, K = k.shape
    V = do.shape[-1]
    BT = write.shape[-1]
    NC = Tp // BT
    N = chunk_offsets.numel() - 1
    use_momentum = carry is not None
    precision = "ieee" if k.dtype == torch.float32 else "tf32"
    f32 = dict(dtype=torch.float32, device=k.device)
    dh, dres = torch.empty(H, NC, K, V, **f32), torch.empty(Tp, H, V, **f32)
    ds = torch.empty(H, NC, K, V, **f32) if use_momentum else None
    dpseudo = torch.empty(Tp, H, V, **f32) if dgd else None
    drhs = torch.empty(Tp, H, V, **f32) if dgd else None
    dh0 = torch.empty(N, H, K, V, **f32)
    ds0 = torch.empty(N, H, K, V, **f32) if use_momentum else None
    common = dict(NC=NC, H=H, K=K, V=V, BT=BT, USE_MOMENTUM=use_momentum, USE_DGD=dgd, DOT_PRECISION=precision)
    cfg = launch_config("bwd_dh", K, V, BT)
    launch(
        linear_memory_bwd_kernel_dh, (triton.cdiv(V, cfg.BV), N * H), k.device,
        q=q, k=k, do=do, decay=decay, carry=carry, write=write, dgd_write=dgd_write, mom_decay_last=mom_decay_last,
        mom_write_last=mom_write_last, last_rows=last_rows, dgd_inv=dgd_inv, chunk_offsets=chunk_offsets,
        dht=dht, dst=dst, dh=dh, ds=ds, dres=dres, dpseudo=dpseudo, drhs=drhs, dh0=dh0, ds0=ds0, scale=scale,
        USE_FINAL_STATE_GRADIENT=dht is not None, **common, **cfg._asdict(),
    )
    cfg_dq, cfg_dk = launch_config("bwd_dq", K, V, BT), launch_config("bwd_dk", K, V, BT)
    assert cfg_dq.BV == cfg_dk.BV, "dK reads the dQ kernel's per-tile dQ̃: one value tiling for both"
    NV = triton.cdiv(V, cfg_dq.BV)
    partial = lambda *shape: torch.zeros(NV, H, NC, *shape, **f32)            # slots a kernel may leave unwritten
    dq, dk = torch.empty(NV, Tp, H, K, **f32), torch.empty(NV, Tp, H, K, **f32)
    dqk = torch.empty(NV, H, NC, BT, BT, **f32)
    d_decay, d_write = partial(3, BT), partial(3, BT, BT)
    d_carry = partial(3, BT) if use_momentum else None
    d_mom = partial(2, BT) if use_momentum else None
    d_dgd_write = partial(3, BT, BT)
    d_dgd_inv = None
    launch(
        linear_memory_bwd_kernel_dq, (NV, NC, H), k.device,
        q=q, k=k, do=do, decay=decay, carry=carry, write=write, dgd_write=dgd_write, h=h, s=s, res=res,
        pseudo=pseudo, dq=dq, dqk=dqk, d_decay=d_decay, d_carry=d_carry, d_write=d_write, d_dgd_write=d_dgd_write,
        scale=scale, **common, **cfg_dq._asdict(),
    )
    launch(
        linear_memory_bwd_kernel_dk, (NV, NC, H), k.device,
        q=q, k=k, decay=decay, carry=carry, write=write, dgd_write=dgd_write, mom_write_last=mom_write_last,
        last_rows=last_rows, h=h, s=s, res=res, pseudo=pseudo, dh=dh, ds=ds, dres=dres,
        dqk=dqk, dk=dk, d_decay=d_decay, d_carry=d_carry, d_write=d_write, d_dgd_write=d_dgd_write, d_mom=d_mom,
        **common, **cfg_dk._asdict(),
    )
    dk = dk.sum(0)
    if dgd:
        cfg = launch_config("bwd_dk_dgd", K, V, BT)
        dk_dgd = torch.empty(triton.cdiv(V, cfg.BV), Tp, H, K, **f32)
        d_dgd_inv = torch.empty(triton.cdiv(V, cfg.BV), H, NC, BT, BT, **f32)
        d_rhs_gates = [torch.zeros(triton.cdiv(V, cfg.BV), H, NC, *shape, **f32) for shape in ((3, BT), (3, BT), (3, BT, BT))]
        launch(
            linear_memory_bwd_kernel_dk_dgd, (triton.cdiv(V, cfg.BV), NC, H), k.device,
            k=k, decay=decay, carry=carry, write=write, h=h, s=s, res=res, dpseudo=dpseudo, drhs=drhs, dk=dk_dgd,
            d_decay=d_rhs_gates[0], d_carry=d_rhs_gates[1], d_write=d_rhs_gates[2], d_dgd_inv=d_dgd_inv,
            NC=NC, H=H, K=K, V=V, BT=BT, USE_MOMENTUM=use_momentum, DOT_PRECISION=precision, **cfg._asdict(),
        )
        dk = dk + dk_dgd.sum(0)
        d_decay, d_write = d_decay.sum(0) + d_rhs_gates[0].sum(0), d_write.sum(0) + d_rhs_gates[2].sum(0)
        if use_momentum:
            d_carry = d_carry.sum(0) + d_rhs_gates[1].sum(0)
    else:
        d_decay, d_write = d_decay.sum(0), d_write.sum(0)
        if use_momentum:
            d_carry = d_carry.sum(0)
    rows = last_rows.long()
    chunks = torch.arange(NC, device=k.device)

    def rows_of(split):                                                       # [H, NC, 3, ...] -> [H, NC, BT+1, ...]
        full = split.new_zeros(H, NC, BT + 1, *split.shape[4:])
        full[:, :, 1:] += split[:, :, 0]                                      # after each token
        full[:, :, :BT] += split[:, :, 1]                                     # before each token (DGD)
        full[:, chunks, rows] += split[:, :, 2, 0]                            # at the last real token
        return full

    grads = (
        rows_of(d_decay),
        rows_of(d_carry) if use_momentum else None,
        rows_of(d_write),
        rows_of(d_dgd_write.sum(0)),
        d_mom.sum(0)[:, :, 1, 0] if use_momentum else None,
        d_mom.sum(0)[:, :, 0] if use_momentum else None,
    )
    dv = -dres
    return dq.sum(0), dk, dv, grads, None if d_dgd_inv is None else d_dgd_inv.sum(0), dh0, ds0
