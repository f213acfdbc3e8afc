"""Torch tier of `self_modifying_titans` (SPEC §6): a loop over chunks of `chunk_size`.

Per chunk: the four memories read k, v, η, α from x̃ at their chunk-start weights (batched
matmuls), then all four write the chunk in one call of the torch tier of `mlp_memory`
(`read="chunk_start"`, `self_target=True`, one chunk), with the memories stacked as 4·H heads.
"""
import torch
import torch.nn.functional as F

from ..common.activations import get_activation
from ..mlp_memory import MLPMemoryState
from ..mlp_memory.chunked import mlp_memory_chunked


def _cat_heads(xs):                                                           # four [N, H, ·, ·] -> [N, 4H, ·, ·]
    if xs[0] is None:
        return None
    n = max(x.shape[0] for x in xs)
    return torch.cat([x.expand(n, *x.shape[1:]) for x in xs], 1)


def self_modifying_titans_chunked(x_tilde, states, *, chunk_size, lr_max, momentum=None, dgd=True,
                                  activation="silu", lr_bias=None, retention_bias=None):
    B, T, H, D = x_tilde.shape
    phi = get_activation(activation)
    dtype = torch.float64 if x_tilde.dtype == torch.float64 else torch.float32
    x = x_tilde.to(dtype)
    b_eta = 0.0 if lr_bias is None else lr_bias.to(dtype)
    b_alpha = 0.0 if retention_bias is None else retention_bias.to(dtype)
    mu = None if momentum is None else momentum.to(dtype).repeat(4)           # [4H], the same μ for each memory

    w1 = _cat_heads([s.w1.to(dtype) for s in states])                         # [N | 1, 4H, D, Dh]
    w2 = _cat_heads([s.w2.to(dtype) for s in states])
    s1 = s2 = None
    if mu is not None:
        s1 = _cat_heads([None if s.s1 is None else s.s1.to(dtype) for s in states])
        s2 = _cat_heads([None if s.s2 is None else s.s2.to(dtype) for s in states])

    ks, vs, etas, alphas = [], [], [], []
    for start in range(0, T, chunk_size):
        xc = x[:, start:start + chunk_size]                                   # [B, C, H, D]
        C = xc.shape[1]
        xh = xc.transpose(1, 2).repeat(1, 4, 1, 1)                            # [B, 4H, C, D]
        read = xh + phi.fn(xh @ w1) @ w2                                      # f_{W^c}(x̃) of all four memories
        k, v, e, a = read.transpose(1, 2).split(H, 2)                         # each [B, C, H, D]
        k = F.normalize(k, dim=-1)                                            # k_t = L2norm(M_k(x̃_t))
        eta = lr_max * torch.sigmoid(e.mean(-1) + b_eta)                      # η_t = lr_max·σ(mean M_η(x̃_t))
        alpha = torch.sigmoid(a.mean(-1) + b_alpha)                           # α_t = σ(mean M_α(x̃_t))
        k4, v4 = k.repeat(1, 1, 4, 1), v.repeat(1, 1, 4, 1)
        _, final = mlp_memory_chunked(
            k4, k4, v4, eta.repeat(1, 1, 4), alpha.repeat(1, 1, 4),
            None if mu is None else mu.expand(B, C, 4 * H),
            initial_state=MLPMemoryState(w1, w2, s1, s2), activation=activation, residual=True, dgd=dgd,
            self_target=True, read="chunk_start", chunk_size=C, output_final_state=True,
        )
        w1, w2, s1, s2 = final
        ks.append(k), vs.append(v), etas.append(eta), alphas.append(alpha)

    if T == 0:
        w1, w2 = w1.expand(B, *w1.shape[1:]), w2.expand(B, *w2.shape[1:])
        if mu is not None and s1 is None:
            s1, s2 = torch.zeros_like(w1), torch.zeros_like(w2)

    def cat(xs, shape):
        return torch.cat(xs, 1) if xs else x.new_zeros(B, 0, *shape)

    def heads(x, i):                                                          # memory i's H heads
        return None if x is None else x[:, i * H:(i + 1) * H]

    new_states = tuple(MLPMemoryState(*(heads(x, i) for x in (w1, w2, s1, s2))) for i in range(4))
    return cat(ks, (H, D)), cat(vs, (H, D)), cat(etas, (H,)), cat(alphas, (H,)), new_states
