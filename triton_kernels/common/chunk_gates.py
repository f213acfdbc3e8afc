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

The gates come as rows `[n, C]` (one per chunk), or in a token layout `[T', H]` (`TokenGates`:
`linear_memory`'s flat layout, read through its padding index), which the kernels address alike
(`_gate`: rows are the layout with H = 1); the backward writes the gates' gradients in theirs.
"""
from typing import NamedTuple, Optional

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
def _gate(x, index, h, c, pos, pad, H, C: tl.constexpr, PADDED: tl.constexpr, mask=None, other=0.0):
    """The gate at position `pos` (scalar or vector) of chunk c of head h, where `mask` holds (else
    `other`): x[(c·C + pos)·H + h] of a `[T', H]` layout, through `index` (its token, −1 for a padding
    slot, which gets `pad`) when PADDED. Rows `[n, C]` are the layout with H = 1, c the row."""
    slot = c * C + pos
    if mask is None:
        if PADDED:
            tok = tl.load(index + slot)
            g = tl.load(x + tok * H + h, mask=tok >= 0, other=pad)
        else:
            g = tl.load(x + slot * H + h)
    elif PADDED:
        tok = tl.load(index + slot, mask=mask, other=-1)
        g = tl.where(mask, tl.load(x + tok * H + h, mask=mask & (tok >= 0), other=pad), other)
    else:
        g = tl.load(x + slot * H + h, mask=mask, other=other)
    return g


@triton.jit
def _store_gates(x, index, h, c, value, H, C: tl.constexpr, PADDED: tl.constexpr):
    """Chunk c of head h's C values into the layout `_gate` reads (not the padding slots)."""
    slot = c * C + tl.arange(0, C)
    if PADDED:
        tok = tl.load(index + slot)
        tl.store(x + tok * H + h, value, mask=tok >= 0)
    else:
        tl.store(x + slot * H + h, value)


@triton.jit(do_not_specialize=["NC"])
def chunk_gates_fwd_kernel(lr, ret, mom, index, decay, carry, write, mom_decay, mom_write, dgd_write, H, NC,
                           C: tl.constexpr, USE_MOMENTUM: tl.constexpr, USE_DGD_WRITE: tl.constexpr,
                           N_LAST_ROW: tl.constexpr, PADDED: tl.constexpr):
    """One chunk's gates, the matrices a row at a time: PA, PM and Y = PA @ PM are row recurrences
    (`_row_step`; Y[i, :] = α[i] Y[i − 1, :] + PM[i, :]), so no C × C block is held and every row is
    stored once, whole. USE_DGD_WRITE: store E (with momentum it serves DGD alone; without, E = G is
    the write). N_LAST_ROW: store N's last row N[C, :] alone ([n, C]). Program h·NC + c reads chunk
    c of head h of the gates' layout (`_gate`)."""
    i_chunk = tl.program_id(0).to(tl.int64)
    h, c = i_chunk // NC, i_chunk % NC
    o = tl.arange(0, C)
    o_in, o_vec, o_mat = i_chunk * C, i_chunk * (C + 1), i_chunk * (C + 1) * C
    zero_row = tl.zeros([C], dtype=tl.float32)
    eta = _gate(lr, index, h, c, o, 0.0, H, C, PADDED)
    alpha = _gate(ret, index, h, c, o, 1.0, H, C, PADDED)
    tl.store(decay + o_vec, 1.0)
    tl.store(decay + o_vec + 1 + o, tl.cumprod(alpha, axis=0))                 # β
    if USE_DGD_WRITE:
        tl.store(dgd_write + o_mat + o, zero_row)
    if USE_MOMENTUM:
        m = tl.cumprod(_gate(mom, index, h, c, o, 1.0, H, C, PADDED), axis=0)
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
        a_i = _gate(ret, index, h, c, i, 1.0, H, C, PADDED)
        eta_i = tl.where(o <= i, eta, 0.0)                                    # 0 above the diagonal, NaN or not
        if USE_DGD_WRITE:
            p_a = _row_step(p_a, a_i, i, o)
            tl.store(dgd_write + o_row, p_a * eta_i)                          # E = PA ∘ η
        if USE_MOMENTUM:
            p_m = _row_step(p_m, _gate(mom, index, h, c, i, 1.0, H, C, PADDED), i, o)
            y = tl.where(o < i, a_i * y, 0.0) + p_m
            tl.store(write + o_row, y * eta_i)                                # G = (PA @ PM) ∘ η
            if not N_LAST_ROW:
                tl.store(mom_write + o_row, p_m * eta_i)                      # N = PM ∘ η
    if USE_MOMENTUM and N_LAST_ROW:
        tl.store(mom_write + o_in + o, p_m * eta)                             # N[C, :]


@triton.jit(do_not_specialize=["NC"])
def chunk_gates_bwd_kernel(lr, ret, mom, index, d_decay, d_carry, d_write, d_mom_decay, d_mom_write, d_dgd_write,
                           d_lr, d_ret, d_mom, rows_y, H, NC, C: tl.constexpr, USE_MOMENTUM: tl.constexpr,
                           USE_DGD_WRITE: tl.constexpr, N_LAST_ROW: tl.constexpr, PADDED: tl.constexpr):
    """USE_DGD_WRITE: E's gradient d_dgd_write is given (else zero, and not read). N_LAST_ROW:
    d_mom_write is the gradient of N's last row alone ([n, C]). `rows_y` [n, C, C]: scratch for
    the rows of Y = PA @ PM (with momentum). The gates and their gradients in the layout of
    `chunk_gates_fwd_kernel`'s."""
    i_chunk = tl.program_id(0).to(tl.int64)
    h, c = i_chunk // NC, i_chunk % NC
    o = tl.arange(0, C)
    o_in, o_vec, o_mat = i_chunk * C, i_chunk * (C + 1), i_chunk * (C + 1) * C
    o_y = i_chunk * C * C
    zero_row = tl.zeros([C], dtype=tl.float32)
    eta = _gate(lr, index, h, c, o, 0.0, H, C, PADDED)
    alpha_prev = _gate(ret, index, h, c, o - 1, 1.0, H, C, PADDED, o >= 1, 1.0)       # α[i − 1] (1 at i = 0)
    alpha_next = _gate(ret, index, h, c, o + 1, 1.0, H, C, PADDED, o < C - 1, 0.0)    # α[i + 1] (0 at i = C − 1)
    # the scalar recurrences: β̄[i] = dβ[i] + α[i + 1] β̄[i + 1] against β[i − 1] (f, m alike)
    _, d_beta = tl.associative_scan((alpha_next, tl.load(d_decay + o_vec + 1 + o)), 0, _linear_step, reverse=True)
    d_alpha = d_beta * tl.cumprod(alpha_prev, axis=0)
    if USE_MOMENTUM:
        mu_prev = _gate(mom, index, h, c, o - 1, 1.0, H, C, PADDED, o >= 1, 1.0)
        mu_next = _gate(mom, index, h, c, o + 1, 1.0, H, C, PADDED, o < C - 1, 0.0)
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
            p_m = _row_step(p_m, _gate(mom, index, h, c, i, 1.0, H, C, PADDED), i, o)
            y = tl.where(o < i, _gate(ret, index, h, c, i, 1.0, H, C, PADDED) * y, 0.0) + p_m
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
        a_next = _gate(ret, index, h, c, i + 1, 1.0, H, C, PADDED, i < C - 1, 0.0)
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
            mu_next_i = _gate(mom, index, h, c, i + 1, 1.0, H, C, PADDED, i < C - 1, 0.0)
            bar_pm = tl.where(o < i, d_n * eta + bar_y + mu_next_i * bar_pm, 0.0)
            d_mu = tl.where(o == i, d_mu + tl.sum(bar_pm * p_m_prev, axis=0), d_mu)
            p_m = p_m_prev
        d_alpha = tl.where(o == i, d_alpha + d_alpha_i, d_alpha)
    _store_gates(d_lr, index, h, c, d_eta, H, C, PADDED)
    _store_gates(d_ret, index, h, c, d_alpha, H, C, PADDED)
    if USE_MOMENTUM:
        _store_gates(d_mom, index, h, c, d_mu, H, C, PADDED)


CHUNK_SIZES = (16, 32, 64)      # forward and backward


# one warp per chunk program: it holds rows of C values (`nested-kernels compile-report --kernel
# chunk_gates` has the registers)
NUM_WARPS = 1


class TokenGates(NamedTuple):
    """Gates read from (and their gradients written to) the flat token layout `[T', H]` (flat
    tokens × heads, `index` mapping each slot to its token, −1 for padding, or None where every slot
    is its token) rather than as chunk rows `[n, C]`: chunk c of head h is row h·NC + c of every
    output, its tokens the slots c·C .. c·C + C − 1. Padding slots are η = 0, α = μ = 1."""
    chunk_size: int
    heads: int
    chunks: int
    index: Optional[torch.Tensor]


def _layout(lr, tokens: Optional[TokenGates]):
    """(n, C, launch keywords) of the gate kernels for `lr` as rows, or in `tokens`' layout."""
    if tokens is None:
        n, C = lr.shape
        return n, C, dict(index=None, H=1, NC=n, C=C, PADDED=False)
    C, H, NC = tokens.chunk_size, tokens.heads, tokens.chunks
    return H * NC, C, dict(index=tokens.index, H=H, NC=NC, C=C, PADDED=tokens.index is not None)


def chunk_gates_fwd(lr, retention, momentum, dgd_write: bool = True, mom_write_last_row: bool = False,
                    tokens: Optional[TokenGates] = None):
    """lr, retention, momentum (or None) `[n, C]` fp32 contiguous, one row per chunk (or in the
    token layout of `tokens`, fp32 contiguous). Returns decay, carry, write, mom_decay, mom_write
    `[n, C+1(, C)]` (carry, write, mom_* None without momentum: then write is dgd_write) and
    dgd_write (None with momentum and not `dgd_write`: E then serves DGD alone). With
    `mom_write_last_row`, mom_write is N's last row alone, `[n, C]`."""
    n, C, layout = _layout(lr, tokens)
    use_momentum = momentum is not None
    use_dgd_write = dgd_write or not use_momentum
    f32 = dict(dtype=torch.float32, device=lr.device)
    vec = lambda: torch.empty(n, C + 1, **f32) if use_momentum else None
    mat = lambda on=use_momentum: torch.empty(n, C + 1, C, **f32) if on else None
    decay, dgd_write = torch.empty(n, C + 1, **f32), mat(use_dgd_write)
    carry, write, mom_decay = vec(), mat(), vec()
    mom_write = torch.empty(n, C, **f32) if use_momentum and mom_write_last_row else mat()
    launcher.launch(chunk_gates_fwd_kernel, (n,), lr.device, lr=lr, ret=retention, mom=momentum, decay=decay,
                    carry=carry, write=write, mom_decay=mom_decay, mom_write=mom_write, dgd_write=dgd_write,
                    USE_MOMENTUM=use_momentum, USE_DGD_WRITE=use_dgd_write, N_LAST_ROW=mom_write_last_row,
                    num_warps=NUM_WARPS, **layout)
    return decay, carry, write, mom_decay, mom_write, dgd_write


def chunk_gates_bwd(lr, retention, momentum, d_decay, d_carry, d_write, d_mom_decay, d_mom_write, d_dgd_write,
                    tokens: Optional[TokenGates] = None):
    """Gradients of lr, retention, momentum (None without momentum; in their layout, `tokens` as
    for `chunk_gates_fwd`) from those of the six outputs of `chunk_gates_fwd` (fp32 contiguous;
    zeros where unused, but d_dgd_write may be None: zero, not read, and without momentum so may
    those of carry, write, mom_decay, mom_write; d_mom_write `[n, C]`: that of N's last row alone)."""
    n, C, layout = _layout(lr, tokens)
    use_momentum = momentum is not None
    d_lr, d_ret = torch.empty_like(lr), torch.empty_like(retention)
    d_mom = torch.empty_like(momentum) if use_momentum else None
    rows_y = lr.new_empty(n, C, C) if use_momentum else None                   # the kernel's scratch
    launcher.launch(chunk_gates_bwd_kernel, (n,), lr.device, lr=lr, ret=retention, mom=momentum, d_decay=d_decay,
                    d_carry=d_carry, d_write=d_write, d_mom_decay=d_mom_decay, d_mom_write=d_mom_write,
                    d_dgd_write=d_dgd_write, d_lr=d_lr, d_ret=d_ret, d_mom=d_mom, rows_y=rows_y,
                    USE_MOMENTUM=use_momentum, USE_DGD_WRITE=d_dgd_write is not None,
                    N_LAST_ROW=use_momentum and d_mom_write.dim() == 2, num_warps=NUM_WARPS, **layout)
    return d_lr, d_ret, d_mom
