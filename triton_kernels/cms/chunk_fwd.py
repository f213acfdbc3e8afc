"""Forward kernels of `cms_level` (SPEC §4), one launch each per chunk of `period` tokens.

Per chunk c with rows X (C×D) and the weights W^c frozen (see README.md here):
    Z = X W1^c                                     cms_fwd_kernel_z   [rows, Dh tiles]
    Y = X + φ(Z) W2^c,  E = grad_y or Y − target   cms_fwd_kernel_y   [rows, D tiles]
    P = ((lr ⊙ E) W2^cᵀ) ⊙ φ'(Z)                   cms_fwd_kernel_p   [rows, Dh tiles]
    W1^{c+1} = α W1^c − Xᵀ P
    W2^{c+1} = α W2^c − φ(Z)ᵀ (lr ⊙ E)            cms_fwd_kernel_w   [D tiles × Dh tiles]
Rows index [B, T, ·] tensors (r0 = the chunk's first token, n_rows its length); weights are
read through a batch stride (0 for shared `[D, Dh]` weights). All products accumulate in fp32.
"""
import triton
import triton.language as tl

from ..common.activations import phi, phi_grad
from ..common.tiles import load_tile
from ..utils.host_math import cdiv


@triton.jit(do_not_specialize=["r0", "n_rows"])
def cms_fwd_kernel_z(
    x, w1, z, r0, n_rows, T, D, DH, stride_w,
    BT: tl.constexpr, BD: tl.constexpr, BH: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Z = X W1^c, one [BT, BH] tile, summed over D in tiles of BD."""
    i_h, i_t, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_t = i_t * BT + tl.arange(0, BT)
    m_t = o_t < n_rows
    i_row = i_b * T + r0                                # the chunk's first row of [B·T]
    o_h = i_h * BH + tl.arange(0, BH)
    m_h = o_h < DH
    p_w1 = w1 + i_b * stride_w
    b_z = tl.zeros([BT, BH], dtype=tl.float32)
    for i_d in range(0, tl.cdiv(D, BD)):
        o_d = i_d * BD + tl.arange(0, BD)
        m_d = o_d < D
        b_x = load_tile(x + i_row * D, o_t, m_t, o_d, m_d, D)
        b_w1 = load_tile(p_w1, o_d, m_d, o_h, m_h, DH)
        b_z += tl.dot(b_x.to(tl.float32), b_w1, input_precision=DOT_PRECISION)
    tl.store(z + i_row * DH + o_t[:, None] * DH + o_h[None, :], b_z, mask=m_t[:, None] & m_h[None, :])


@triton.jit(do_not_specialize=["r0", "n_rows"])
def cms_fwd_kernel_y(
    x, w2, z, signal, y, e, r0, n_rows, T, D, DH, stride_w,
    BT: tl.constexpr, BD: tl.constexpr, BH: tl.constexpr, USE_GELU: tl.constexpr, IS_GRAD_Y: tl.constexpr,
    STORE_ERROR: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """Y = X + φ(Z) W2^c, summed over Dh in tiles of BH; then E = grad_y or Y − target (fp32 Y)."""
    i_d, i_t, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_t = i_t * BT + tl.arange(0, BT)
    m_t = o_t < n_rows
    i_row = i_b * T + r0                                # the chunk's first row of [B·T]
    o_d = i_d * BD + tl.arange(0, BD)
    m_d = o_d < D
    p_w2 = w2 + i_b * stride_w
    b_acc = tl.zeros([BT, BD], dtype=tl.float32)
    for i_h in range(0, tl.cdiv(DH, BH)):
        o_h = i_h * BH + tl.arange(0, BH)
        m_h = o_h < DH
        b_z = load_tile(z + i_row * DH, o_t, m_t, o_h, m_h, DH)
        b_w2 = load_tile(p_w2, o_h, m_h, o_d, m_d, D)
        b_acc += tl.dot(phi(b_z, USE_GELU), b_w2, input_precision=DOT_PRECISION)
    o_td = o_t[:, None] * D + o_d[None, :]
    m_td = m_t[:, None] & m_d[None, :]
    b_y = load_tile(x + i_row * D, o_t, m_t, o_d, m_d, D).to(tl.float32) + b_acc
    tl.store(y + i_row * D + o_td, b_y.to(y.dtype.element_ty), mask=m_td)
    if STORE_ERROR:
        b_s = load_tile(signal + i_row * D, o_t, m_t, o_d, m_d, D).to(tl.float32)
        if IS_GRAD_Y:
            b_e = b_s
        else:
            b_e = b_y - b_s
        tl.store(e + i_row * D + o_td, b_e, mask=m_td)


@triton.jit(do_not_specialize=["r0", "n_rows"])
def cms_fwd_kernel_p(
    e, lr, w2, z, p, r0, n_rows, T, D, DH, stride_w,
    BT: tl.constexpr, BD: tl.constexpr, BH: tl.constexpr, USE_GELU: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """P = ((lr ⊙ E) W2^cᵀ) ⊙ φ'(Z), summed over D in tiles of BD."""
    i_h, i_t, i_b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    o_t = i_t * BT + tl.arange(0, BT)
    m_t = o_t < n_rows
    i_row = i_b * T + r0                                # the chunk's first row of [B·T]
    o_h = i_h * BH + tl.arange(0, BH)
    m_h = o_h < DH
    p_w2 = w2 + i_b * stride_w
    b_q = tl.zeros([BT, BH], dtype=tl.float32)
    for i_d in range(0, tl.cdiv(D, BD)):
        o_d = i_d * BD + tl.arange(0, BD)
        m_d = o_d < D
        b_e = load_tile(e + i_row * D, o_t, m_t, o_d, m_d, D)
        b_w2 = load_tile(p_w2, o_h, m_h, o_d, m_d, D)
        b_q += tl.dot(b_e, tl.trans(b_w2), input_precision=DOT_PRECISION)
    o_th = o_t[:, None] * DH + o_h[None, :]
    m_th = m_t[:, None] & m_h[None, :]
    b_lr = tl.load(lr + i_row + o_t, mask=m_t, other=0.0)
    b_z = load_tile(z + i_row * DH, o_t, m_t, o_h, m_h, DH)
    tl.store(p + i_row * DH + o_th, b_lr[:, None] * b_q * phi_grad(b_z, USE_GELU), mask=m_th)


@triton.jit(do_not_specialize=["r0", "n_rows"])
def cms_fwd_kernel_w(
    x, z, e, lr, p, w1, w2, retention, w1_out, w2_out, r0, n_rows, T, D, DH, stride_w,
    BT: tl.constexpr, BD: tl.constexpr, BH: tl.constexpr, USE_GELU: tl.constexpr, DOT_PRECISION: tl.constexpr,
):
    """The chunk's step on one (BD × BH) tile of W1 and the (BH × BD) tile of W2 at the same
    place: W1' = α W1 − Xᵀ P and W2' = α W2 − φ(Z)ᵀ (lr ⊙ E), summed over the chunk's rows."""
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
        b_le = load_tile(e + i_row * D, o_t, m_t, o_d, m_d, D) * tl.load(
            lr + i_row + o_t, mask=m_t, other=0.0)[:, None]
        b_a = phi(load_tile(z + i_row * DH, o_t, m_t, o_h, m_h, DH), USE_GELU)
        b_p = load_tile(p + i_row * DH, o_t, m_t, o_h, m_h, DH)
        b_u1 += tl.dot(tl.trans(b_x), b_p, input_precision=DOT_PRECISION)
        b_u2 += tl.dot(tl.trans(b_a), b_le, input_precision=DOT_PRECISION)
    b_alpha = tl.load(retention)
    o_dh = o_d[:, None] * DH + o_h[None, :]
    o_hd = o_h[:, None] * D + o_d[None, :]
    m_dh = m_d[:, None] & m_h[None, :]
    m_hd = m_h[:, None] & m_d[None, :]
    b_w1 = load_tile(w1 + i_b * stride_w, o_d, m_d, o_h, m_h, DH)
    tl.store(w1_out + i_b * D * DH + o_dh, b_alpha * b_w1 - b_u1, mask=m_dh)
    b_w2 = load_tile(w2 + i_b * stride_w, o_h, m_h, o_d, m_d, D)
    tl.store(w2_out + i_b * D * DH + o_hd, b_alpha * b_w2 - b_u2, mask=m_hd)


def _launch_meta(name: str, D: int, DH: int, precision: str) -> dict:
    """The table's tiles, warps and stages for `name` at these widths, as launch keywords."""
    from .configs import launch_config

    cfg = launch_config(name, D, DH, precision)
    return dict(BT=cfg.BT, BD=cfg.BD, BH=cfg.BH, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
                DOT_PRECISION=precision)


def num_states(NC: int, checkpoint_every: int) -> int:
    """How many weights a recording forward keeps: W^{k}, W^{2k}, … below W^NC, then W^NC."""
    return cdiv(NC, checkpoint_every)


def cms_fwd_step(x, z, e, lr, p, w1, w2, retention, w1_out, w2_out, *, r0, n_rows, stride_w, use_gelu):
    """The step of one chunk from its Z and E: P, then W^{c+1} into w1_out, w2_out `[B, ·, ·]`."""
    from ..utils.launch import launch
    from ..utils.operand_precision import dot_precision

    B, T, D = x.shape
    DH = z.shape[-1]
    precision = dot_precision(x.dtype)
    common = dict(r0=r0, n_rows=n_rows, T=T, D=D, DH=DH, stride_w=stride_w, USE_GELU=use_gelu)
    meta = _launch_meta("fwd_p", D, DH, precision)
    launch(cms_fwd_kernel_p, (cdiv(DH, meta["BH"]), cdiv(n_rows, meta["BT"]), B), x.device,
           e=e, lr=lr, w2=w2, z=z, p=p, **common, **meta)
    meta = _launch_meta("fwd_w", D, DH, precision)
    launch(cms_fwd_kernel_w, (cdiv(DH, meta["BH"]), cdiv(D, meta["BD"]), B), x.device,
           x=x, z=z, e=e, lr=lr, p=p, w1=w1, w2=w2, retention=retention, w1_out=w1_out, w2_out=w2_out, **common,
           **meta)


def cms_level_fwd(x, w1, w2, lr, retention, signal, *, period, is_grad_y, use_gelu, store_states,
                  output_final_state, checkpoint_every=1):
    """Launch the forward chunk by chunk. x, signal `[B, T, D]` contiguous (fp32 or 16-bit);
    w1 `[D, Dh]` or `[B, D, Dh]`, w2 `[Dh, D]` or `[B, Dh, D]` fp32 contiguous; lr `[B, T]` fp32;
    retention a 0-d fp32 tensor. Returns y (x's dtype), the kept weights w1s `[S, B, D, Dh]`,
    w2s `[S, B, Dh, D]` (fp32), Z `[B, T, Dh]` and E `[B, T, D]` (fp32).

    With `store_states` (for the backward) the kept weights are W^{k}, W^{2k}, … (k =
    `checkpoint_every`) and last W^NC, S = ceil(NC / k): k = 1 keeps every chunk's; the others
    are recomputed by the backward. Otherwise S = 1 (W^NC) with `output_final_state`, else 0;
    the weights in between live in two buffers used in turn."""
    import torch

    from ..utils.launch import launch
    from ..utils.operand_precision import dot_precision

    B, T, D = x.shape
    DH = w1.shape[-1]
    NC = cdiv(T, period)
    assert NC > 0, "cms_level triton: T must be positive"
    assert checkpoint_every >= 1, checkpoint_every
    precision = dot_precision(x.dtype)
    f32 = dict(dtype=torch.float32, device=x.device)
    y = torch.empty(B, T, D, dtype=x.dtype, device=x.device)
    z = torch.empty(B, T, DH, **f32)
    e = torch.empty(B, T, D, **f32)
    p = torch.empty(B, T, DH, **f32)
    S = num_states(NC, checkpoint_every) if store_states else int(output_final_state)
    w1s, w2s = torch.empty(S, B, D, DH, **f32), torch.empty(S, B, DH, D, **f32)
    n_scratch = min(2, NC - 1 - (NC - 1) // checkpoint_every) if store_states else min(2, NC - 1)
    scratch1, scratch2 = torch.empty(n_scratch, B, D, DH, **f32), torch.empty(n_scratch, B, DH, D, **f32)

    def destination(c):
        """Where W^{c+1} goes, or None when it is not needed."""
        if c == NC - 1:
            return (w1s[S - 1], w2s[S - 1]) if S else None
        if store_states and (c + 1) % checkpoint_every == 0:
            return w1s[(c + 1) // checkpoint_every - 1], w2s[(c + 1) // checkpoint_every - 1]
        return scratch1[c % 2], scratch2[c % 2]

    meta_z, meta_y = _launch_meta("fwd_z", D, DH, precision), _launch_meta("fwd_y", D, DH, precision)
    W1, W2, stride = w1, w2, 0 if w1.dim() == 2 else D * DH
    for c in range(NC):
        r0 = c * period
        n_rows = min(period, T - r0)
        common = dict(r0=r0, n_rows=n_rows, T=T, D=D, DH=DH, stride_w=stride)
        out = destination(c)
        launch(cms_fwd_kernel_z, (cdiv(DH, meta_z["BH"]), cdiv(n_rows, meta_z["BT"]), B), x.device,
               x=x, w1=W1, z=z, **common, **meta_z)
        launch(cms_fwd_kernel_y, (cdiv(D, meta_y["BD"]), cdiv(n_rows, meta_y["BT"]), B), x.device,
               x=x, w2=W2, z=z, signal=signal, y=y, e=e, **common, USE_GELU=use_gelu, IS_GRAD_Y=is_grad_y,
               STORE_ERROR=out is not None or store_states, **meta_y)
        if out is None:
            continue
        cms_fwd_step(x, z, e, lr, p, W1, W2, retention, *out, r0=r0, n_rows=n_rows, stride_w=stride,
                     use_gelu=use_gelu)
        W1, W2, stride = out[0], out[1], D * DH
    return y, w1s, w2s, z, e
