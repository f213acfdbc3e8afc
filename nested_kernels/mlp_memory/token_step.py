"""One token of SPEC §3's MLP memory, in closed form: the body of the reference loop and of
the torch decode step (`mlp_memory_step`). Any leading batch dims ([H] or [N, H]); the inner
gradient uses the explicit φ', so autograd through it is the exact outer gradient."""
from typing import NamedTuple, Optional

import torch


class MLPWeights(NamedTuple):
    """The running weights `W_t` and momenta `S_t` (None without momentum) of one token."""

    w1: torch.Tensor
    w2: torch.Tensor
    s1: Optional[torch.Tensor] = None
    s2: Optional[torch.Tensor] = None


def row_matmul(x, w):
    return torch.einsum("...i,...io->...o", x, w)


def mlp_read(x, w1, w2, *, phi, residual):
    y = row_matmul(phi.fn(row_matmul(x, w1)), w2)                             # f_W(x) = [x +] φ(x W1) W2
    return x + y if residual else y


def mlp_token_step(q_t, k_t, v_t, eta_t, alpha_t, mu_t, w: MLPWeights, w1c, w2c, *, phi, residual, dgd,
                   self_target, read):
    """Write token t at the chunk-start weights `W^c = (w1c, w2c)`, then read; returns (o_t, W_t).

    Gates are `[...]` (the leading dims of k_t); mu_t is None exactly when w.s1 is None.
    """
    e_t, a_t = eta_t[..., None, None], alpha_t[..., None, None]
    f = lambda x, w1_, w2_: mlp_read(x, w1_, w2_, phi=phi, residual=residual)  # noqa: E731
    target = f(v_t, w1c, w2c) if self_target else v_t                         # v̂_t = f_{W^c}(v_t)
    z = row_matmul(k_t, w1c)
    r = f(k_t, w1c, w2c) - target                                             # r_t = f_{W^c}(k_t) − target_t
    u2 = phi.fn(z)[..., :, None] * r[..., None, :]                            # U2_t = a_tᵀ r_t
    delta = torch.einsum("...v,...dv->...d", r, w2c) * phi.grad(z)            # δ_t = (r_t W2^cᵀ) ⊙ φ'(z_t)
    u1 = k_t[..., :, None] * delta[..., None, :]                              # U1_t = k_tᵀ δ_t
    step1, step2, s1, s2 = -e_t * u1, -e_t * u2, w.s1, w.s2
    if mu_t is not None:
        m_t = mu_t[..., None, None]
        s1, s2 = m_t * s1 + step1, m_t * s2 + step2                           # S_t = μ_t S_{t−1} − η_t U_t
        step1, step2 = s1, s2
    w1 = a_t * w.w1 + step1                                                   # W1_t = α_t W1_{t−1} + S1_t
    if dgd:                                                                   # − η_t k_tᵀ (k_t W1_{t−1})
        w1 = w1 - e_t * k_t[..., :, None] * row_matmul(k_t, w.w1)[..., None, :]
    w2 = a_t * w.w2 + step2                                                   # W2_t = α_t W2_{t−1} + S2_t
    if read == "current":
        o_t = f(q_t, w1, w2)                                                  # o_t = f_{W_t}(q_t)
    else:
        o_t = f(q_t, w1c, w2c)                                                # o_t = f_{W^c}(q_t)
    return o_t, MLPWeights(w1, w2, s1, s2)
