"""Torch tier of `mlp_memory_step`: SPEC §3 token by token from an `MLPMemoryDecodeState`.

The oracle of compiled decode kernels. One loop over the new tokens, all sequences and heads
at once, each token one `mlp_token_step` (the reference's loop body); each sequence snapshots
`W^c` when its own position in the chunk is 0. Computes in the state's dtype (fp32, or fp64
for the oracle tests); o in v's dtype.
"""
import torch

from ..common.activations import get_activation
from ..common.inputs import as_gate
from .decode_state import MLPMemoryDecodeState
from .token_step import MLPWeights, mlp_token_step


def mlp_memory_step_torch(q, k, v, lr, retention, momentum, state: MLPMemoryDecodeState, *, activation, residual,
                          dgd, self_target, read):
    B, T = q.shape[:2]
    out_dtype, dtype = v.dtype, state.w1.dtype
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    eta, alpha = as_gate(lr, q, dtype), as_gate(retention, q, dtype)
    mu = None if momentum is None else as_gate(momentum, q, dtype)
    # copies: the in-place write-back below must not touch tensors autograd saved
    w = MLPWeights(*(None if x is None else x.clone() for x in (state.w1, state.w2, state.s1, state.s2)))
    w1c, w2c = state.chunk_w1.clone(), state.chunk_w2.clone()
    options = dict(phi=get_activation(activation), residual=residual, dgd=dgd, self_target=self_target, read=read)

    outputs = []
    for t in range(T):
        starts = ((state.position + t) % state.chunk_size == 0)[:, None, None, None]   # [N, 1, 1, 1]
        w1c, w2c = torch.where(starts, w.w1, w1c), torch.where(starts, w.w2, w2c)       # W^c at a chunk start
        o_t, w = mlp_token_step(q[:, t], k[:, t], v[:, t], eta[:, t], alpha[:, t], None if mu is None else mu[:, t],
                                w, w1c, w2c, **options)
        outputs.append(o_t)

    if T > 0:
        for dst, src in zip((state.w1, state.w2, state.chunk_w1, state.chunk_w2, state.s1, state.s2),
                            (*w[:2], w1c, w2c, *w[2:])):
            if dst is not None:
                dst.copy_(src)
        state.position.add_(T).remainder_(state.chunk_size)
    o = torch.stack(outputs, 1) if outputs else v.new_zeros(B, 0, *v.shape[2:])
    return o.to(out_dtype)
