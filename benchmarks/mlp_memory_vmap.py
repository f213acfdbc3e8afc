"""The baseline users have today for a deep memory: `mlp_memory` (SPEC §3) written the way
popular Titans implementations write it — per-token weight gradients at the chunk-start weights
by `torch.func.vmap(torch.func.grad(loss))`, then a Python loop over the chunk's tokens for
momentum, retention and DGD with weight-sized per-token tensors, and each token's read through
its own weights. Same maths as our tiers (tests/test_bench_mlp_memory.py checks it against the
torch tier), so the benchmark compares implementations, not models. Residual memory, read after
the write (`read="current"`), optional self-generated targets, as HOPE's M_memory.
"""
from typing import Optional, Tuple

import torch
from torch.func import grad, vmap

from nested_kernels.common.activations import get_activation


def _memory(w1, w2, x, phi):                                                  # f_W(x) = x + φ(x W1) W2
    return x + phi.fn(x @ w1) @ w2


def mlp_memory_vmap_grad(q, k, v, lr, retention, momentum: Optional[torch.Tensor], w1, w2, *, chunk_size: int,
                         dgd: bool, self_target: bool, activation: str = "silu"
                         ) -> Tuple[torch.Tensor, Tuple[torch.Tensor, ...]]:
    """q, k, v `[B, T, H, D]`, gates `[B, T, H]`, initial weights w1 `[1 | B, H, D, Dh]`, w2 `[1 | B, H, Dh, D]`.

    Returns o `[B, T, H, D]` (fp32, fp64 for fp64 inputs) and the final (W1, W2, S1, S2) per (sequence·head).
    """
    B, T, H, D = q.shape
    phi = get_activation(activation)
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32    # fp32 state, as every tier

    def heads(x):                                                             # [B, T, H, ...] -> [B·H, T, ...]
        return x.to(dtype).transpose(1, 2).reshape(B * H, T, *x.shape[3:])

    q, k, v, eta, alpha = (heads(x) for x in (q, k, v, lr, retention))
    mu = None if momentum is None else heads(momentum)
    W1 = w1.to(dtype).expand(B, *w1.shape[1:]).reshape(B * H, *w1.shape[2:])
    W2 = w2.to(dtype).expand(B, *w2.shape[1:]).reshape(B * H, *w2.shape[2:])
    S1, S2 = torch.zeros_like(W1), torch.zeros_like(W2)

    def token_loss(w1_, w2_, k_t, target_t):                                  # ½‖f_W(k_t) − target_t‖²
        return 0.5 * (_memory(w1_, w2_, k_t, phi) - target_t).pow(2).sum()

    # per sequence·head (outer vmap), per token at the same chunk-start weights (inner vmap)
    token_grads = vmap(vmap(grad(token_loss, argnums=(0, 1)), in_dims=(None, None, 0, 0)))

    outputs = []
    for start in range(0, T, chunk_size):
        sl = slice(start, min(T, start + chunk_size))
        target = _memory(W1, W2, v[:, sl], phi) if self_target else v[:, sl]   # v̂ = f_{W^c}(v), not detached
        U1, U2 = token_grads(W1, W2, k[:, sl], target)                        # [B·H, C, D, Dh], [B·H, C, Dh, D]
        for i in range(U1.shape[1]):
            t = start + i
            e, a = eta[:, t, None, None], alpha[:, t, None, None]
            step1, step2 = -e * U1[:, i], -e * U2[:, i]
            if mu is not None:
                S1, S2 = mu[:, t, None, None] * S1 + step1, mu[:, t, None, None] * S2 + step2
                step1, step2 = S1, S2
            W1_new = a * W1 + step1
            if dgd:                                                           # − η k_tᵀ (k_t W1_{t−1})
                k_t = k[:, t, :, None]
                W1_new = W1_new - e * k_t * (k_t.transpose(-1, -2) @ W1)
            W1, W2 = W1_new, a * W2 + step2
            outputs.append(_memory(W1, W2, q[:, t, None], phi)[:, 0])        # o_t = f_{W_t}(q_t)
    o = torch.stack(outputs, 1) if outputs else q.new_zeros(B * H, 0, D)
    return o.reshape(B, H, T, D).transpose(1, 2), (W1, W2, S1, S2)
