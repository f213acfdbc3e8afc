"""Newton–Schulz orthogonalisation (Muon's `zeropower`), used by M3 (NL Algorithm 1), and its SVD oracle.

For `G = U Σ Vᵀ` the polar factor is `U Vᵀ`: the closest semi-orthogonal matrix to `G`.
Newton–Schulz approximates it with matrix products only. After `X_0 = G / (‖G‖_F + eps)`
(so every singular value is in [0, 1]) each step applies the odd polynomial

    X_{j+1} = a X_j + (b A_j + c A_j²) X_j,    A_j = X_j X_jᵀ,

which maps every singular value σ to `p(σ) = a σ + b σ³ + c σ⁵` and leaves U, V untouched.

* `NS_QUINTIC = (3.4445, −4.7750, 2.0315)` (Muon): `p'(0) = 3.4445` grows small singular values
  fast, but `p(1) ≈ 0.70`, so 1 is not a fixed point: after about 5 steps the singular values
  oscillate in a band of roughly [0.68, 1.2] and more steps do NOT shrink it. The update only
  needs the direction, so Muon accepts the band for speed.
* `NS_CUBIC = (1.5, −0.5, 0)`: the classical iteration; converges to `U Vᵀ` (quadratically near
  σ = 1) but needs about log_{1.5}(1/σ_min) steps to lift a small σ_min.

Work is done on the smaller side (the Gram matrix `A` is `min(m, n)²`): a tall input is
transposed first. Inputs may be batched `[..., m, n]`; the Frobenius norm is per matrix.

Fused kernel: none. Each step is 3 matmuls already done by BLAS (cuBLAS on GPU), and the
elementwise parts `b A + c A²`, `a X + B X` ride in the `addmm`/`baddbmm` epilogues below, so on
CPU a fused version cannot pay; on GPU it was not measured (no GPU was available) and is left
to a benchmark before anyone writes one.
"""
from typing import Optional, Tuple

import torch

__all__ = ["newton_schulz", "polar_factor", "NS_QUINTIC", "NS_CUBIC"]

NS_QUINTIC: Tuple[float, float, float] = (3.4445, -4.7750, 2.0315)
NS_CUBIC: Tuple[float, float, float] = (1.5, -0.5, 0.0)

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_matrix(name: str, G) -> None:
    if not isinstance(G, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(G).__name__}")
    if G.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name}: expected dtype in {[str(d) for d in _FLOAT_DTYPES]}, got {G.dtype}")
    if G.dim() < 2:
        raise ValueError(f"{name}: expected a matrix or a batch of matrices [..., m, n], got shape {list(G.shape)}")


def _fma_matmul(bias: torch.Tensor, x: torch.Tensor, y: torch.Tensor, beta: float, alpha: float) -> torch.Tensor:
    """`beta * bias + alpha * (x @ y)` in one BLAS call (addmm / baddbmm)."""
    if x.dim() == 2:
        return torch.addmm(bias, x, y, beta=beta, alpha=alpha)
    lead = x.shape[:-2]
    out = torch.baddbmm(bias.reshape(-1, *bias.shape[-2:]), x.reshape(-1, *x.shape[-2:]),
                        y.reshape(-1, *y.shape[-2:]), beta=beta, alpha=alpha)
    return out.reshape(*lead, *out.shape[-2:])


def newton_schulz(
    G: torch.Tensor,
    steps: int = 5,
    eps: float = 1e-7,
    *,
    coefficients: Tuple[float, float, float] = NS_QUINTIC,
    dtype: Optional[torch.dtype] = None,
) -> torch.Tensor:
    r"""Approximate polar factor `U Vᵀ` of `G = U Σ Vᵀ` by `steps` Newton–Schulz iterations.

    Args:
        G (torch.Tensor):
            A matrix `[m, n]` or a batch of matrices `[..., m, n]`.
        steps (int):
            Number of iterations; 0 returns the normalised input. Default: `5`.
        eps (float):
            Added to the Frobenius norm before dividing, so a zero matrix maps to zero. Default: `1e-7`.
        coefficients (Tuple[float, float, float], Optional):
            `(a, b, c)` of `p(σ) = a σ + b σ³ + c σ⁵`. Default: `NS_QUINTIC` (Muon's; singular
            values end in a band of about [0.68, 1.2], see the module docstring); `NS_CUBIC`
            converges to `U Vᵀ`.
        dtype (torch.dtype, Optional):
            Dtype of the iteration (Muon uses `torch.bfloat16`). The Frobenius norm is taken in at
            least float32. Default: `None` (the dtype of `G`).

    Returns:
        A tensor of the shape and dtype of `G`.

    Examples::
        >>> G = torch.randn(64, 32)
        >>> O = newton_schulz(G)                                  # fp32, 5 quintic steps
        >>> O = newton_schulz(G.cuda(), dtype=torch.bfloat16)     # as Muon on GPU
        >>> O = newton_schulz(torch.randn(8, 64, 32))             # a batch of 8 matrices
    """
    _check_matrix("G", G)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise ValueError(f"steps: expected an int >= 0, got {steps!r}")
    if not eps > 0:
        raise ValueError(f"eps: expected a float > 0, got {eps!r}")
    if len(coefficients) != 3:
        raise ValueError(f"coefficients: expected 3 floats (a, b, c), got {coefficients!r}")
    dtype = G.dtype if dtype is None else dtype
    if dtype not in _FLOAT_DTYPES:
        raise ValueError(f"dtype: expected one of {[str(d) for d in _FLOAT_DTYPES]}, got {dtype}")
    a, b, c = (float(x) for x in coefficients)

    transpose = G.size(-2) > G.size(-1)
    X = G.mT if transpose else G
    norm_dtype = torch.promote_types(G.dtype, torch.float32)
    norm = torch.linalg.matrix_norm(X.to(norm_dtype), keepdim=True)
    X = (X.to(norm_dtype) / (norm + eps)).to(dtype)
    for _ in range(steps):
        A = X @ X.mT                                  # [..., s, s], s = min(m, n)
        B = _fma_matmul(A, A, A, beta=b, alpha=c)     # b A + c A²
        X = _fma_matmul(X, B, X, beta=a, alpha=1.0)   # a X + B X
    if transpose:
        X = X.mT
    return X.to(G.dtype)


def polar_factor(G: torch.Tensor) -> torch.Tensor:
    """Exact polar factor `U Vᵀ` of `G = U Σ Vᵀ` (thin SVD in float64): the oracle of `newton_schulz`."""
    _check_matrix("G", G)
    U, _, Vh = torch.linalg.svd(G.to(torch.float64), full_matrices=False)
    return (U @ Vh).to(G.dtype)
