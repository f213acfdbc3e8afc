"""The memory MLP's activation φ and its derivatives φ', φ'' (nested_kernels/common/activations.py)
as Triton helpers; ACT = 0 is SiLU, ACT = 1 tanh-GELU, u = c (z + a z³) with c = sqrt(2/π) = 0.79788…,
a = 0.044715 (written out: the interpreter cannot scale a tensor by a constexpr global);
tanh(u) = 2 σ(2u) − 1."""
import triton
import triton.language as tl

ACT_CODES = {"silu": 0, "gelu": 1}
SILU = tl.constexpr(ACT_CODES["silu"])


@triton.jit
def _gelu_tanh(z):
    return 2.0 * tl.sigmoid(2.0 * 0.7978845608028654 * (z + 0.044715 * z * z * z)) - 1.0


@triton.jit
def phi(z, ACT: tl.constexpr):
    if ACT == SILU:
        out = z * tl.sigmoid(z)
    else:
        out = 0.5 * z * (1.0 + _gelu_tanh(z))
    return out


@triton.jit
def phi_grad(z, ACT: tl.constexpr):
    if ACT == SILU:
        s = tl.sigmoid(z)
        out = s * (1.0 + z * (1.0 - s))                                       # s (1 + z (1 − s))
    else:
        th = _gelu_tanh(z)
        out = 0.5 * (1.0 + th) + 0.5 * z * (1.0 - th * th) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * z * z)
    return out


@triton.jit
def phi_grad2(z, ACT: tl.constexpr):
    if ACT == SILU:
        s = tl.sigmoid(z)
        out = s * (1.0 - s) * (2.0 + z * (1.0 - 2.0 * s))                    # s (1 − s) (2 + z (1 − 2s))
    else:
        th = _gelu_tanh(z)
        u1 = 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * z * z)        # u' and u'' of u = c (z + a z³)
        u2 = 6.0 * 0.7978845608028654 * 0.044715 * z
        out = (1.0 - th * th) * (u1 + 0.5 * z * (u2 - 2.0 * th * u1 * u1))
    return out
