"""Token-by-token reference of `self_modifying_titans` (SPEC §6): the oracle of the torch tier.

One Python loop over tokens, all heads at once, written from the definition. At the first
token of each chunk of `chunk_size` the four memories' weights are frozen as `W^c`; token t
reads k, v, η, α from `W^c`, then every memory takes the `mlp_memory` step of SPEC §3
(`self_target=True`, so its target is `f_{W^c}(v_t)`). fp64 for fp64 inputs, fp32 otherwise.
"""
import torch
import torch.nn.functional as F

from ..common.activations import get_activation
from ..mlp_memory import MLPMemoryState


def _row_matmul(x, w):                                                        # x [B, H, i] · w [B, H, i, o]
    return torch.einsum("bhi,bhio->bho", x, w)


def _memory(x, w1, w2, phi):                                                  # f_W(x) = x + φ(x W1) W2
    return x + _row_matmul(phi.fn(_row_matmul(x, w1)), w2)


def _step(w1, w2, s1, s2, w1c, w2c, k, v, eta, alpha, mu, phi, dgd):
    """One token's write of SPEC §3 (self_target, residual); gates [B, H, 1, 1]."""
    target = _memory(v, w1c, w2c, phi)                                        # v̂_t = f_{W^c}(v_t)
    z = _row_matmul(k, w1c)
    r = _memory(k, w1c, w2c, phi) - target                                    # r_t = f_{W^c}(k_t) − v̂_t
    u2 = phi.fn(z)[..., :, None] * r[..., None, :]                            # U2_t = a_tᵀ r_t
    delta = torch.einsum("bhv,bhdv->bhd", r, w2c) * phi.grad(z)               # δ_t = (r_t W2^cᵀ) ⊙ φ'(z_t)
    u1 = k[..., :, None] * delta[..., None, :]                                # U1_t = k_tᵀ δ_t
    step1, step2 = -eta * u1, -eta * u2
    if mu is not None:
        s1, s2 = mu * s1 + step1, mu * s2 + step2                             # S_t = μ S_{t−1} − η_t U_t
        step1, step2 = s1, s2
    w1_new = alpha * w1 + step1                                               # W1_t = α_t W1_{t−1} + S1_t
    if dgd:                                                                   # − η_t k_tᵀ (k_t W1_{t−1})
        w1_new = w1_new - eta * k[..., :, None] * _row_matmul(k, w1)[..., None, :]
    return w1_new, alpha * w2 + step2, s1, s2


def self_modifying_titans_reference(x_tilde, states, *, chunk_size, lr_max, momentum=None, dgd=True,
                                    activation="silu", lr_bias=None, retention_bias=None):
    B, T, H, D = x_tilde.shape
    phi = get_activation(activation)
    dtype = torch.float64 if x_tilde.dtype == torch.float64 else torch.float32
    x = x_tilde.to(dtype)
    mu = None if momentum is None else momentum.to(dtype).view(1, H, 1, 1)
    b_eta = 0.0 if lr_bias is None else lr_bias.to(dtype)
    b_alpha = 0.0 if retention_bias is None else retention_bias.to(dtype)

    mems = []
    for st in states:
        w1 = st.w1.to(dtype).expand(B, *st.w1.shape[1:])
        w2 = st.w2.to(dtype).expand(B, *st.w2.shape[1:])
        s1 = s2 = None
        if mu is not None:
            s1 = torch.zeros_like(w1) if st.s1 is None else st.s1.to(dtype)
            s2 = torch.zeros_like(w2) if st.s2 is None else st.s2.to(dtype)
        mems.append([w1, w2, s1, s2])

    ks, vs, etas, alphas = [], [], [], []
    for t in range(T):
        if t % chunk_size == 0:
            frozen = [(m[0], m[1]) for m in mems]                             # W^c of each memory
        x_t = x[:, t]
        (k1, k2), (v1, v2), (e1, e2), (a1, a2) = frozen
        k_t = F.normalize(_memory(x_t, k1, k2, phi), dim=-1)                  # k_t = L2norm(M_k(x̃_t))
        v_t = _memory(x_t, v1, v2, phi)                                       # v_t = M_v(x̃_t)
        eta_t = lr_max * torch.sigmoid(_memory(x_t, e1, e2, phi).mean(-1) + b_eta)   # η_t, [B, H]
        alpha_t = torch.sigmoid(_memory(x_t, a1, a2, phi).mean(-1) + b_alpha)        # α_t, [B, H]
        for m, (w1c, w2c) in zip(mems, frozen):
            m[:] = _step(*m, w1c, w2c, k_t, v_t, eta_t[..., None, None], alpha_t[..., None, None], mu, phi, dgd)
        ks.append(k_t), vs.append(v_t), etas.append(eta_t), alphas.append(alpha_t)

    def stack(xs, shape):
        return torch.stack(xs, 1) if xs else x.new_zeros(B, 0, *shape)

    new_states = tuple(MLPMemoryState(*m) for m in mems)
    return stack(ks, (H, D)), stack(vs, (H, D)), stack(etas, (H,)), stack(alphas, (H,)), new_states
