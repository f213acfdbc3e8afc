"""The gate algebra of one chunk (nested_kernels/common/chunk_gates.py, SPEC §2 kernel notes) as
one Triton program per chunk, forward and backward, in place of a dozen PyTorch operations on
`[H, NC, C+1, C]` tensors (and their autograd).

Rows i = 1..C of every output are computed as C×C blocks (row 0 is constant: β = m = 1, the
rest 0). With the column index c standing for token c+1:
    PA[r, c] = Π_{c+2 ≤ s ≤ r+1} α_s = P^α[r+1, c+1]   (cumprod of a masked matrix: exact at α = 0)
    β = cumprod(α),  E = PA ∘ η,  and with momentum PM, m from μ alike,
    f = (PA ∘ m) 1,  G = (PA @ PM) ∘ η,  N = PM ∘ η   (PA @ PM as a row scan, `_decayed_rows`).
Backward, without divisions (exact at α = 0) and without C×C×C products: for a segment product
P = PA(g) of gates g (array index: P[r, c] = Π_{c < i ≤ r} g[i]),
    ∂P[r, c] / ∂g[σ] = P[r, σ] · P[σ − 1, c]   (c < σ ≤ r),
so dg[σ] = Σ_r P[r, σ] (dP Pᵀ)[r, σ − 1], the subdiagonal of Pᵀ (dP Pᵀ); and for the prefix
product b = cumprod(g), dg[σ] += (Π_{i < σ} g[i]) · (Pᵀ db)[σ]. Products with P or Pᵀ are scans
(P[r, c] = g[r] P[r − 1, c] for c < r): P @ X and X @ Pᵀ forward over rows or columns, Pᵀ @ X in
reverse over rows.
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
def _decayed_rows_t(g_next, p):
    """PAᵀ @ p as a reverse scan over rows: row r is p[r] + g[r + 1] · (row r + 1), since
    PA[s, r] = g[r + 1] PA[s, r + 1] for s > r (g_next[r] = g[r + 1]; the last is not used)."""
    _, x = tl.associative_scan((tl.broadcast_to(g_next[:, None], p.shape), p), 0, _linear_step, reverse=True)
    return x


@triton.jit
def _decayed_cols(g, p):
    """p @ PAᵀ as a scan over columns: column c is p[:, c] + g[c] · (column c − 1), since
    PA[c, j] = g[c] PA[c − 1, j] for j < c (g indexed by column)."""
    _, x = tl.associative_scan((tl.broadcast_to(g[None, :], p.shape), p), 1, _linear_step)
    return x


@triton.jit
def _segment_grad(dp, g, g_next, o):
    """dg[σ] of a segment product P = PA(g) (above) with upstream dP, indexed by row σ:
    Σ_r P[r, σ] (dP Pᵀ)[r, σ − 1], the subdiagonal of Pᵀ (dP Pᵀ) (two scans, no division)."""
    rows, cols = o[:, None], o[None, :]
    w = _decayed_cols(g, tl.where(rows >= cols, dp, 0.0))                    # dP Pᵀ
    return tl.sum(tl.where(cols == rows - 1, _decayed_rows_t(g_next, w), 0.0), axis=1)


@triton.jit
def _prefix_grad(p, db, g_prev):
    """dg[σ] of b = cumprod(g), indexed by column σ: (Π_{i < σ} g[i]) · (Pᵀ db)[σ]; g_prev[σ] = g[σ − 1]
    (1 at σ = 0)."""
    return tl.cumprod(g_prev, axis=0) * tl.sum(p * db[:, None], axis=0)


@triton.jit
def chunk_gates_fwd_kernel(lr, ret, mom, decay, carry, write, mom_decay, mom_write, dgd_write,
                           C: tl.constexpr, USE_MOMENTUM: tl.constexpr, USE_DGD_WRITE: tl.constexpr,
                           N_LAST_ROW: tl.constexpr):
    """USE_DGD_WRITE: store E (with momentum it serves DGD alone; without, E = G is the write).
    N_LAST_ROW: store N's last row N[C, :] alone ([n, C])."""
    i_chunk = tl.program_id(0).to(tl.int64)
    o = tl.arange(0, C)
    rows, cols = o[:, None], o[None, :]
    o_vec, o_mat = i_chunk * (C + 1), i_chunk * (C + 1) * C
    o_rows = o_mat + (1 + rows) * C + cols                                    # rows 1..C of [C+1, C]
    eta = tl.load(lr + i_chunk * C + o)
    alpha = tl.load(ret + i_chunk * C + o)
    p_a = _segment_products(alpha, o, 1)                                      # PA
    tl.store(decay + o_vec, 1.0)
    tl.store(decay + o_vec + 1 + o, tl.cumprod(alpha, axis=0))                # β
    if USE_DGD_WRITE:
        tl.store(dgd_write + o_mat + o, tl.zeros([C], dtype=tl.float32))
        tl.store(dgd_write + o_rows, p_a * eta[None, :])                     # E = PA ∘ η
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
        if N_LAST_ROW:                                                        # N[C, :]
            tl.store(mom_write + i_chunk * C + o, tl.sum(tl.where(rows == C - 1, p_m, 0.0), axis=0) * eta)
        else:
            tl.store(mom_write + o_mat + o, tl.zeros([C], dtype=tl.float32))
            tl.store(mom_write + o_rows, p_m * eta[None, :])                  # N


@triton.jit
def chunk_gates_bwd_kernel(lr, ret, mom, d_decay, d_carry, d_write, d_mom_decay, d_mom_write, d_dgd_write,
                           d_lr, d_ret, d_mom, C: tl.constexpr, USE_MOMENTUM: tl.constexpr,
                           USE_DGD_WRITE: tl.constexpr, N_LAST_ROW: tl.constexpr):
    """USE_DGD_WRITE: E's gradient d_dgd_write is given (else zero, and not read). N_LAST_ROW:
    d_mom_write is the gradient of N's last row alone ([n, C])."""
    i_chunk = tl.program_id(0).to(tl.int64)
    o = tl.arange(0, C)
    rows, cols = o[:, None], o[None, :]
    o_vec, o_mat = i_chunk * (C + 1), i_chunk * (C + 1) * C
    o_rows = o_mat + (1 + rows) * C + cols
    o_prev = i_chunk * C + o - 1                                              # g[r − 1] (1 at r = 0)
    o_next = i_chunk * C + o + 1                                              # g[r + 1] (0 at r = C − 1)
    eta = tl.load(lr + i_chunk * C + o)
    alpha = tl.load(ret + i_chunk * C + o)
    alpha_prev = tl.load(ret + o_prev, mask=o >= 1, other=1.0)
    alpha_next = tl.load(ret + o_next, mask=o < C - 1, other=0.0)
    # α first, with PA and dPA the only C×C blocks live; dG ∘ η is read again for μ
    p_a = _segment_products(alpha, o, 1)
    if USE_DGD_WRITE:
        d_e = tl.load(d_dgd_write + o_rows)
        d_eta = tl.sum(d_e * p_a, axis=0)
        d_pa = d_e * eta[None, :]
    else:
        d_eta = tl.zeros([C], dtype=tl.float32)
        d_pa = tl.zeros([C, C], dtype=tl.float32)
    d_ret_prefix = _prefix_grad(p_a, tl.load(d_decay + o_vec + 1 + o), alpha_prev)
    if USE_MOMENTUM:
        mu = tl.load(mom + i_chunk * C + o)
        d_f = tl.load(d_carry + o_vec + 1 + o)
        d_m = tl.load(d_mom_decay + o_vec + 1 + o) + tl.sum(p_a * d_f[:, None], axis=0)
        d_ge = tl.load(d_write + o_rows) * eta[None, :]
        d_pa += d_f[:, None] * tl.cumprod(mu, axis=0)[None, :] + _decayed_cols(mu, d_ge)   # + (dG ∘ η) PMᵀ
    tl.store(d_ret + i_chunk * C + o, _segment_grad(d_pa, alpha, alpha_next, o) + d_ret_prefix)
    if USE_MOMENTUM:
        mu_prev = tl.load(mom + o_prev, mask=o >= 1, other=1.0)
        mu_next = tl.load(mom + o_next, mask=o < C - 1, other=0.0)
        p_m = _segment_products(mu, o, 1)
        d_g = tl.load(d_write + o_rows)
        if N_LAST_ROW:
            d_n = tl.where(rows == C - 1, tl.load(d_mom_write + i_chunk * C + o)[None, :], 0.0)
        else:
            d_n = tl.load(d_mom_write + o_rows)
        d_eta += tl.sum(d_g * _decayed_rows(alpha, p_m) + d_n * p_m, axis=0)  # G = (PA @ PM) ∘ η, N = PM ∘ η
        d_mom_prefix = _prefix_grad(p_m, d_m, mu_prev)
        d_pm = d_n * eta[None, :] + _decayed_rows_t(alpha_next, d_g * eta[None, :])   # dN ∘ η + PAᵀ (dG ∘ η)
        tl.store(d_mom + i_chunk * C + o, _segment_grad(d_pm, mu, mu_next, o) + d_mom_prefix)
    tl.store(d_lr + i_chunk * C + o, d_eta)


CHUNK_SIZES = (16, 32, 64)      # forward and backward


def num_warps(part: str, C: int) -> int:
    """Warps per chunk program: the fewest, and at least 4, without register spills on sm_90 and
    sm_80 (`nested-kernels compile-report --kernel chunk_gates`). No C×C×C product is left: the
    fp32 (ieee) products PA @ PM, PAᵀ dG, dG PMᵀ and dP Pᵀ, FMA loops whose broadcast operands
    spilled at C = 64 (on sm_80 even at 16 warps), are scans over rows or columns. At C = 64 the
    forward takes 168 registers at 4 warps; the backward, which finishes α (PA, dPA) before it
    builds PM and reads dG again, 210 at 8 warps (at 4 it spills 20 B)."""
    return {("fwd", 16): 4, ("fwd", 32): 4, ("fwd", 64): 4, ("bwd", 16): 4, ("bwd", 32): 4, ("bwd", 64): 8}[part, C]


def chunk_gates_fwd(lr, retention, momentum, dgd_write: bool = True, mom_write_last_row: bool = False):
    """lr, retention, momentum (or None) `[n, C]` fp32 contiguous, one row per chunk. Returns
    decay, carry, write, mom_decay, mom_write `[n, C+1(, C)]` (carry, write, mom_* None without
    momentum: then write is dgd_write) and dgd_write (None with momentum and not `dgd_write`: E
    then serves DGD alone). With `mom_write_last_row`, mom_write is N's last row alone, `[n, C]`."""
    import torch

    from ..utils.launch import launch

    n, C = lr.shape
    use_momentum = momentum is not None
    use_dgd_write = dgd_write or not use_momentum
    f32 = dict(dtype=torch.float32, device=lr.device)
    vec = lambda: torch.empty(n, C + 1, **f32) if use_momentum else None
    mat = lambda on=use_momentum: torch.empty(n, C + 1, C, **f32) if on else None
    decay, dgd_write = torch.empty(n, C + 1, **f32), mat(use_dgd_write)
    carry, write, mom_decay = vec(), mat(), vec()
    mom_write = torch.empty(n, C, **f32) if use_momentum and mom_write_last_row else mat()
    launch(chunk_gates_fwd_kernel, (n,), lr.device, lr, retention, momentum, decay, carry, write, mom_decay,
           mom_write, dgd_write, C=C, USE_MOMENTUM=use_momentum, USE_DGD_WRITE=use_dgd_write,
           N_LAST_ROW=mom_write_last_row, num_warps=num_warps("fwd", C))
    return decay, carry, write, mom_decay, mom_write, dgd_write


def chunk_gates_bwd(lr, retention, momentum, d_decay, d_carry, d_write, d_mom_decay, d_mom_write, d_dgd_write):
    """Gradients of lr, retention, momentum (None without momentum) from those of the six outputs
    of `chunk_gates_fwd` (fp32 contiguous; zeros where unused, but d_dgd_write may be None: zero,
    not read; d_mom_write `[n, C]`: that of N's last row alone)."""
    import torch

    from ..utils.launch import launch

    n, C = lr.shape
    use_momentum = momentum is not None
    d_lr, d_ret = torch.empty_like(lr), torch.empty_like(retention)
    d_mom = torch.empty_like(momentum) if use_momentum else None
    launch(chunk_gates_bwd_kernel, (n,), lr.device, lr, retention, momentum, d_decay, d_carry, d_write, d_mom_decay,
           d_mom_write, d_dgd_write, d_lr, d_ret, d_mom, C=C, USE_MOMENTUM=use_momentum,
           USE_DGD_WRITE=d_dgd_write is not None, N_LAST_ROW=use_momentum and d_mom_write.dim() == 2,
           num_warps=num_warps("bwd", C))
    return d_lr, d_ret, d_mom
