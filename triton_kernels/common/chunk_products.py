"""The state-free BT × BT products of the memory ops' recurrences, per chunk and head, from q and k
in the flat chunk layout (SPEC §2; `triton_kernels/linear_memory/README.md`):

    qk_write     = tril(Q Kᵀ) ⊙ G_{1..BT}      rows after each token      (the reads)
    qk_dgd_write = tril(Q Kᵀ) ⊙ E_{1..BT}      rows after each token      (the reads, DGD)
    kk_write     = (K Kᵀ) ⊙ G_{0..BT−1}        rows before each token     (the DGD right-hand side)

One program per (chunk, head) reads its Q and K tiles once, in their dtype, and sums Q Kᵀ and K Kᵀ
over K in tiles of BK. Replaces, per product, fp32 copies of q and k in a chunk-major layout, a
batched matmul and a multiply in PyTorch."""
import torch
import triton
import triton.language as tl

from ..utils import launch as launcher           # module attributes: tests patch them

from ..utils.host_math import next_power_of_2
from ..utils.operand_precision import operand_dtype
from .tiles import load_operand


@triton.jit(do_not_specialize=["NC"])
def chunk_products_kernel(
    q, k, write, dgd_write, qk_write, qk_dgd_write, kk_write,
    NC,
    H: tl.constexpr, K: tl.constexpr, BT: tl.constexpr, BK: tl.constexpr,
    USE_QK: tl.constexpr, USE_DGD: tl.constexpr, DOT_PRECISION: tl.constexpr, FP32_OPERANDS: tl.constexpr,
):
    """Q Kᵀ products with USE_QK (qk_dgd_write too with USE_DGD), K Kᵀ with USE_DGD; outputs and
    gates `[H, NC, ...]`, the gates with BT + 1 rows."""
    i_c, i_h = tl.program_id(0).to(tl.int64), tl.program_id(1)
    o_t = tl.arange(0, BT)
    o_tok = i_c * BT + o_t
    b_qk = tl.zeros([BT, BT], dtype=tl.float32)
    b_kk = tl.zeros([BT, BT], dtype=tl.float32)
    for i_k in range(0, tl.cdiv(K, BK)):
        o_k = i_k * BK + tl.arange(0, BK)
        o_tk = (o_tok[:, None] * H + i_h) * K + o_k[None, :]
        b_k = load_operand(k + o_tk, o_k[None, :] < K, FP32_OPERANDS)
        if USE_QK:
            b_q = load_operand(q + o_tk, o_k[None, :] < K, FP32_OPERANDS)
            b_qk += tl.dot(b_q, tl.trans(b_k), input_precision=DOT_PRECISION)
        if USE_DGD:
            b_kk += tl.dot(b_k, tl.trans(b_k), input_precision=DOT_PRECISION)
    o_chunk = i_h * NC + i_c
    o_mat = o_t[:, None] * BT + o_t[None, :]
    o_gate = o_chunk * (BT + 1) * BT + o_mat                                 # rows 0..BT−1 of the gates
    o_out = o_chunk * BT * BT + o_mat
    if USE_QK:
        b_qk = tl.where(o_t[:, None] >= o_t[None, :], b_qk, 0.0)
        tl.store(qk_write + o_out, b_qk * tl.load(write + BT + o_gate))      # rows 1..BT
        if USE_DGD:
            tl.store(qk_dgd_write + o_out, b_qk * tl.load(dgd_write + BT + o_gate))
    if USE_DGD:
        tl.store(kk_write + o_out, b_kk * tl.load(write + o_gate))


def num_warps(BT: int) -> int:
    """Two warps for the 16 × 16 products of 16-token chunks (one m16n8 tile each; four spilled 8 B
    with converted loads at K = 32 under Triton 3.6, sm_90)."""
    return {16: 2, 32: 4, 64: 8}[BT]


BK = 64


def chunk_products(q, k, write, dgd_write, *, reads: bool, dgd: bool, precision: str):
    """(qk_write, qk_dgd_write, kk_write) `[H, NC, BT, BT]` fp32, None where not asked for: the reads'
    products with `reads` (qk_dgd_write only with `dgd`), kk_write with `dgd`. q, k `[T', H, K]` in the
    flat chunk layout (q may be None without `reads`), write, dgd_write `[H, NC, BT+1, BT]` fp32
    contiguous; `precision` of the products (`utils/operand_precision.py:dot_precision`)."""
    Tp, H, K = k.shape
    _, NC, _, BT = write.shape
    new = lambda on: torch.empty(H, NC, BT, BT, dtype=torch.float32, device=k.device) if on else None
    qk_write, qk_dgd_write, kk_write = new(reads), new(reads and dgd), new(dgd)
    if reads or dgd:
        launcher.launch(chunk_products_kernel, (NC, H), k.device, q=q, k=k, write=write, dgd_write=dgd_write,
                        qk_write=qk_write, qk_dgd_write=qk_dgd_write, kk_write=kk_write, NC=NC, H=H, K=K, BT=BT,
                        BK=min(BK, max(16, next_power_of_2(K))), USE_QK=reads, USE_DGD=dgd,
                        DOT_PRECISION=precision, FP32_OPERANDS=operand_dtype(k.device, k.dtype) == torch.float32,
                        num_warps=num_warps(BT))
    return qk_write, qk_dgd_write, kk_write
