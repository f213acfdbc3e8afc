"""The DGD system of each chunk (nested_kernels/common/chunk_state.py `dgd_inverse`, SPEC §2):
(I + L)^{-1} with L_tj = (k_t·k_j) E_{t−1, j} strictly lower, one program per (chunk, head):
K Kᵀ over K in blocks of BK, then forward substitution row by row in registers,
    inv[i, :] = e_i − Σ_{j<i} L[i, j] inv[j, :].
Replaces a batched K Kᵀ, a mask and `torch.linalg.solve_triangular` on [H, NC, C, C].

Its backward, one program per (chunk, head) as well: with A = I + L and inv = A^{-1},
dA = −invᵀ d(inv) invᵀ, kept strictly lower (dL); L = (K Kᵀ) ⊙ E_prev gives
dE_prev = dL ⊙ (K Kᵀ) (E's last row is not in L: 0) and dK = (dL ⊙ E_prev + (dL ⊙ E_prev)ᵀ) K.
Replaces fp32 copies of K, three batched products, a mask and a zero-filled dE in PyTorch. K Kᵀ
is recomputed in exact fp32 as in the forward; the three other products run on the matrix units
at the op's input precision (`dot_precision`: tf32 for 16-bit inputs, whose fp32 copies
included), except that exact fp32 ("ieee", fp32 inputs) becomes three-pass tf32 ("tf32x3", close
to fp32): exact fp32 FMA products of C × C blocks spilled kilobytes. tf32x3 still spills at
C = 64 on sm_80 (`aot.py` KNOWN_SPILLS)."""
import triton
import triton.language as tl


@triton.jit
def _chunk_kk(k, o_tok, i_h, H: tl.constexpr, K: tl.constexpr, C: tl.constexpr, BK: tl.constexpr):
    """K Kᵀ [C, C] of one chunk and head (`o_tok`: its rows of the flat layout), exact fp32."""
    kk = tl.zeros([C, C], dtype=tl.float32)
    for k0 in range(0, K, BK):
        o_k = k0 + tl.arange(0, BK)
        b_k = tl.load(k + (o_tok[:, None] * H + i_h) * K + o_k[None, :], mask=o_k[None, :] < K, other=0.0)
        b_kt = tl.load(k + (o_tok[None, :] * H + i_h) * K + o_k[:, None], mask=o_k[:, None] < K, other=0.0)
        kk += tl.dot(b_k.to(tl.float32), b_kt.to(tl.float32), input_precision="ieee")
    return kk


@triton.jit(do_not_specialize=["NC"])
def dgd_inverse_kernel(k, dgd_write, inv, NC, H: tl.constexpr, K: tl.constexpr, C: tl.constexpr,
                       BK: tl.constexpr):
    i_c, i_h = tl.program_id(0).to(tl.int64), tl.program_id(1)
    o = tl.arange(0, C)
    rows, cols = o[:, None], o[None, :]
    o_tok = i_c * C + o                                                       # rows of the flat layout
    kk = _chunk_kk(k, o_tok, i_h, H, K, C, BK)
    o_chunk = i_h * NC + i_c
    e_prev = tl.load(dgd_write + (o_chunk * (C + 1) + rows) * C + cols)      # E rows 0..C−1: E_{t−1, j}
    lower = tl.where(rows > cols, kk * e_prev, 0.0)                           # L
    b_inv = tl.where(rows == cols, 1.0, 0.0)
    for i in range(1, C):
        l_row = tl.sum(tl.where(rows == i, lower, 0.0), axis=0)              # L[i, :]
        row = tl.where(o == i, 1.0, 0.0) - tl.sum(l_row[:, None] * b_inv, axis=0)
        b_inv = tl.where(rows == i, row[None, :], b_inv)
    tl.store(inv + (o_chunk * C + rows) * C + cols, b_inv)


@triton.jit(do_not_specialize=["NC"])
def dgd_inverse_bwd_kernel(k, dgd_write, inv, d_inv, dk, d_dgd_write, NC, H: tl.constexpr, K: tl.constexpr,
                           C: tl.constexpr, BK: tl.constexpr, DOT_PRECISION: tl.constexpr):
    i_c, i_h = tl.program_id(0).to(tl.int64), tl.program_id(1)
    o = tl.arange(0, C)
    rows, cols = o[:, None], o[None, :]
    o_tok = i_c * C + o
    o_chunk = i_h * NC + i_c
    b_inv_t = tl.load(inv + (o_chunk * C + cols) * C + rows)                 # invᵀ, read transposed by address
    b_d_inv = tl.load(d_inv + (o_chunk * C + rows) * C + cols)
    b_da = tl.dot(b_inv_t, tl.dot(b_d_inv, b_inv_t, input_precision=DOT_PRECISION), input_precision=DOT_PRECISION)
    b_dl = tl.where(rows > cols, -b_da, 0.0)                                  # dL = strictly lower part of dA
    o_e = (o_chunk * (C + 1) + rows) * C + cols                               # E rows 0..C−1: E_prev
    tl.store(d_dgd_write + o_e, b_dl * _chunk_kk(k, o_tok, i_h, H, K, C, BK))
    tl.store(d_dgd_write + (o_chunk * (C + 1) + C) * C + o, tl.zeros([C], dtype=tl.float32))
    b_dkk = b_dl * tl.load(dgd_write + o_e)                                   # d(K Kᵀ)
    b_dkk += tl.trans(b_dkk)
    for k0 in range(0, K, BK):
        o_tk = (o_tok[:, None] * H + i_h) * K + k0 + tl.arange(0, BK)[None, :]
        m_k = k0 + tl.arange(0, BK)[None, :] < K
        b_k = tl.load(k + o_tk, mask=m_k, other=0.0).to(tl.float32)
        tl.store(dk + o_tk, tl.dot(b_dkk, b_k, input_precision=DOT_PRECISION).to(dk.dtype.element_ty), mask=m_k)


def num_warps(C: int) -> int:
    return {16: 4, 32: 4, 64: 8}[C]


BK = 16                          # inner blocks of K Kᵀ: fp32 products are FMA loops, short operands


def dgd_inverse_fwd(k, dgd_write):
    """k `[T', H, K]` (flat chunk layout, any float dtype), dgd_write `[H, NC, C+1, C]` fp32
    contiguous. Returns (I + L)^{-1} `[H, NC, C, C]` fp32."""
    import torch

    from ..utils.launch import launch

    Tp, H, K = k.shape
    _, NC, _, C = dgd_write.shape
    inv = torch.empty(H, NC, C, C, dtype=torch.float32, device=k.device)
    launch(dgd_inverse_kernel, (NC, H), k.device, k, dgd_write, inv, NC, H=H, K=K, C=C, BK=BK,
           num_warps=num_warps(C))
    return inv


def dgd_inverse_bwd(k, dgd_write, inv, d_inv, *, input_dtype):
    """The gradients of k `[T', H, K]` (in k's dtype) and of dgd_write `[H, NC, C+1, C]` (fp32)
    through inv = `dgd_inverse_fwd(k, dgd_write)`, given d_inv; every tensor contiguous.
    `input_dtype` is the op's (k may be an fp32 copy of 16-bit keys): its products' precision."""
    import torch

    from ..utils.launch import launch
    from ..utils.operand_precision import dot_precision

    Tp, H, K = k.shape
    _, NC, _, C = dgd_write.shape
    dk, d_dgd_write = torch.empty_like(k), torch.empty_like(dgd_write)
    precision = {"ieee": "tf32x3"}.get(dot_precision(input_dtype), "tf32")   # tf32x3: exact fp32 spilled
    launch(dgd_inverse_bwd_kernel, (NC, H), k.device, k, dgd_write, inv, d_inv, dk, d_dgd_write, NC, H=H, K=K, C=C,
           BK=BK, DOT_PRECISION=precision, num_warps=num_warps(C))
    return dk, d_dgd_write
