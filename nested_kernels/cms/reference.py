"""Token-by-token reference of `cms_level` (SPEC §4): the oracle for every other tier.

Written for clarity, not speed: one Python loop over tokens, the whole batch at once. The
inner gradient of each token is written in closed form with the explicit φ' of
`common/activations.py`, so autograd through this function is the exact outer gradient,
φ'' terms included. Computes in float64 when the inputs are float64, in float32 otherwise;
y has x's dtype, the final state the compute dtype.
"""
from typing import Optional

import torch

from ..common.activations import get_activation
from .inputs import cms_inputs
from .state import CMSState


def cms_level_reference(
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
    eta = lr.to(dtype) if isinstance(lr, torch.Tensor) else x.new_full((B, T), float(lr))
    # Shared weights [D, Dh] broadcast over the batch; autograd then sums their gradient over it.
    W1 = w1.to(dtype).expand(B, *w1.shape[-2:])                    # W1^c [B, D, Dh]
    W2 = w2.to(dtype).expand(B, *w2.shape[-2:])                    # W2^c [B, Dh, D]

    ys = []
    g1, g2 = torch.zeros_like(W1), torch.zeros_like(W2)           # Σ_{t∈c} lr_t ∇_W ⟨e_t, y_t⟩
    for t in range(T):
        x_t = x[:, t]                                              # [B, D]
        z_t = torch.einsum("bd,bdh->bh", x_t, W1)                  # z_t = x_t W1^c
        a_t = act.fn(z_t)                                          # a_t = φ(z_t)
        y_t = x_t + torch.einsum("bh,bhd->bd", a_t, W2)            # y_t = x_t + φ(x_t W1^c) W2^c
        e_t = signal[:, t] if grad_y is not None else y_t - signal[:, t]
        eta_t = eta[:, t, None, None]
        g2 = g2 + eta_t * a_t[:, :, None] * e_t[:, None, :]        # ∇_{W2} = a_tᵀ e_t
        d_t = torch.einsum("bd,bhd->bh", e_t, W2) * act.grad(z_t)  # (e_t W2ᵀ) ⊙ φ'(z_t)
        g1 = g1 + eta_t * x_t[:, :, None] * d_t[:, None, :]        # ∇_{W1} = x_tᵀ ((e_t W2ᵀ) ⊙ φ'(z_t))
        ys.append(y_t)
        if (t + 1) % period == 0 or t == T - 1:                    # chunk end; the call's end is one too
            W1 = alpha * W1 - g1                                   # W^{c+1} = retention · W^c − Σ lr_t ∇_W
            W2 = alpha * W2 - g2
            g1, g2 = torch.zeros_like(W1), torch.zeros_like(W2)

    y = (torch.stack(ys, 1) if ys else x.new_zeros(B, 0, D)).to(out_dtype)
    final_state = CMSState(W1, W2) if output_final_state else None
    return y, final_state
