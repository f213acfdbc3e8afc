"""Masked tile loads shared by the chunk kernels."""
import triton
import triton.language as tl


@triton.jit
def load_tile(ptr, o_r, m_r, o_c, m_c, ld):
    """The [len(o_r), len(o_c)] tile at rows o_r and columns o_c of a row-major matrix at `ptr`
    with leading dimension `ld`; rows and columns outside the masks m_r, m_c read 0."""
    return tl.load(ptr + (o_r[:, None] * ld + o_c[None, :]), mask=m_r[:, None] & m_c[None, :], other=0.0)
