"""Torch tier of `linear_memory_step`: SPEC §2 token by token from a `LinearMemoryDecodeState`.

The oracle of the compiled decode kernels. One loop over the new tokens, all sequences and
heads at once; each sequence snapshots `M^c` when its own position in the chunk is 0. Computes
in the state's dtype (fp32, or fp64 for the oracle tests); o in v's dtype.
"""
import torch

from ..common.inputs import as_gate
from .decode_state import LinearMemoryDecodeState


def linear_memory_step_torch(q, k, v, lr, retention, momentum, state: LinearMemoryDecodeState, *, dgd, scale):
    B, T = q.shape[:2]
    out_dtype, dtype = v.dtype, state.memory.dtype
    q, k, v = q.to(dtype), k.to(dtype), v.to(dtype)
    eta, alpha = as_gate(lr, q, dtype), as_gate(retention, q, dtype)
    mu = None if momentum is None else as_gate(momentum, q, dtype)
    # copies: the in-place write-back below must not touch tensors autograd saved
    M, Mc, S = (None if x is None else x.clone() for x in (state.memory, state.chunk_memory, state.momentum))
    C = state.chunk_size

    outputs = []
    for t in range(T):
        starts = ((state.position + t) % C == 0)[:, None, None, None]          # [N, 1, 1, 1]
        Mc = torch.where(starts, M, Mc)                                        # M^c at a chunk start
        k_t, e_t, a_t = k[:, t], eta[:, t, :, None, None], alpha[:, t, :, None, None]
        r_t = torch.einsum("nhk,nhkv->nhv", k_t, Mc) - v[:, t]                 # r_t = k_t M^c − v_t
        step = -e_t * (k_t[..., :, None] * r_t[..., None, :])                  # −η_t u_t, u_t = k_tᵀ r_t
        if S is not None:
            S = mu[:, t, :, None, None] * S + step                             # S_t = μ_t S_{t−1} − η_t u_t
            step = S
        M_new = a_t * M + step                                                 # M_t = α_t M_{t−1} + S_t
        if dgd:                                                                # − η_t k_tᵀ (k_t M_{t−1})
            M_new = M_new - e_t * k_t[..., :, None] * torch.einsum("nhk,nhkv->nhv", k_t, M)[..., None, :]
        M = M_new
        outputs.append(scale * torch.einsum("nhk,nhkv->nhv", q[:, t], M))      # o_t = scale · q_t M_t

    if T > 0:
        state.memory.copy_(M)
        state.chunk_memory.copy_(Mc)
        if S is not None:
            state.momentum.copy_(S)
        state.position.add_(T).remainder_(C)
    o = torch.stack(outputs, 1) if outputs else v.new_zeros(B, 0, *v.shape[2:])
    return o.to(out_dtype)
