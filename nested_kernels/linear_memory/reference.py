"""Token-by-token reference of `linear_memory` (SPEC §2): the oracle for every other tier.

Written for clarity, not speed: one Python loop over tokens per sequence, all heads at once.
Computes in float64 when the inputs are float64, in float32 otherwise.
"""
from typing import Optional

import torch

from ..common.inputs import memory_inputs, sequence_bounds, stack_sequences
from .state import LinearMemoryState


def linear_memory_reference(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    lr,
    retention,
    momentum=None,
    *,
    dgd: bool = False,
    chunk_size: int = 64,
    scale: float = 1.0,
    initial_state: Optional[LinearMemoryState] = None,
    output_final_state: bool = False,
    cu_seqlens: Optional[torch.Tensor] = None,
):
    B, T, H, K = q.shape
    V = v.shape[-1]
    out_dtype, dtype, q, k, v, eta, alpha, mu = memory_inputs(q, k, v, lr, retention, momentum)

    outputs, memories, momenta = [], [], []
    for n, (b, start, end) in enumerate(sequence_bounds(B, T, cu_seqlens)):
        if initial_state is None:
            M = q.new_zeros(H, K, V, dtype=dtype)
        else:
            M = initial_state.memory[n].to(dtype)
        S = None
        if mu is not None:
            S0 = None if initial_state is None else initial_state.momentum
            S = q.new_zeros(H, K, V, dtype=dtype) if S0 is None else S0[n].to(dtype)
        seq_out = []
        for t in range(start, end):
            if (t - start) % chunk_size == 0:
                M_chunk = M                                            # M^c
            k_t, v_t, q_t = k[b, t], v[b, t], q[b, t]                  # [H, K], [H, V]
            e_t, a_t = eta[b, t, :, None, None], alpha[b, t, :, None, None]
            r_t = torch.einsum("hk,hkv->hv", k_t, M_chunk) - v_t       # r_t = k_t M^c − v_t
            u_t = k_t[:, :, None] * r_t[:, None, :]                    # u_t = k_tᵀ r_t
            step = -e_t * u_t
            if S is not None:
                S = mu[b, t, :, None, None] * S + step                 # S_t = μ_t S_{t−1} − η_t u_t
                step = S
            M_new = a_t * M + step                                     # M_t = α_t M_{t−1} + S_t
            if dgd:                                                    # − η_t k_tᵀ (k_t M_{t−1})
                M_new = M_new - e_t * k_t[:, :, None] * torch.einsum("hk,hkv->hv", k_t, M)[:, None, :]
            M = M_new
            seq_out.append(scale * torch.einsum("hk,hkv->hv", q_t, M))  # o_t = scale · q_t M_t
        outputs.append(torch.stack(seq_out, 0) if seq_out else v.new_zeros(0, H, V))
        memories.append(M)
        momenta.append(S)

    if cu_seqlens is None:
        o = stack_sequences(outputs, v.new_zeros(0, T, H, V))
    else:
        o = torch.cat(outputs, 0)[None]
    o = o.to(out_dtype)
    final_state = None
    if output_final_state:
        final_state = LinearMemoryState(
            stack_sequences(memories, q.new_zeros(0, H, K, V, dtype=dtype)),
            None if mu is None else stack_sequences(momenta, q.new_zeros(0, H, K, V, dtype=dtype)),
        )
    return o, final_state
