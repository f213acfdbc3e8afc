"""The gate algebra of one chunk (nested_kernels/common/chunk_gates.py, SPEC §2 kernel notes) as
one Triton program per chunk, forward and backward, in place of a dozen PyTorch operations on
`[H, NC, C+1, C]` tensors (and their autograd).

Rows i = 1..C of every output are computed a row at a time (row 0 is constant: β = m = 1, the
rest 0), by recurrences over the rows that hold one row of C values, not C × C blocks. With
array index i for token i + 1 and row i + 1 (`PA[i, j] = Π_{j < s ≤ i} α[s]`, zero above the
diagonal; exact at α = 0, no division):
    PA[i, :] = α[i] PA[i − 1, :] + e_i,   PM likewise from μ,   Y[i, :] = α[i] Y[i − 1, :] + PM[i, :]
    β = cumprod(α),  m = cumprod(μ),  f[i] = α[i] f[i − 1] + m[i],
    E = PA ∘ η,  G = Y ∘ η (Y = PA @ PM),  N = PM ∘ η.
The backward is reverse-mode through those recurrences, rows in reverse, with the adjoint rows
    Ȳ[i] = dG[i] ∘ η + α[i + 1] Ȳ[i + 1],   P̄A[i] = dE[i] ∘ η + α[i + 1] P̄A[i + 1],
    P̄M[i] = dN[i] ∘ η + Ȳ[i] + μ[i + 1] P̄M[i + 1]
and the scalar ones f̄, β̄, m̄ (reverse scans over the chunk, m̄ taking f̄):
    dα[i] = ⟨P̄A[i], PA[i − 1]⟩ + ⟨Ȳ[i], Y[i − 1]⟩ + f̄[i] f[i − 1] + β̄[i] β[i − 1],
    dμ[i] = ⟨P̄M[i], PM[i − 1]⟩ + m̄[i] m[i − 1],   dη = Σ_i dE[i] ∘ PA[i] + dG[i] ∘ Y[i] + dN[i] ∘ PM[i].
A reverse pass needs the forward rows of the row before: PA and PM rows are products of the gates
(`_segment_row`, a scan over one row), the rows of Y are kept from a forward pass in a scratch
buffer (`[n, C, C]`: one gate matrix more of traffic). The adjoint rows keep only the entries left
of the diagonal, those the rows they meet can have: cotangents of the constant entries (zeros
above the diagonal, ones on it) add nothing, NaN or not. One warp per chunk: no C × C block, no
shared memory (the C × C form these kernels had until 2026-11-26, cumulative products and scans
of whole blocks, took 168 to 210 registers at 4 to 8 warps).
"""
import torch
import triton
import triton.language as tl

from ..utils import launch as launcher           # module attributes: tests patch them


@triton.jit
def _linear_step(a_prev, x_prev, a, x):
    """The recurrence x_r = a_r x_{r−1} + p_r composed over two spans (an associative scan's combine)."""
    return a_prev * a, x_prev * a + x


@triton.jit
def _row_step(p, g, i, o):
    """Row i of a segment product P = PA(g) from row i − 1: P[i, j] = g[i] P[i − 1, j] for j < i,
    P[i, i] = 1, 0 above the diagonal (g[i] the scalar gate of token i)."""
    return tl.where(o < i, g * p, tl.where(o == i, 1.0, 0.0))


@triton.jit
def _segment_row(g_next, i, o):
    """Row i of P = PA(g) from the gates alone, as the reverse pass needs it:
    P[i, j] = Π_{j < s ≤ i} g[s] for j ≤ i, 0 above (g_next[j] = g[j + 1]; zeros at i = −1)."""
    return tl.where(o <= i, tl.cumprod(tl.where(o < i, g_next, 1.0), axis=0, reverse=True), 0.0)


@triton.jit
def chunk_gates_fwd_kernel(lr, ret, mom, decay, carry, write, mom_decay, mom_write, dgd_write,
                           C: tl.constexpr, USE_MOMENTUM: tl.constexpr, USE_DGD_WRITE: tl.constexpr,
                           N_LAST_ROW: tl.constexpr):
    """One chunk's gates, the matrices a row at a time: PA, PM and Y = PA @ PM are row recurrences
    (`_row_step`; Y[i, :] = α[i] Y[i − 1, :] + PM[i, :]), so no C × C block is held and every row is
    stored once, whole. USE_DGD_WRITE: store E (with momentum it serves DGD alone; without, E = G is
    the write). N_LAST_ROW: store N's last row N[C, :] alone ([n, C])."""
    i_chunk = tl.program_id(0).to(tl.int64)
    o = tl.arange(0, C)
    o_in, o_vec, o_mat = i_chunk * C, i_chunk * (C + 1), i_chunk * (C + 1) * C
    zero_row = tl.zeros([C], dtype=tl.float32)
    eta = tl.load(lr + o_in + o)
    alpha = tl.load(ret + o_in + o)
    tl.store(decay + o_vec, 1.0)
    tl.store(decay + o_vec + 1 + o, tl.cumprod(alpha, axis=0))                 # β
    if USE_DGD_WRITE:
        tl.store(dgd_write + o_mat + o, zero_row)
    if USE_MOMENTUM:
        m = tl.cumprod(tl.load(mom + o_in + o), axis=0)
        tl.store(mom_decay + o_vec, 1.0)
        tl.store(mom_decay + o_vec + 1 + o, m)                                  # m
        _, f = tl.associative_scan((alpha, m), 0, _linear_step)               # f[i] = α[i] f[i − 1] + m[i]
        tl.store(carry + o_vec, 0.0)
        tl.store(carry + o_vec + 1 + o, f)
        tl.store(write + o_mat + o, zero_row)
        if not N_LAST_ROW:
            tl.store(mom_write + o_mat + o, zero_row)
    p_a, p_m, y = zero_row, zero_row, zero_row
    for i in range(C):
        o_row = o_mat + (1 + i) * C + o                                        # row 1 + i of [C+1, C]
        a_i = tl.load(ret + o_in + i)
        eta_i = tl.where(o <= i, eta, 0.0)                                    # 0 above the diagonal, NaN or not
        if USE_DGD_WRITE:
            p_a = _row_step(p_a, a_i, i, o)
            tl.store(dgd_write + o_row, p_a * eta_i)                          # E = PA ∘ η
        if USE_MOMENTUM:
            p_m = _row_step(p_m, tl.load(mom + o_in + i), i, o)
            y = tl.where(o < i, a_i * y, 0.0) + p_m
            tl.store(write + o_row, y * eta_i)                                # G = (PA @ PM) ∘ η
            if not N_LAST_ROW:
                tl.store(mom_write + o_row, p_m * eta_i)                      # N = PM ∘ η
    if USE_MOMENTUM and N_LAST_ROW:
        tl.store(mom_write + o_in + o, p_m * eta)                             # N[C, :]


@triton.jit
def chunk_gates_bwd_kernel(lr, ret, mom, d_decay, d_carry, d_write, d_mom_decay, d_mom_write, d_dgd_write,
                           d_lr, d_ret, d_mom, rows_y, C: tl.constexpr, USE_MOMENTUM: tl.constexpr,
                           USE_DGD_WRITE: tl.constexpr, N_LAST_ROW: tl.constexpr):
    """USE_DGD_WRITE: E's gradient d_dgd_write is given (else zero, and not read). N_LAST_ROW:
    d_mom_write is the gradient of N's last row alone ([n, C]). `rows_y` [n, C, C]: scratch for
    the rows of Y = PA @ PM (with momentum)."""
    i_chunk = tl.program_id(0).to(tl.int64)
    o = tl.arange(0, C)
    o_in, o_vec, o_mat = i_chunk * C, i_chunk * (C + 1), i_chunk * (C + 1) * C
    o_y = i_chunk * C * C
    zero_row = tl.zeros([C], dtype=tl.float32)
    eta = tl.load(lr + o_in + o)
    alpha_prev = tl.load(ret + o_in + o - 1, mask=o >= 1, other=1.0)          # α[i − 1] (1 at i = 0)
    alpha_next = tl.load(ret + o_in + o + 1, mask=o < C - 1, other=0.0)       # α[i + 1] (0 at i = C − 1)
    # the scalar recurrences: β̄[i] = dβ[i] + α[i + 1] β̄[i + 1] against β[i − 1] (f, m alike)
    _, d_beta = tl.associative_scan((alpha_next, tl.load(d_decay + o_vec + 1 + o)), 0, _linear_step, reverse=True)
    d_alpha = d_beta * tl.cumprod(alpha_prev, axis=0)
    if USE_MOMENTUM:
        mu_prev = tl.load(mom + o_in + o - 1, mask=o >= 1, other=1.0)
        mu_next = tl.load(mom + o_in + o + 1, mask=o < C - 1, other=0.0)
        m_prev = tl.cumprod(mu_prev, axis=0)                                   # m[i − 1] (1 at i = 0)
        _, f_prev = tl.associative_scan((alpha_prev, tl.where(o >= 1, m_prev, 0.0)), 0, _linear_step)
        _, d_f = tl.associative_scan((alpha_next, tl.load(d_carry + o_vec + 1 + o)), 0, _linear_step, reverse=True)
        _, d_m = tl.associative_scan((mu_next, tl.load(d_mom_decay + o_vec + 1 + o) + d_f), 0, _linear_step,
                                     reverse=True)
        d_alpha += d_f * f_prev
        d_mu = d_m * m_prev
        # forward pass: the rows of Y, for the reverse pass
        p_m, y = zero_row, zero_row
        for i in range(C):
            p_m = _row_step(p_m, tl.load(mom + o_in + i), i, o)
            y = tl.where(o < i, tl.load(ret + o_in + i) * y, 0.0) + p_m
            tl.store(rows_y + o_y + i * C + o, y, mask=(o >= 0) & (i < C - 1))   # Y[C − 1] stays in registers
        tl.debug_barrier()                                                    # at C = 16 other lanes read the rows
    # reverse pass over the rows: the adjoints of E, G, N's rows and of the rows below
    d_eta = zero_row
    bar_pa, bar_y, bar_pm = zero_row, zero_row, zero_row
    p_a = _segment_row(alpha_next, C - 1, o)                                  # PA[i], PM[i], Y[i] at i = C − 1
    if USE_MOMENTUM:
        p_m = _segment_row(mu_next, C - 1, o)
    for r in range(C):
        i = C - 1 - r
        o_row = o_mat + (1 + i) * C + o                                        # row 1 + i of [C+1, C]
        a_next = tl.load(ret + o_in + i + 1, mask=i < C - 1, other=0.0)
        d_alpha_i = 0.0
        if USE_DGD_WRITE:                                                     # E = PA ∘ η
            d_e = tl.load(d_dgd_write + o_row)
            p_a_prev = _segment_row(alpha_next, i - 1, o)
            d_eta += d_e * p_a
            bar_pa = tl.where(o < i, d_e * eta + a_next * bar_pa, 0.0)
            d_alpha_i += tl.sum(bar_pa * p_a_prev, axis=0)
            p_a = p_a_prev
        if USE_MOMENTUM:                                                      # G = Y ∘ η, N = PM ∘ η
            d_g = tl.load(d_write + o_row)
            y_prev = tl.load(rows_y + o_y + (i - 1) * C + o, mask=(o >= 0) & (i >= 1), other=0.0)
            d_eta += d_g * y
            bar_y = tl.where(o < i, d_g * eta + a_next * bar_y, 0.0)
            d_alpha_i += tl.sum(bar_y * y_prev, axis=0)
            y = y_prev
            if N_LAST_ROW:
                d_n = tl.load(d_mom_write + o_in + o, mask=(o >= 0) & (i == C - 1), other=0.0)
            else:
                d_n = tl.load(d_mom_write + o_row)
            p_m_prev = _segment_row(mu_next, i - 1, o)
            d_eta += d_n * p_m
            mu_next_i = tl.load(mom + o_in + i + 1, mask=i < C - 1, other=0.0)
            bar_pm = tl.where(o < i, d_n * eta + bar_y + mu_next_i * bar_pm, 0.0)
            d_mu = tl.where(o == i, d_mu + tl.sum(bar_pm * p_m_prev, axis=0), d_mu)
            p_m = p_m_prev
        d_alpha = tl.where(o == i, d_alpha + d_alpha_i, d_alpha)
    tl.store(d_lr + o_in + o, d_eta)
    tl.store(d_ret + o_in + o, d_alpha)
    if USE_MOMENTUM:
        tl.store(d_mom + o_in + o, d_mu)


CHUNK_SIZES = (16, 32, 64)      # forward and backward


# one warp per chunk program: it holds rows of C values (`nested-kernels compile-report --kernel
# chunk_gates` has the registers)
NUM_WARPS = 1


def chunk_gates_fwd(lr, retention, momentum, dgd_write: bool = True, mom_write_last_row: bool = False):
    """lr, retention, momentum (or None) `[n, C]` fp32 contiguous, one row per chunk. Returns
    decay, carry, write, mom_decay, mom_write `[n, C+1(, C)]` (carry, write, mom_* None without
    momentum: then write is dgd_write) and dgd_write (None with momentum and not `dgd_write`: E
    then serves DGD alone). With `mom_write_last_row`, mom_write is N's last row alone, `[n, C]`."""
    n, C = lr.shape
    use_momentum = momentum is not None
    use_dgd_write = dgd_write or not use_momentum
    f32 = dict(dtype=torch.float32, device=lr.device)
    vec = lambda: torch.empty(n, C + 1, **f32) if use_momentum else None
    mat = lambda on=use_momentum: torch.empty(n, C + 1, C, **f32) if on else None
    decay, dgd_write = torch.empty(n, C + 1, **f32), mat(use_dgd_write)
    carry, write, mom_decay = vec(), mat(), vec()
    mom_write = torch.empty(n, C, **f32) if use_momentum and mom_write_last_row else mat()
    launcher.launch(chunk_gates_fwd_kernel, (n,), lr.device, lr, retention, momentum, decay, carry, write,
                    mom_decay, mom_write, dgd_write, C=C, USE_MOMENTUM=use_momentum, USE_DGD_WRITE=use_dgd_write,
                    N_LAST_ROW=mom_write_last_row, num_warps=NUM_WARPS)
    return decay, carry, write, mom_decay, mom_write, dgd_write


def chunk_gates_bwd(lr, retention, momentum, d_decay, d_carry, d_write, d_mom_decay, d_mom_write, d_dgd_write):
    """Gradients of lr, retention, momentum (None without momentum) from those of the six outputs
    of `chunk_gates_fwd` (fp32 contiguous; zeros where unused, but d_dgd_write may be None: zero,
    not read; d_mom_write `[n, C]`: that of N's last row alone)."""
    n, C = lr.shape
    use_momentum = momentum is not None
    d_lr, d_ret = torch.empty_like(lr), torch.empty_like(retention)
    d_mom = torch.empty_like(momentum) if use_momentum else None
    rows_y = lr.new_empty(n, C, C) if use_momentum else None                   # the kernel's scratch
    launcher.launch(chunk_gates_bwd_kernel, (n,), lr.device, lr, retention, momentum, d_decay, d_carry, d_write,
                    d_mom_decay, d_mom_write, d_dgd_write, d_lr, d_ret, d_mom, rows_y, C=C, USE_MOMENTUM=use_momentum,
                    USE_DGD_WRITE=d_dgd_write is not None, N_LAST_ROW=use_momentum and d_mom_write.dim() == 2,
                    num_warps=NUM_WARPS)
    return d_lr, d_ret, d_mom
