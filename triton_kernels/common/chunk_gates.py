"""The gate algebra of one chunk (nested_kernels/common/chunk_gates.py, SPEC §2 kernel notes) as
one Triton program per chunk, forward and backward, in place of a dozen PyTorch operations on
`[H, NC, C+1, C]` tensors (and their autograd).

Rows i = 1..C of every output are computed as C×C blocks (row 0 is constant: β = m = 1, the
rest 0). With the column index c standing for token c+1:
    PA[r, c] = Π_{c+2 ≤ s ≤ r+1} α_s = P^α[r+1, c+1]   (cumprod of a masked matrix: exact at α = 0)
    β = cumprod(α),  E = PA ∘ η,  and with momentum PM, m from μ alike,
    f = (PA ∘ m) 1,  G = (PA @ PM) ∘ η,  N = PM ∘ η   (PA @ PM as a row scan, `_decayed_rows`).
Backward, without divisions (exact at α = 0): for a segment product P of gates g,
    ∂P[r, c] / ∂g_{σ+1} = P[r, σ] · Q[σ, c],   Q[σ, c] = Π_{c+2 ≤ s ≤ σ} g_s (c < σ),
so dg_{σ+1} = Σ_c (Pᵀ dP)[σ, c] Q[σ, c]; and for the prefix product b = cumprod(g),
    dg_{σ+1} += (Π_{s ≤ σ} g_s) · (Pᵀ db)[σ].
"""
import triton
import triton.language as tl


@triton.jit
def _segment_products(g, o, SHIFT: tl.constexpr):
    """P[r, c] = Π g[r'] over c + SHIFT ≤ r' ≤ r, zero above the diagonal band (g indexed by row)."""
    rows, cols = o[:, None], o[None, :]
    factors = tl.where(rows >= cols + SHIFT, g[:, None], 1.0)
    return tl.where(rows >= cols + SHIFT - 1, tl.cumprod(factors, axis=0), 0.0)


@triton.jit
def _segment_products_t(g, o, SHIFT: tl.constexpr):
    """Pᵀ of `_segment_products` built directly (g indexed by column): no transposed layouts."""
    rows, cols = o[:, None], o[None, :]
    factors = tl.where(cols >= rows + SHIFT, g[None, :], 1.0)
    return tl.where(cols >= rows + SHIFT - 1, tl.cumprod(factors, axis=1), 0.0)


@triton.jit
def _linear_step(a_prev, x_prev, a, x):
    """The recurrence x_r = a_r x_{r−1} + p_r composed over two spans (the combine of `_decayed_rows`)."""
    return a_prev * a, x_prev * a + x


@triton.jit
def _decayed_rows(g, p):
    """PA @ p as a scan over rows: row r is g_{r+1} · (row r − 1) + p[r], since PA[r, c] = g_{r+1} PA[r − 1, c]
    for c < r and PA[r, r] = 1 (g indexed by row). Exact at g = 0 like PA itself; no fp32 FMA product,
    whose broadcast operands spilled on sm_80 at C = 64."""
    _, x = tl.associative_scan((tl.broadcast_to(g[:, None], p.shape), p), 0, _linear_step)
    return x


@triton.jit
def _segment_grad(p, dp, g_prev, o):
    """dg_{σ+1} of a segment product P (above) with upstream dP; g_prev[r] = g_r (1 at r = 0):
    Σ_r P[r, σ] (dP Qᵀ)[r, σ]."""
    rows, cols = o[:, None], o[None, :]
    z = tl.dot(tl.where(rows >= cols, dp, 0.0), _segment_products_t(g_prev, o, 2), input_precision="ieee")
    return tl.sum(p * z, axis=0)


@triton.jit
def _prefix_grad(p, db, g_prev):
    """dg_{σ+1} of b = cumprod(g): (Π_{s ≤ σ} g_s) · (Pᵀ db)[σ]."""
    return tl.cumprod(g_prev, axis=0) * tl.sum(p * db[:, None], axis=0)


@triton.jit
def chunk_gates_fwd_kernel(lr, ret, mom, decay, carry, write, mom_decay, mom_write, dgd_write,
                           C: tl.constexpr, USE_MOMENTUM: tl.constexpr):
    i_chunk = tl.program_id(0).to(tl.int64)
    o = tl.arange(0, C)
    rows, cols = o[:, None], o[None, :]
    o_vec, o_mat = i_chunk * (C + 1), i_chunk * (C + 1) * C
    o_rows = o_mat + (1 + rows) * C + cols                                    # rows 1..C of [C+1, C]
    eta = tl.load(lr + i_chunk * C + o)
    alpha = tl.load(ret + i_chunk * C + o)
    p_a = _segment_products(alpha, o, 1)                                      # PA
    e = p_a * eta[None, :]                                                    # E = PA ∘ η
    tl.store(decay + o_vec, 1.0)
    tl.store(decay + o_vec + 1 + o, tl.cumprod(alpha, axis=0))                # β
    tl.store(dgd_write + o_mat + o, tl.zeros([C], dtype=tl.float32))
    tl.store(dgd_write + o_rows, e)
    if USE_MOMENTUM:
        mu = tl.load(mom + i_chunk * C + o)
        p_m = _segment_products(mu, o, 1)                                     # PM
        m = tl.cumprod(mu, axis=0)
        tl.store(mom_decay + o_vec, 1.0)
        tl.store(mom_decay + o_vec + 1 + o, m)                                # m
        tl.store(carry + o_vec, 0.0)
        tl.store(carry + o_vec + 1 + o, tl.sum(p_a * m[None, :], axis=1))     # f = (PA ∘ m) 1
        tl.store(write + o_mat + o, tl.zeros([C], dtype=tl.float32))
        tl.store(write + o_rows, _decayed_rows(alpha, p_m) * eta[None, :])   # G = (PA @ PM) ∘ η
        tl.store(mom_write + o_mat + o, tl.zeros([C], dtype=tl.float32))
        tl.store(mom_write + o_rows, p_m * eta[None, :])                      # N


@triton.jit
def chunk_gates_bwd_kernel(lr, ret, mom, d_decay, d_carry, d_write, d_mom_decay, d_mom_write, d_dgd_write,
                           d_lr, d_ret, d_mom, C: tl.constexpr, USE_MOMENTUM: tl.constexpr):
    i_chunk = tl.program_id(0).to(tl.int64)
    o = tl.arange(0, C)
    rows, cols = o[:, None], o[None, :]
    o_vec, o_mat = i_chunk * (C + 1), i_chunk * (C + 1) * C
    o_rows = o_mat + (1 + rows) * C + cols
    o_prev = i_chunk * C + o - 1                                              # g_r for r ≥ 1
    eta = tl.load(lr + i_chunk * C + o)
    alpha = tl.load(ret + i_chunk * C + o)
    alpha_prev = tl.load(ret + o_prev, mask=o >= 1, other=1.0)
    p_a = _segment_products(alpha, o, 1)
    d_e = tl.load(d_dgd_write + o_rows)
    d_eta = tl.sum(d_e * p_a, axis=0)
    d_pa = d_e * eta[None, :]
    if USE_MOMENTUM:                                                          # μ first: fewer live C×C blocks
        mu = tl.load(mom + i_chunk * C + o)
        mu_prev = tl.load(mom + o_prev, mask=o >= 1, other=1.0)
        p_m = _segment_products(mu, o, 1)
        d_f = tl.load(d_carry + o_vec + 1 + o)
        d_g = tl.load(d_write + o_rows)
        d_eta += tl.sum(d_g * tl.dot(p_a, p_m, input_precision="ieee"), axis=0)
        d_ge = d_g * eta[None, :]
        d_n = tl.load(d_mom_write + o_rows)
        d_eta += tl.sum(d_n * p_m, axis=0)
        d_pm = d_n * eta[None, :] + tl.dot(_segment_products_t(alpha, o, 1), d_ge, input_precision="ieee")
        d_m = tl.load(d_mom_decay + o_vec + 1 + o) + tl.sum(p_a * d_f[:, None], axis=0)
        tl.store(d_mom + i_chunk * C + o, _segment_grad(p_m, d_pm, mu_prev, o) + _prefix_grad(p_m, d_m, mu_prev))
        d_pa += d_f[:, None] * tl.cumprod(mu, axis=0)[None, :] + tl.dot(d_ge, _segment_products_t(mu, o, 1), input_precision="ieee")
    d_beta = tl.load(d_decay + o_vec + 1 + o)
    tl.store(d_ret + i_chunk * C + o, _segment_grad(p_a, d_pa, alpha_prev, o) + _prefix_grad(p_a, d_beta, alpha_prev))
    tl.store(d_lr + i_chunk * C + o, d_eta)


FWD_CHUNK_SIZES = (16, 32, 64)
BWD_CHUNK_SIZES = (16, 32)      # 64: the backward's 64×64×64 fp32 products spill (see num_warps)


def num_warps(part: str, C: int) -> int:
    """Warps per chunk program: the fewest without register spills on sm_90 and sm_80
    (`nested-kernels compile-report --kernel chunk_gates`). At C = 64 the forward fits in 4 warps
    (168 registers) now that G is a row scan (`_decayed_rows`; its fp32 product spilled on sm_80
    even at 16 warps), but the backward spills kilobytes even at 16 (its fp32 products are FMA loops whose
    operands are broadcast along the inner dimension; building transposed factors directly
    instead of `tl.trans` took C = 32 from 255 to 175 registers, not C = 64 under 255), so
    64-token chunks take their gradient from the PyTorch gate algebra."""
    return {("fwd", 16): 4, ("fwd", 32): 4, ("fwd", 64): 4, ("bwd", 16): 4, ("bwd", 32): 8}[part, C]


def chunk_gates_fwd(lr, retention, momentum):
    """lr, retention, momentum (or None) `[n, C]` fp32 contiguous, one row per chunk. Returns
    decay, carry, write, mom_decay, mom_write `[n, C+1(, C)]` (carry, write, mom_* None without
    momentum: then write is dgd_write) and dgd_write."""
    import torch

    from ..utils.launch import launch

    n, C = lr.shape
    use_momentum = momentum is not None
    f32 = dict(dtype=torch.float32, device=lr.device)
    vec = lambda: torch.empty(n, C + 1, **f32) if use_momentum else None
    mat = lambda: torch.empty(n, C + 1, C, **f32) if use_momentum else None
    decay, dgd_write = torch.empty(n, C + 1, **f32), torch.empty(n, C + 1, C, **f32)
    carry, write, mom_decay, mom_write = vec(), mat(), vec(), mat()
    launch(chunk_gates_fwd_kernel, (n,), lr.device, lr, retention, momentum, decay, carry, write, mom_decay,
           mom_write, dgd_write, C=C, USE_MOMENTUM=use_momentum, num_warps=num_warps("fwd", C))
    return decay, carry, write, mom_decay, mom_write, dgd_write


def chunk_gates_bwd(lr, retention, momentum, d_decay, d_carry, d_write, d_mom_decay, d_mom_write, d_dgd_write):
    """Gradients of lr, retention, momentum (None without momentum) from those of the six outputs
    of `chunk_gates_fwd` (all given, zeros where unused; fp32 contiguous)."""
    import torch

    from ..utils.launch import launch

    n, C = lr.shape
    use_momentum = momentum is not None
    d_lr, d_ret = torch.empty_like(lr), torch.empty_like(retention)
    d_mom = torch.empty_like(momentum) if use_momentum else None
    launch(chunk_gates_bwd_kernel, (n,), lr.device, lr, retention, momentum, d_decay, d_carry, d_write, d_mom_decay,
           d_mom_write, d_dgd_write, d_lr, d_ret, d_mom, C=C, USE_MOMENTUM=use_momentum, num_warps=num_warps("bwd", C))
    return d_lr, d_ret, d_mom
