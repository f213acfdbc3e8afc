"""The memory MLPs' activation φ and its derivatives φ', φ'' inside Triton kernels (the functions of
nested_kernels/common/activations.py), shared by the mlp_memory and cms_level kernels. `GELU` is
the constexpr code of `ACT_CODES` (0: SiLU, 1: tanh-GELU; a bool works too).

tanh-GELU through s = sigmoid(2u), u = c (z + k z³): 1 + tanh u = 2 s, 1 − tanh u = 2 σ(−2u)
and 1 − tanh² u = 4 s σ(−2u), each without cancellation where tanh saturates (1 − th² from an
fp32 th lost up to 3e-5 of φ' and φ'' at |z| ≈ 3). Constants inline (c = sqrt(2/π) =
0.7978845608028654, k = 0.044715): Triton 3.8's interpreter cannot multiply a tensor by a
constexpr global.
"""
import triton
import triton.language as tl

ACT_CODES = {"silu": 0, "gelu": 1}


@triton.jit
def phi(z, GELU: tl.constexpr):
    """φ(z)."""
    if GELU:
        return z * tl.sigmoid(1.5957691216057308 * (z + 0.044715 * z * z * z))           # z σ(2u)
    else:
        return z * tl.sigmoid(z)


@triton.jit
def phi_grad(z, GELU: tl.constexpr):
    """φ'(z); GELU: s + 2 z s σ(−2u) u' with u' = c (1 + 3 k z²)."""
    if GELU:
        two_u = 1.5957691216057308 * (z + 0.044715 * z * z * z)
        s = tl.sigmoid(two_u)
        du = 0.7978845608028654 * (1.0 + 0.134145 * z * z)
        return s + 2.0 * z * s * tl.sigmoid(-two_u) * du
    else:
        s = tl.sigmoid(z)
        return s * (1.0 + z * (1.0 - s))


@triton.jit
def phi_grad2(z, GELU: tl.constexpr):
    """φ''(z); GELU: 4 s σ(−2u) (u' + 3 c k z² − z th u'²) with th = s − σ(−2u) = tanh u."""
    if GELU:
        two_u = 1.5957691216057308 * (z + 0.044715 * z * z * z)
        s = tl.sigmoid(two_u)
        s_neg = tl.sigmoid(-two_u)
        du = 0.7978845608028654 * (1.0 + 0.134145 * z * z)
        return 4.0 * s * s_neg * (du + 0.10703222440890037 * z * z - z * (s - s_neg) * du * du)
    else:
        s = tl.sigmoid(z)
        return s * (1.0 - s) * (2.0 + z * (1.0 - 2.0 * s))
