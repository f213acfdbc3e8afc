"""Torch tier of `cms_level` (SPEC §4): a Python loop over chunks of `period` tokens,
batched matmuls inside each chunk.

Per chunk c with rows X (C×D), the weights frozen at W^c:
    Z = X W1^c,  A = φ(Z),  Y = X + A W2^c,  E = grad_y or Y − target
    W2^{c+1} = retention · W2^c − Aᵀ diag(lr) E
    W1^{c+1} = retention · W1^c − Xᵀ diag(lr) ((E W2^cᵀ) ⊙ φ'(Z))
The per-token rank-1 gradients are never formed. With period ≥ T this is one plain MLP
plus one step at the end. Differentiable by autograd (φ' is explicit, so the φ'' terms
appear). Computes in fp32 (fp64 for fp64 inputs); y in x's dtype.
"""
from typing import Optional

import torch

from ..common.activations import get_activation
from ..common.chunking import num_chunks
from .chunk_terms import cms_chunk_terms
from .inputs import cms_inputs
from .state import CMSState


def cms_level_chunked(
    x: torch.Tensor,
    w1: torch.Tensor,
    w2: torch.Tensor,
    *,
    period: int,
    lr,
    retention=1.0,
    target: Optional[torch.Tensor] = None,
    grad_y: Optional[torch.Tensor] = None,
    activation: str = "silu",
    output_final_state: bool = False,
):
    B, T, D = x.shape
    act = get_activation(activation)
    out_dtype, dtype, x, signal, alpha = cms_inputs(x, w1, w2, retention, target, grad_y)
    eta = lr.to(dtype)[..., None] if isinstance(lr, torch.Tensor) else float(lr)   # [B, T, 1] or scalar
    # Shared weights [D, Dh] broadcast in the matmuls; the first step makes them [B, D, Dh].
    W1, W2 = w1.to(dtype), w2.to(dtype)

    ys = []
    for c in range(num_chunks(T, period)):
        sl = slice(c * period, min(T, (c + 1) * period))
        eta_c = eta[:, sl] if isinstance(eta, torch.Tensor) else eta
        Y, dW1, dW2 = cms_chunk_terms(x[:, sl], W1, W2, signal[:, sl], eta_c, act, grad_y is not None)
        W1, W2 = alpha * W1 - dW1, alpha * W2 - dW2                # W^{c+1} = retention·W^c − Σ lr ∇_W
        ys.append(Y)

    y = (torch.cat(ys, 1) if ys else x.new_zeros(B, 0, D)).to(out_dtype)
    final_state = None
    if output_final_state:
        final_state = CMSState(W1.expand(B, *W1.shape[-2:]), W2.expand(B, *W2.shape[-2:]))
    return y, final_state
