"""Masked tile loads shared by the chunk kernels."""
import triton
import triton.language as tl


@triton.jit
def load_tile(ptr, o_r, m_r, o_c, m_c, ld):
    """The [len(o_r), len(o_c)] tile at rows o_r and columns o_c of a row-major matrix at `ptr`
    with leading dimension `ld`; rows and columns outside the masks m_r, m_c read 0."""
    return tl.load(ptr + (o_r[:, None] * ld + o_c[None, :]), mask=m_r[:, None] & m_c[None, :], other=0.0)


@triton.jit
def load_operand(ptr, mask, FP32_OPERANDS: tl.constexpr):
    """tl.load of a q, k or v tile (0 outside `mask`) as an operand of matrix products: converted to
    fp32 in registers with FP32_OPERANDS, where 16-bit products are unsafe
    (`utils/operand_precision.py`; the products keep the op's precision, tf32 for 16-bit inputs),
    else as stored."""
    x = tl.load(ptr, mask=mask, other=0.0)
    if FP32_OPERANDS:
        x = x.to(tl.float32)
    return x
