"""Forward kernels of `linear_memory` (SPEC §2) on chunks laid out flat: [T', H, ·] where every
sequence is padded to whole chunks of BT tokens. Gate matrices come from
`nested_kernels.common.chunk_gates` ([H, NC, BT+1, BT]: β, f, G, E); see README.md here.

`linear_memory_fwd_kernel_h` carries (M, S) through the chunks of one sequence in fp32
registers (one program per sequence × head and value tile) and stores each chunk's start
state, the DGD pseudo-values W and, for the backward, the residuals R = K M^c − V.
`linear_memory_fwd_kernel_o` then reads every chunk in parallel (forming R again itself).
"""
import torch
import triton
import triton.language as tl

from ..common.tiles import load_operand
from ..utils import launch as launcher           # module attributes: tests patch them
from ..utils.host_math import cdiv
from ..utils.operand_precision import dot_precision
from . import configs
from .held_tiles import (
    along_cols, along_rows, held, held_dot, held_trans, initial_state, state_offsets, state_tiles, token_offsets,
)


@triton.jit(do_not_specialize=["NC"])
def linear_memory_fwd_kernel_h(
    k, v, decay, carry, write, dgd_write, mom_decay_last, mom_write_last, last_rows, dgd_inv, kk_write,
    chunk_offsets, h0, s0, h, s, res, pseudo, ht, st,
    NC,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_MOMENTUM: tl.constexpr, USE_DGD: tl.constexpr, USE_INITIAL_STATE: tl.constexpr,
    STORE_FINAL_STATE: tl.constexpr, STORE_RES: tl.constexpr, DOT_PRECISION: tl.constexpr,
    FP32_OPERANDS: tl.constexpr, TRANSPOSED: tl.constexpr,
):
    """The chunk recurrence of one value tile. The states are held as two row tiles of BK rows
    (rows BK..2·BK−1 only when K > BK; K ≤ 2·BK): K M^c and K S^c are summed over the two, and
    each tile is updated with its own rows of Kᵀ, which keeps K = 256 free of spills. With DGD,
    `kk_write` [H, NC, BT, BT] holds (K Kᵀ) ⊙ G (rows 0..BT−1), which does not depend on the
    state: computed before the launch, it leaves the recurrence with fewer live tiles. STORE_RES:
    store R for the backward (the output kernel forms it again from K, M^c and V). TRANSPOSED
    holds the states and every token × value tile transposed (held_tiles.py)."""
    i_nh, i_v = tl.program_id(0), tl.program_id(1)                           # sequence × head on the uncapped axis
    i_n, i_h = i_nh // H, i_nh % H
    c_start = tl.load(chunk_offsets + i_n).to(tl.int64)
    c_end = tl.load(chunk_offsets + i_n + 1).to(tl.int64)
    o_t = tl.arange(0, BT)
    o_k0, o_k1, o_v, m_k0, m_k1, m_v, m_kv0, m_kv1, m_tv, o_state0, o_state1 = state_tiles(
        i_nh, i_v, K, V, BK, BV, TRANSPOSED)

    b_x0, b_s0, b_x1, b_s1 = initial_state(h0, s0, o_state0, o_state1, m_kv0, m_kv1, K, BK, BV,
                                           USE_INITIAL_STATE, USE_MOMENTUM, TRANSPOSED)

    for i_c in range(c_start, c_end):
        o_tok = i_c * BT + o_t                                                # rows of the flat layout
        o_chunk = i_h * NC + i_c                                              # gate matrices [H, NC, ...]
        b_k0 = load_operand(k + (o_tok[:, None] * H + i_h) * K + o_k0[None, :], m_k0[None, :], FP32_OPERANDS)
        o_hc0 = state_offsets(o_chunk, o_k0, o_v, K, V, TRANSPOSED)
        tl.store(h + o_hc0, b_x0, mask=m_kv0)                                 # M^c
        b_kx = held_dot(held(b_k0, TRANSPOSED), b_x0.to(b_k0.dtype), None, TRANSPOSED, DOT_PRECISION)
        if USE_MOMENTUM:
            tl.store(s + o_hc0, b_s0, mask=m_kv0)                             # S^c
        if USE_DGD and USE_MOMENTUM:
            b_ks = held_dot(held(b_k0, TRANSPOSED), b_s0.to(b_k0.dtype), None, TRANSPOSED, DOT_PRECISION)
        if K > BK:
            b_k1 = load_operand(k + (o_tok[:, None] * H + i_h) * K + o_k1[None, :], m_k1[None, :], FP32_OPERANDS)
            o_hc1 = state_offsets(o_chunk, o_k1, o_v, K, V, TRANSPOSED)
            tl.store(h + o_hc1, b_x1, mask=m_kv1)
            b_kx = held_dot(held(b_k1, TRANSPOSED), b_x1.to(b_k1.dtype), b_kx, TRANSPOSED, DOT_PRECISION)
            if USE_MOMENTUM:
                tl.store(s + o_hc1, b_s1, mask=m_kv1)
            if USE_DGD and USE_MOMENTUM:
                b_ks = held_dot(held(b_k1, TRANSPOSED), b_s1.to(b_k1.dtype), b_ks, TRANSPOSED, DOT_PRECISION)
        o_tv = token_offsets(o_tok, i_h, o_v, H, V, TRANSPOSED)
        b_v = tl.load(v + o_tv, mask=m_tv, other=0.0)
        b_r = b_kx - b_v.to(tl.float32)                                       # R = K M^c − V
        if STORE_RES:
            tl.store(res + o_tv, b_r, mask=m_tv)

        i_last = tl.load(last_rows + i_c)
        o_gate = o_chunk * (BT + 1)
        b_upd = along_rows(tl.load(write + (o_gate + i_last) * BT + o_t), TRANSPOSED) * b_r   # G[last, :]
        if USE_DGD:
            # BT × BT blocks, as held (transposed with TRANSPOSED)
            o_mat = (o_chunk * BT + along_rows(o_t, TRANSPOSED)) * BT + along_cols(o_t, TRANSPOSED)
            b_kk_write = tl.load(kk_write + o_mat)                            # (K Kᵀ) ⊙ G
            b_p = along_rows(tl.load(decay + o_gate + o_t), TRANSPOSED) * b_kx
            if USE_MOMENTUM:
                b_p += along_rows(tl.load(carry + o_gate + o_t), TRANSPOSED) * b_ks
            b_p = held_dot(b_kk_write, -b_r, b_p, TRANSPOSED, DOT_PRECISION)
            b_inv = tl.load(dgd_inv + o_mat)
            b_w = held_dot(b_inv, b_p, None, TRANSPOSED, DOT_PRECISION)      # W = (I + L)^{-1} P
            tl.store(pseudo + o_tv, b_w, mask=m_tv)
            b_upd += along_rows(tl.load(dgd_write + (o_gate + i_last) * BT + o_t), TRANSPOSED) * b_w

        # M = β[last] M^c + f[last] S^c − Kᵀ(upd),  S = m S^c − Kᵀ(N ⊙ R), one row tile at a time, each
        # product accumulating into the state it updates (no second state-sized tile live)
        b_neg_upd = (-b_upd).to(b_k0.dtype)
        b_decay_last = tl.load(decay + o_gate + i_last)
        if USE_MOMENTUM:
            b_carry_last = tl.load(carry + o_gate + i_last)
            b_mom_decay = tl.load(mom_decay_last + o_chunk)
            b_neg_mom_upd = (-along_rows(tl.load(mom_write_last + o_chunk * BT + o_t), TRANSPOSED) * b_r).to(b_k0.dtype)
            b_x0 = held_dot(held_trans(b_k0, TRANSPOSED), b_neg_upd, b_decay_last * b_x0 + b_carry_last * b_s0,
                            TRANSPOSED, DOT_PRECISION)
            b_s0 = held_dot(held_trans(b_k0, TRANSPOSED), b_neg_mom_upd, b_mom_decay * b_s0, TRANSPOSED, DOT_PRECISION)
            if K > BK:
                b_x1 = held_dot(held_trans(b_k1, TRANSPOSED), b_neg_upd, b_decay_last * b_x1 + b_carry_last * b_s1,
                                TRANSPOSED, DOT_PRECISION)
                b_s1 = held_dot(held_trans(b_k1, TRANSPOSED), b_neg_mom_upd, b_mom_decay * b_s1, TRANSPOSED,
                                DOT_PRECISION)
        else:
            b_x0 = held_dot(held_trans(b_k0, TRANSPOSED), b_neg_upd, b_decay_last * b_x0, TRANSPOSED, DOT_PRECISION)
            if K > BK:
                b_x1 = held_dot(held_trans(b_k1, TRANSPOSED), b_neg_upd, b_decay_last * b_x1, TRANSPOSED,
                                DOT_PRECISION)

    if STORE_FINAL_STATE:
        tl.store(ht + o_state0, b_x0, mask=m_kv0)
        if USE_MOMENTUM:
            tl.store(st + o_state0, b_s0, mask=m_kv0)
        if K > BK:
            tl.store(ht + o_state1, b_x1, mask=m_kv1)
            if USE_MOMENTUM:
                tl.store(st + o_state1, b_s1, mask=m_kv1)


@triton.jit(do_not_specialize=["NC"])
def linear_memory_fwd_kernel_o(
    q, k, v, decay, carry, write, dgd_write, h, s, pseudo, o, scale,
    NC,
    H: tl.constexpr, K: tl.constexpr, V: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr, BV: tl.constexpr,
    USE_MOMENTUM: tl.constexpr, USE_DGD: tl.constexpr, DOT_PRECISION: tl.constexpr, FP32_OPERANDS: tl.constexpr,
):
    """O = scale · (diag(β) Q M^c + diag(f) Q S^c − ((Q Kᵀ) ⊙ G) R − [dgd] ((Q Kᵀ) ⊙ E) W), rows 1..BT.
    K is read in tiles of BK rows (BK < K keeps the live set small for K = 256). R = K M^c − V is
    formed here from the tiles of K and M^c the reads load anyway, rather than read back from the
    recurrence (whose fp32 R was one [T, H, V] tensor written and read per forward)."""
    i_c, i_v, i_h = tl.program_id(0).to(tl.int64), tl.program_id(1), tl.program_id(2)
    o_t = tl.arange(0, BT)
    o_v = i_v * BV + tl.arange(0, BV)
    m_v = o_v < V
    o_tok = i_c * BT + o_t
    o_chunk = i_h * NC + i_c
    o_tv = (o_tok[:, None] * H + i_h) * V + o_v[None, :]
    o_gate = o_chunk * (BT + 1) + 1                                           # rows 1..BT: after each token

    b_qk = tl.zeros([BT, BT], dtype=tl.float32)
    b_qx = tl.zeros([BT, BV], dtype=tl.float32)
    b_qs = tl.zeros([BT, BV], dtype=tl.float32)
    b_kx = tl.zeros([BT, BV], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):                                      # Q Kᵀ, Q M^c, Q S^c, K M^c over K tiles
        o_k = i_k * BK + tl.arange(0, BK)
        m_k = o_k < K
        o_tk = (o_tok[:, None] * H + i_h) * K + o_k[None, :]
        b_q = load_operand(q + o_tk, m_k[None, :], FP32_OPERANDS)
        b_k = load_operand(k + o_tk, m_k[None, :], FP32_OPERANDS)
        o_hc = (o_chunk * K + o_k[:, None]) * V + o_v[None, :]
        m_kv = m_k[:, None] & m_v[None, :]
        b_qk += tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PRECISION)
        b_x = tl.load(h + o_hc, mask=m_kv, other=0.0)
        b_qx += tl.dot(b_q, b_x.to(b_q.dtype), input_precision=DOT_PRECISION)
        b_kx += tl.dot(b_k, b_x.to(b_k.dtype), input_precision=DOT_PRECISION)
        if USE_MOMENTUM:
            b_s = tl.load(s + o_hc, mask=m_kv, other=0.0)
            b_qs += tl.dot(b_q, b_s.to(b_q.dtype), input_precision=DOT_PRECISION)
    b_qk = tl.where(o_t[:, None] >= o_t[None, :], b_qk, 0.0)
    b_o = tl.load(decay + o_gate + o_t)[:, None] * b_qx
    if USE_MOMENTUM:
        b_o += tl.load(carry + o_gate + o_t)[:, None] * b_qs
    b_r = b_kx - tl.load(v + o_tv, mask=m_v[None, :], other=0.0).to(tl.float32)   # R = K M^c − V
    b_write = tl.load(write + (o_gate + o_t[:, None]) * BT + o_t[None, :])
    b_o -= tl.dot(b_qk * b_write, b_r, input_precision=DOT_PRECISION)
    if USE_DGD:
        b_w = tl.load(pseudo + o_tv, mask=m_v[None, :], other=0.0)
        b_dgd_write = tl.load(dgd_write + (o_gate + o_t[:, None]) * BT + o_t[None, :])
        b_o -= tl.dot(b_qk * b_dgd_write, b_w, input_precision=DOT_PRECISION)
    tl.store(o + o_tv, (scale * b_o).to(o.dtype.element_ty), mask=m_v[None, :])


def linear_memory_fwd(q, k, v, gates, dgd_inv, chunk_offsets, last_rows, h0, s0, *, scale, dgd, output_final_state,
                      out_dtype, output=True, kk_write=None, state_dtype=None, residuals=True):
    """Launch both forward kernels (the output's only with `output`: the backward's recomputation
    needs the states alone). With DGD, `kk_write` is the product K Kᵀ ⊙ G_{0..C−1} `[H, NC, BT, BT]`
    the caller has (the forward op's from the DGD inverse, the backward's from its chunk products).
    q, k `[T', H, K]`, v `[T', H, V]` in the flat chunk layout; `gates` = (decay, carry, write,
    dgd_write, mom_decay_last, mom_write_last) over `[H, NC, ...]`; h0, s0 `[N, H, K, V]` or None.
    `out_dtype` is the op's input dtype (q, k, v are in it, or, in the backward's recomputation, fp32
    copies of it where `configs.converts_loads` is False for the backward: K = 256 with 64-token
    chunks): it sets the products' precision. `state_dtype` (default fp32) is that of the stored
    chunk-start states h, s: the output kernel reads them only as operands of products with Q, in
    the operand dtype (`operand_dtype`: q's, or fp32 where its loads are converted), so states
    stored in it give the same output with half the bytes for 16-bit operands; the backward reads
    them in fp32. `residuals`: store R = K M^c − V for the caller (the
    backward; the output kernel forms its own), always without `output`. Returns o (in `out_dtype`;
    None without `output`), the chunk-start states h, s, R (None when not stored), W and ht, st."""
    decay, carry, write, dgd_write, mom_decay_last, mom_write_last = gates
    Tp, H, K = k.shape
    V = v.shape[-1]
    BT = write.shape[-1]
    NC = Tp // BT
    N = chunk_offsets.numel() - 1
    assert K <= 256 and V <= 256, f"linear_memory triton: K and V up to 256, got K={K}, V={V}"
    assert BT in (16, 32, 64), f"linear_memory triton: chunk_size in (16, 32, 64), got {BT}"
    assert (kk_write is not None) == dgd, "linear_memory_fwd: kk_write (K Kᵀ ⊙ G) with DGD, and only with it"
    use_momentum = carry is not None
    precision = dot_precision(out_dtype)
    fp32_operands = configs.operands_in_fp32(k, BT, backward=False)
    arch = launcher.device_arch(k.device)
    f32 = dict(dtype=torch.float32, device=k.device)
    states = dict(dtype=state_dtype or torch.float32, device=k.device)
    h = torch.empty(H, NC, K, V, **states)
    s = torch.empty(H, NC, K, V, **states) if use_momentum else None
    res = torch.empty(Tp, H, V, **f32) if residuals or not output else None
    pseudo = torch.empty(Tp, H, V, **f32) if dgd else None
    ht = torch.empty(N, H, K, V, **f32) if output_final_state else None
    st = torch.empty(N, H, K, V, **f32) if output_final_state and use_momentum else None
    common = dict(NC=NC, H=H, K=K, V=V, BT=BT, USE_MOMENTUM=use_momentum, USE_DGD=dgd, DOT_PRECISION=precision,
                  FP32_OPERANDS=fp32_operands)
    cfg = configs.launch_config("fwd_h", K, V, BT, fp32_operands, arch)
    assert K <= 2 * cfg.BK, "linear_memory_fwd_kernel_h holds the state as at most two row tiles of BK"
    launcher.launch(
        linear_memory_fwd_kernel_h, (N * H, cdiv(V, cfg.BV)), k.device,
        k=k, v=v, decay=decay, carry=carry, write=write, dgd_write=dgd_write, mom_decay_last=mom_decay_last,
        mom_write_last=mom_write_last, last_rows=last_rows, dgd_inv=dgd_inv,
        kk_write=kk_write,
        chunk_offsets=chunk_offsets,
        h0=h0, s0=s0, h=h, s=s, res=res, pseudo=pseudo, ht=ht, st=st,
        USE_INITIAL_STATE=h0 is not None, STORE_FINAL_STATE=output_final_state, STORE_RES=res is not None,
        TRANSPOSED=configs.transposed_states("fwd_h", K, BT, fp32_operands, arch), **common, **cfg._asdict(),
    )
    if not output:
        return None, h, s, res, pseudo, ht, st
    o = torch.empty(v.shape, dtype=out_dtype, device=v.device)
    cfg = configs.launch_config("fwd_o", K, V, BT, fp32_operands, arch)
    launcher.launch(
        linear_memory_fwd_kernel_o, (NC, cdiv(V, cfg.BV), H), k.device,            # NC: the uncapped axis
        q=q, k=k, v=v, decay=decay, carry=carry, write=write, dgd_write=dgd_write, h=h, s=s, pseudo=pseudo,
        o=o, scale=scale, **common, **cfg._asdict(),
    )
    return o, h, s, res, pseudo, ht, st
