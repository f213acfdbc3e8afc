"""φ, φ' and φ'' of the CMS MLP inside Triton kernels: SiLU, or tanh-GELU when USE_GELU
(the formulas of nested_kernels/common/activations.py; tanh through the sigmoid).
GELU constants inline (c = sqrt(2/π) = 0.7978845608028654, k = 0.044715): Triton 3.8's
interpreter cannot multiply a tensor by a constexpr global."""
import triton
import triton.language as tl



@triton.jit
def act_fn(z, USE_GELU: tl.constexpr):
    if USE_GELU:
        th = 2.0 * tl.sigmoid(1.5957691216057308 * (z + 0.044715 * z * z * z)) - 1.0
        return 0.5 * z * (1.0 + th)
    else:
        return z * tl.sigmoid(z)


@triton.jit
def act_grad(z, USE_GELU: tl.constexpr):
    """φ'(z)"""
    if USE_GELU:
        th = 2.0 * tl.sigmoid(1.5957691216057308 * (z + 0.044715 * z * z * z)) - 1.0
        return 0.5 * (1.0 + th) + 0.5 * z * (1.0 - th * th) * 0.7978845608028654 * (1.0 + 0.134145 * z * z)
    else:
        s = tl.sigmoid(z)
        return s * (1.0 + z * (1.0 - s))


@triton.jit
def act_grad2(z, USE_GELU: tl.constexpr):
    """φ''(z); GELU: (1 − th²)(u' + 3 c k z² − z th u'²) with u' = c (1 + 3 k z²)."""
    if USE_GELU:
        th = 2.0 * tl.sigmoid(1.5957691216057308 * (z + 0.044715 * z * z * z)) - 1.0
        du = 0.7978845608028654 * (1.0 + 0.134145 * z * z)
        return (1.0 - th * th) * (du + 0.10703222440890037 * z * z - z * th * du * du)
    else:
        s = tl.sigmoid(z)
        return s * (1.0 - s) * (2.0 + z * (1.0 - 2.0 * s))
