"""Torch tier of `self_modifying_titans` (SPEC §6): a loop over chunks of `chunk_size`.

Per chunk: the four memories read k, v, η, α from x̃ at their chunk-start weights (batched
matmuls), then all four write the chunk in one call of the torch tier of `mlp_memory`
(`read="chunk_start"`, `self_target=True`, one chunk), with the memories stacked as 4·H heads.
"""
import torch

from ..common.activations import get_activation
from ..mlp_memory import MLPMemoryState
from ..mlp_memory.chunked import mlp_memory_chunked
from .memories import read_memories, split_memories, stack_memories, write_inputs


def self_modifying_titans_chunked(x_tilde, states, *, chunk_size, lr_max, momentum=None, dgd=True,
                                  activation="silu", lr_bias=None, retention_bias=None):
    B, T, H, D = x_tilde.shape
    phi = get_activation(activation)
    dtype = torch.float64 if x_tilde.dtype == torch.float64 else torch.float32
    x = x_tilde.to(dtype)
    b_eta = 0.0 if lr_bias is None else lr_bias.to(dtype)
    b_alpha = 0.0 if retention_bias is None else retention_bias.to(dtype)
    mu = None if momentum is None else momentum.to(dtype).repeat(4)           # [4H], the same μ for each memory
    w1, w2, s1, s2 = stack_memories(states, dtype)                            # [N | 1, 4H, ·, ·]
    if mu is None:
        s1 = s2 = None

    ks, vs, etas, alphas = [], [], [], []
    for start in range(0, T, chunk_size):
        xc = x[:, start:start + chunk_size]                                   # [B, C, H, D]
        C = xc.shape[1]
        k, v, eta, alpha = read_memories(xc, w1, w2, phi, lr_max, b_eta, b_alpha)
        k4, v4, eta4, alpha4 = write_inputs(k, v, eta, alpha)
        _, final = mlp_memory_chunked(
            k4, k4, v4, eta4, alpha4, None if mu is None else mu.expand(B, C, 4 * H),
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

    new_states = split_memories(MLPMemoryState(w1, w2, s1, s2), H)
    return cat(ks, (H, D)), cat(vs, (H, D)), cat(etas, (H,)), cat(alphas, (H,)), new_states
