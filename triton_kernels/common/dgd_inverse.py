"""The DGD system of each chunk (nested_kernels/common/chunk_state.py `dgd_inverse`, SPEC §2):
(I + L)^{-1} with L_tj = (k_t·k_j) E_{t−1, j} strictly lower, one program per (chunk, head):
K Kᵀ over K in blocks of BK, then forward substitution row by row in registers,
    inv[i, :] = e_i − Σ_{j<i} L[i, j] inv[j, :].
Replaces a batched K Kᵀ, a mask and `torch.linalg.solve_triangular` on [H, NC, C, C]."""
import triton
import triton.language as tl


@triton.jit(do_not_specialize=["NC"])
def dgd_inverse_kernel(k, dgd_write, inv, NC, H: tl.constexpr, K: tl.constexpr, C: tl.constexpr,
                       BK: tl.constexpr):
    i_c, i_h = tl.program_id(0).to(tl.int64), tl.program_id(1)
    o = tl.arange(0, C)
    rows, cols = o[:, None], o[None, :]
    o_tok = i_c * C + o                                                       # rows of the flat layout
    kk = tl.zeros([C, C], dtype=tl.float32)
    for k0 in range(0, K, BK):
        o_k = k0 + tl.arange(0, BK)
        b_k = tl.load(k + (o_tok[:, None] * H + i_h) * K + o_k[None, :], mask=o_k[None, :] < K, other=0.0)
        b_kt = tl.load(k + (o_tok[None, :] * H + i_h) * K + o_k[:, None], mask=o_k[:, None] < K, other=0.0)
        kk += tl.dot(b_k.to(tl.float32), b_kt.to(tl.float32), input_precision="ieee")
    o_chunk = i_h * NC + i_c
    e_prev = tl.load(dgd_write + (o_chunk * (C + 1) + rows) * C + cols)      # E rows 0..C−1: E_{t−1, j}
    lower = tl.where(rows > cols, kk * e_prev, 0.0)                           # L
    b_inv = tl.where(rows == cols, 1.0, 0.0)
    for i in range(1, C):
        l_row = tl.sum(tl.where(rows == i, lower, 0.0), axis=0)              # L[i, :]
        row = tl.where(o == i, 1.0, 0.0) - tl.sum(l_row[:, None] * b_inv, axis=0)
        b_inv = tl.where(rows == i, row[None, :], b_inv)
    tl.store(inv + (o_chunk * C + rows) * C + cols, b_inv)


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
