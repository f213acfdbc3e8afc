"""Reference of `deep_momentum` (SPEC §5), written straight from the definition.

Python loops over the matrices and their rows; the inner gradient ∇_φ Σ_rows ½‖m_φ(u) − u‖²
is taken by autograd (with `create_graph` when an outer gradient is needed), so this oracle
shares no hand-written derivative with the torch tier. fp64 for fp64 inputs, fp32 otherwise.
"""
import torch

from ..common.activations import get_activation


def deep_momentum_reference(u, w1, w2, s1, s2, eta, alpha, mu, lr, *, activation):
    """u `[H, n, d]`, w1 `[H, d, Dh]`, w2 `[H, Dh, d]`, s1/s2 like them or None, gates `[H]`."""
    phi = get_activation(activation).fn
    H, n, _ = u.shape
    outer = torch.is_grad_enabled() and any(
        isinstance(t, torch.Tensor) and t.requires_grad for t in (u, w1, w2, s1, s2, eta, alpha, mu, lr)
    )
    updates, states = [], []
    for h in range(H):
        with torch.enable_grad():
            a = w1[h] if w1[h].requires_grad else w1[h].detach().requires_grad_(True)
            b = w2[h] if w2[h].requires_grad else w2[h].detach().requires_grad_(True)
            inner = 0
            for r in range(n):                                               # Σ_rows ½‖m_φ(u) − u‖²
                row = u[h, r]
                inner = inner + 0.5 * ((row + phi(row @ a) @ b) - row).pow(2).sum()   # m_φ(u) = u + φ(u A) B
            g1, g2 = torch.autograd.grad(inner, (a, b), create_graph=outer)
        d1, d2 = -eta[h] * g1, -eta[h] * g2                                  # Δ = −η ∇_φ
        n1 = n2 = None
        if mu is not None:                                                   # S_{i+1} = μ S_i + Δ
            n1, n2 = mu[h] * s1[h] + d1, mu[h] * s2[h] + d2
            d1, d2 = n1, n2
        a_new, b_new = alpha[h] * w1[h] + d1, alpha[h] * w2[h] + d2          # φ_{i+1} = α φ_i + S_{i+1}
        rows = [lr[h] * (u[h, r] + phi(u[h, r] @ a_new) @ b_new) for r in range(n)]   # lr · m_{φ_{i+1}}(u)
        updates.append(torch.stack(rows, 0))
        states.append((a_new, b_new, n1, n2))
    stacked = tuple(None if xs[0] is None else torch.stack(xs, 0) for xs in zip(*states))
    return torch.stack(updates, 0), stacked
