"""Backward kernels of `cms_level` (SPEC §4): the exact gradient of the chunked definition,
the gradient-of-gradient (φ'') terms included, as a reverse recurrence over chunks.

Per chunk c, given G1 = ∂L/∂W1^{c+1}, G2 = ∂L/∂W2^{c+1} and dY (rows of the chunk), with
LE = lr ⊙ E, A = φ(Z), Q = LE W2ᵀ, P = Q ⊙ φ'(Z) (README.md here derives it):
    Q = LE W2ᵀ,  dP = −X G1                                  cms_bwd_kernel_q    [rows, Dh tiles]
    dLE = (dP ⊙ φ'(Z)) W2 − A G2;  dE = lr ⊙ dLE;
    dlr = rowsum(dLE ⊙ E);  dȲ = dY + dE (target) or dY     cms_bwd_kernel_de   [rows, D tiles]
    dZ = (dȲ W2ᵀ − LE G2ᵀ) ⊙ φ'(Z) + dP ⊙ Q ⊙ φ''(Z)         cms_bwd_kernel_dz   [rows, Dh tiles]
    dX = dȲ + dZ W1ᵀ − P G1ᵀ                                 cms_bwd_kernel_dx   [rows, D tiles]
    G1 ← α G1 + Xᵀ dZ,  G2 ← α G2 + (dP ⊙ φ'(Z))ᵀ LE + Aᵀ dȲ,
    dα += ⟨G1, W1^c⟩ + ⟨G2, W2^c⟩                            cms_bwd_kernel_dw   [D tiles × Dh tiles]
The target's gradient is −dE, grad_y's is dE. Z and E come from the forward ([B, T, ·]).
"""
import triton
import triton.language as tl

from ..common.activations import phi, phi_grad, phi_grad2
from ..common.tiles import load_tile
from ..utils.host_math import cdiv


@triton.jit(do_not_specialize=["r0", "n_rows"])
def cms_bwd_kernel_q(
    x, e, lr, w2, g1, q, dp, r0, n_rows, T, D, DH, stride_w,
    BT: tl.constexpr, BD: tl.constexpr, BH: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Q = (lr ⊙ E) W2ᵀ and dP = −X G1, summed over D."""
    i_h, i_t, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_t = i_t * BT + tl.arange(0, BT)
    m_t = o_t < n_rows
    i_row = i_b * T + r0                                # the chunk's first row of [B·T]
    o_h = i_h * BH + tl.arange(0, BH)
    m_h = o_h < DH
    b_q = tl.zeros([BT, BH], dtype=tl.float32)
    b_dp = tl.zeros([BT, BH], dtype=tl.float32)
    for i_d in range(0, tl.cdiv(D, BD)):
        o_d = i_d * BD + tl.arange(0, BD)
        m_d = o_d < D
        b_e = load_tile(e + i_row * D, o_t, m_t, o_d, m_d, D)
        b_x = load_tile(x + i_row * D, o_t, m_t, o_d, m_d, D).to(tl.float32)
        b_w2 = load_tile(w2 + i_b * stride_w, o_h, m_h, o_d, m_d, D)
        b_g1 = load_tile(g1 + i_b * D * DH, o_d, m_d, o_h, m_h, DH)
        b_q += tl.dot(b_e, tl.trans(b_w2), input_precision=DOT_PRECISION)
        b_dp -= tl.dot(b_x, b_g1, input_precision=DOT_PRECISION)
    o_th = o_t[:, None] * DH + o_h[None, :]
    m_th = m_t[:, None] & m_h[None, :]
    b_lr = tl.load(lr + i_row + o_t, mask=m_t, other=0.0)
    tl.store(q + i_row * DH + o_th, b_lr[:, None] * b_q, mask=m_th)
    tl.store(dp + i_row * DH + o_th, b_dp, mask=m_th)


@triton.jit(do_not_specialize=["r0", "n_rows"])
def cms_bwd_kernel_de(
    z, dp, e, lr, dy, w2, g2, dyt, dsignal, dlr_part, r0, n_rows, T, D, DH, stride_w, ND,
    BT: tl.constexpr, BD: tl.constexpr, BH: tl.constexpr, USE_GELU: tl.constexpr, IS_GRAD_Y: tl.constexpr,
    DOT_PRECISION: tl.constexpr,
):
    """dLE = (dP ⊙ φ'(Z)) W2 − φ(Z) G2 summed over Dh; then dE, this D tile's part of dlr, dȲ
    and the signal's gradient."""
    i_d, i_t, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_t = i_t * BT + tl.arange(0, BT)
    m_t = o_t < n_rows
    i_row = i_b * T + r0                                # the chunk's first row of [B·T]
    o_d = i_d * BD + tl.arange(0, BD)
    m_d = o_d < D
    b_dle = tl.zeros([BT, BD], dtype=tl.float32)
    for i_h in range(0, tl.cdiv(DH, BH)):
        o_h = i_h * BH + tl.arange(0, BH)
        m_h = o_h < DH
        b_z = load_tile(z + i_row * DH, o_t, m_t, o_h, m_h, DH)
        b_dp = load_tile(dp + i_row * DH, o_t, m_t, o_h, m_h, DH)
        b_dq = b_dp * phi_grad(b_z, USE_GELU)
        b_w2 = load_tile(w2 + i_b * stride_w, o_h, m_h, o_d, m_d, D)
        b_g2 = load_tile(g2 + i_b * D * DH, o_h, m_h, o_d, m_d, D)
        b_dle += tl.dot(b_dq, b_w2, input_precision=DOT_PRECISION)
        b_dle -= tl.dot(phi(b_z, USE_GELU), b_g2, input_precision=DOT_PRECISION)
    o_td = o_t[:, None] * D + o_d[None, :]
    m_td = m_t[:, None] & m_d[None, :]
    b_e = load_tile(e + i_row * D, o_t, m_t, o_d, m_d, D)
    tl.store(dlr_part + i_row * ND + o_t * ND + i_d, tl.sum(b_dle * b_e, axis=1), mask=m_t)
    b_de = tl.load(lr + i_row + o_t, mask=m_t, other=0.0)[:, None] * b_dle
    b_dy = load_tile(dy + i_row * D, o_t, m_t, o_d, m_d, D).to(tl.float32)
    if IS_GRAD_Y:
        tl.store(dyt + i_row * D + o_td, b_dy, mask=m_td)
        tl.store(dsignal + i_row * D + o_td, b_de.to(dsignal.dtype.element_ty), mask=m_td)
    else:
        tl.store(dyt + i_row * D + o_td, b_dy + b_de, mask=m_td)
        tl.store(dsignal + i_row * D + o_td, (-b_de).to(dsignal.dtype.element_ty), mask=m_td)


@triton.jit(do_not_specialize=["r0", "n_rows"])
def cms_bwd_kernel_dz(
    e, lr, dyt, w2, g2, z, q, dp, dz, r0, n_rows, T, D, DH, stride_w,
    BT: tl.constexpr, BD: tl.constexpr, BH: tl.constexpr, USE_GELU: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """dZ = (dȲ W2ᵀ − (lr ⊙ E) G2ᵀ) ⊙ φ'(Z) + dP ⊙ Q ⊙ φ''(Z), summed over D."""
    i_h, i_t, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_t = i_t * BT + tl.arange(0, BT)
    m_t = o_t < n_rows
    i_row = i_b * T + r0                                # the chunk's first row of [B·T]
    o_h = i_h * BH + tl.arange(0, BH)
    m_h = o_h < DH
    b_lr = tl.load(lr + i_row + o_t, mask=m_t, other=0.0)
    b_da = tl.zeros([BT, BH], dtype=tl.float32)
    for i_d in range(0, tl.cdiv(D, BD)):
        o_d = i_d * BD + tl.arange(0, BD)
        m_d = o_d < D
        b_le = load_tile(e + i_row * D, o_t, m_t, o_d, m_d, D) * b_lr[:, None]
        b_dyt = load_tile(dyt + i_row * D, o_t, m_t, o_d, m_d, D)
        b_w2 = load_tile(w2 + i_b * stride_w, o_h, m_h, o_d, m_d, D)
        b_g2 = load_tile(g2 + i_b * D * DH, o_h, m_h, o_d, m_d, D)
        b_da += tl.dot(b_dyt, tl.trans(b_w2), input_precision=DOT_PRECISION)
        b_da -= tl.dot(b_le, tl.trans(b_g2), input_precision=DOT_PRECISION)
    o_th = o_t[:, None] * DH + o_h[None, :]
    m_th = m_t[:, None] & m_h[None, :]
    b_z = load_tile(z + i_row * DH, o_t, m_t, o_h, m_h, DH)
    b_q = load_tile(q + i_row * DH, o_t, m_t, o_h, m_h, DH)
    b_dp = load_tile(dp + i_row * DH, o_t, m_t, o_h, m_h, DH)
    b_dz = b_da * phi_grad(b_z, USE_GELU) + b_dp * b_q * phi_grad2(b_z, USE_GELU)
    tl.store(dz + i_row * DH + o_th, b_dz, mask=m_th)


@triton.jit(do_not_specialize=["r0", "n_rows"])
def cms_bwd_kernel_dx(
    z, q, dz, dyt, w1, g1, dx, r0, n_rows, T, D, DH, stride_w,
    BT: tl.constexpr, BD: tl.constexpr, BH: tl.constexpr, USE_GELU: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """dX = dȲ + dZ W1ᵀ − (Q ⊙ φ'(Z)) G1ᵀ, summed over Dh."""
    i_d, i_t, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_t = i_t * BT + tl.arange(0, BT)
    m_t = o_t < n_rows
    i_row = i_b * T + r0                                # the chunk's first row of [B·T]
    o_d = i_d * BD + tl.arange(0, BD)
    m_d = o_d < D
    b_dx = tl.zeros([BT, BD], dtype=tl.float32)
    for i_h in range(0, tl.cdiv(DH, BH)):
        o_h = i_h * BH + tl.arange(0, BH)
        m_h = o_h < DH
        b_z = load_tile(z + i_row * DH, o_t, m_t, o_h, m_h, DH)
        b_p = load_tile(q + i_row * DH, o_t, m_t, o_h, m_h, DH) * phi_grad(b_z, USE_GELU)
        b_dz = load_tile(dz + i_row * DH, o_t, m_t, o_h, m_h, DH)
        b_w1 = load_tile(w1 + i_b * stride_w, o_d, m_d, o_h, m_h, DH)
        b_g1 = load_tile(g1 + i_b * D * DH, o_d, m_d, o_h, m_h, DH)
        b_dx += tl.dot(b_dz, tl.trans(b_w1), input_precision=DOT_PRECISION)
        b_dx -= tl.dot(b_p, tl.trans(b_g1), input_precision=DOT_PRECISION)
    o_td = o_t[:, None] * D + o_d[None, :]
    m_td = m_t[:, None] & m_d[None, :]
    b_dx += load_tile(dyt + i_row * D, o_t, m_t, o_d, m_d, D)
    tl.store(dx + i_row * D + o_td, b_dx.to(dx.dtype.element_ty), mask=m_td)


@triton.jit(do_not_specialize=["r0", "n_rows"])
def cms_bwd_kernel_dw(
    x, z, dp, e, lr, dyt, dz, w1, w2, retention, g1, g2, dalpha_part, r0, n_rows, T, D, DH, stride_w,
    BT: tl.constexpr, BD: tl.constexpr, BH: tl.constexpr, USE_GELU: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """The adjoints of W^c on one (BD × BH) tile of W1 and the (BH × BD) tile of W2, in place:
    G1 ← α G1 + Xᵀ dZ, G2 ← α G2 + (dP ⊙ φ'(Z))ᵀ (lr ⊙ E) + φ(Z)ᵀ dȲ; this tile's ⟨G, W^c⟩ is
    added to its entry of dalpha_part [B, Dh tiles, D tiles]."""
    i_h, i_d, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_d = i_d * BD + tl.arange(0, BD)
    m_d = o_d < D
    o_h = i_h * BH + tl.arange(0, BH)
    m_h = o_h < DH
    b_u1 = tl.zeros([BD, BH], dtype=tl.float32)
    b_u2 = tl.zeros([BH, BD], dtype=tl.float32)
    for i_t in range(0, tl.cdiv(n_rows, BT)):
        o_t = i_t * BT + tl.arange(0, BT)
        m_t = o_t < n_rows
        i_row = i_b * T + r0                                # the chunk's first row of [B·T]
        b_x = load_tile(x + i_row * D, o_t, m_t, o_d, m_d, D).to(tl.float32)
        b_dz = load_tile(dz + i_row * DH, o_t, m_t, o_h, m_h, DH)
        b_u1 += tl.dot(tl.trans(b_x), b_dz, input_precision=DOT_PRECISION)
        b_z = load_tile(z + i_row * DH, o_t, m_t, o_h, m_h, DH)
        b_dq = load_tile(dp + i_row * DH, o_t, m_t, o_h, m_h, DH) * phi_grad(b_z, USE_GELU)
        b_lr = tl.load(lr + i_row + o_t, mask=m_t, other=0.0)
        b_le = load_tile(e + i_row * D, o_t, m_t, o_d, m_d, D) * b_lr[:, None]
        b_u2 += tl.dot(tl.trans(b_dq), b_le, input_precision=DOT_PRECISION)
        b_dyt = load_tile(dyt + i_row * D, o_t, m_t, o_d, m_d, D)
        b_u2 += tl.dot(tl.trans(phi(b_z, USE_GELU)), b_dyt, input_precision=DOT_PRECISION)
    b_alpha = tl.load(retention)
    o_dh = o_d[:, None] * DH + o_h[None, :]
    o_hd = o_h[:, None] * D + o_d[None, :]
    m_dh = m_d[:, None] & m_h[None, :]
    m_hd = m_h[:, None] & m_d[None, :]
    b_g1 = load_tile(g1 + i_b * D * DH, o_d, m_d, o_h, m_h, DH)
    b_part = tl.sum(tl.sum(b_g1 * load_tile(w1 + i_b * stride_w, o_d, m_d, o_h, m_h, DH), axis=1), axis=0)
    tl.store(g1 + i_b * D * DH + o_dh, b_alpha * b_g1 + b_u1, mask=m_dh)
    b_g2 = load_tile(g2 + i_b * D * DH, o_h, m_h, o_d, m_d, D)
    b_part += tl.sum(tl.sum(b_g2 * load_tile(w2 + i_b * stride_w, o_h, m_h, o_d, m_d, D), axis=1), axis=0)
    tl.store(g2 + i_b * D * DH + o_hd, b_alpha * b_g2 + b_u2, mask=m_hd)
    p_part = dalpha_part + (i_b * tl.num_programs(0) + i_h) * tl.num_programs(1) + i_d
    tl.store(p_part, tl.load(p_part) + b_part)


def cms_level_bwd(x, w1, w2, lr, retention, signal, dy, dw1, dw2, w1s, w2s, z, e, *, period, is_grad_y, use_gelu,
                  checkpoint_every=1):
    """Launch the backward chunk by chunk in reverse. Inputs as `cms_level_fwd` takes them plus
    dy `[B, T, D]`, the final state's gradients dw1 `[B, D, Dh]`, dw2 `[B, Dh, D]` (or None)
    and what the recording forward kept: w1s, w2s (W^{k}, W^{2k}, …, W^NC for k =
    `checkpoint_every`), Z and E. The chunks run in segments of k from the last one; a segment
    first recomputes its chunk-start weights from its first one (one step per chunk from the
    stored Z and E). Returns dx (x's dtype), dw1, dw2 (per sequence, fp32: the caller sums
    shared weights over the batch), dlr `[B, T]`, dretention (0-d) and the signal's gradient
    (signal's dtype)."""
    import torch

    from ..utils.launch import launch
    from ..utils.operand_precision import dot_precision
    from .chunk_fwd import _launch_meta, cms_fwd_step

    B, T, D = x.shape
    DH = w1.shape[-1]
    NC = cdiv(T, period)
    k = checkpoint_every
    stride_w = 0 if w1.dim() == 2 else D * DH
    precision = dot_precision(x.dtype)
    f32 = dict(dtype=torch.float32, device=x.device)
    g1 = torch.zeros(B, D, DH, **f32) if dw1 is None else dw1.to(torch.float32).contiguous().clone()
    g2 = torch.zeros(B, DH, D, **f32) if dw2 is None else dw2.to(torch.float32).contiguous().clone()
    q = torch.empty(B, T, DH, **f32)
    dp = torch.empty(B, T, DH, **f32)
    dz = torch.empty(B, T, DH, **f32)
    dyt = torch.empty(B, T, D, **f32)
    dx = torch.empty(B, T, D, dtype=x.dtype, device=x.device)
    dsignal = torch.empty(B, T, D, dtype=signal.dtype, device=x.device)
    n_seg = min(k, NC) - 1                                   # recomputed weights per segment
    seg1, seg2 = torch.empty(n_seg, B, D, DH, **f32), torch.empty(n_seg, B, DH, D, **f32)
    p = torch.empty(B, T, DH, **f32) if n_seg else None
    meta = {name: _launch_meta(name, D, DH, precision) for name in ("bwd_q", "bwd_de", "bwd_dz", "bwd_dx", "bwd_dw")}
    ND = cdiv(D, meta["bwd_de"]["BD"])
    dlr_part = torch.empty(B, T, ND, **f32)
    dalpha_part = torch.zeros(B, cdiv(DH, meta["bwd_dw"]["BH"]), cdiv(D, meta["bwd_dw"]["BD"]), **f32)
    grid_rows = lambda name, n_rows: (cdiv(DH, meta[name]["BH"]) if name in ("bwd_q", "bwd_dz")
                                      else cdiv(D, meta[name]["BD"]), cdiv(n_rows, meta[name]["BT"]), B)
    for c0 in reversed(range(0, NC, k)):
        c1 = min(c0 + k, NC)
        start = (w1, w2, stride_w) if c0 == 0 else (w1s[c0 // k - 1], w2s[c0 // k - 1], D * DH)
        weights = [start] + [(seg1[j], seg2[j], D * DH) for j in range(c1 - c0 - 1)]     # W^c for c in [c0, c1)
        for c in range(c0, c1 - 1):                          # recompute W^{c0+1} … W^{c1−1}
            r0 = c * period
            W1, W2, stride = weights[c - c0]
            cms_fwd_step(x, z, e, lr, p, W1, W2, retention, seg1[c - c0], seg2[c - c0], r0=r0,
                         n_rows=min(period, T - r0), stride_w=stride, use_gelu=use_gelu)
        for c in reversed(range(c0, c1)):
            r0 = c * period
            n_rows = min(period, T - r0)
            W1, W2, stride = weights[c - c0]
            common = dict(r0=r0, n_rows=n_rows, T=T, D=D, DH=DH, stride_w=stride)
            launch(cms_bwd_kernel_q, grid_rows("bwd_q", n_rows), x.device,
                   x=x, e=e, lr=lr, w2=W2, g1=g1, q=q, dp=dp, **common, **meta["bwd_q"])
            launch(cms_bwd_kernel_de, grid_rows("bwd_de", n_rows), x.device,
                   z=z, dp=dp, e=e, lr=lr, dy=dy, w2=W2, g2=g2, dyt=dyt, dsignal=dsignal, dlr_part=dlr_part, **common,
                   ND=ND, USE_GELU=use_gelu, IS_GRAD_Y=is_grad_y, **meta["bwd_de"])
            launch(cms_bwd_kernel_dz, grid_rows("bwd_dz", n_rows), x.device,
                   e=e, lr=lr, dyt=dyt, w2=W2, g2=g2, z=z, q=q, dp=dp, dz=dz, **common, USE_GELU=use_gelu,
                   **meta["bwd_dz"])
            launch(cms_bwd_kernel_dx, grid_rows("bwd_dx", n_rows), x.device,
                   z=z, q=q, dz=dz, dyt=dyt, w1=W1, g1=g1, dx=dx, **common, USE_GELU=use_gelu, **meta["bwd_dx"])
            launch(cms_bwd_kernel_dw, (cdiv(DH, meta["bwd_dw"]["BH"]), cdiv(D, meta["bwd_dw"]["BD"]), B),
                   x.device, x=x, z=z, dp=dp, e=e, lr=lr, dyt=dyt, dz=dz, w1=W1, w2=W2, retention=retention, g1=g1,
                   g2=g2, dalpha_part=dalpha_part, **common, USE_GELU=use_gelu, **meta["bwd_dw"])
    return dx, g1, g2, dlr_part.sum(-1), dalpha_part.sum(), dsignal
