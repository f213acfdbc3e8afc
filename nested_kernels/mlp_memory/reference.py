"""Token-by-token reference of `mlp_memory` (SPEC §3): the oracle for every other tier.

One Python loop over tokens per sequence, all heads at once, each token one call of
`token_step.mlp_token_step`. The inner gradient is written in closed form with the explicit
φ', so autograd through this loop is the exact outer gradient, second-order (φ'') terms
included. fp64 for fp64 inputs, fp32 otherwise.
"""
import torch

from ..common.activations import get_activation
from ..common.inputs import memory_inputs, sequence_bounds, stack_sequences
from .state import MLPMemoryState
from .token_step import MLPWeights, mlp_token_step


def mlp_memory_reference(
    q, k, v, lr, retention, momentum=None, *, initial_state: MLPMemoryState, activation="silu",
    residual=True, dgd=False, self_target=False, read="current", chunk_size=16,
    output_final_state=False, cu_seqlens=None,
):
    B, T, H, K = q.shape
    phi = get_activation(activation)
    out_dtype, dtype, q, k, v, eta, alpha, mu = memory_inputs(q, k, v, lr, retention, momentum)

    outputs, finals = [], []
    for n, (b, start, end) in enumerate(sequence_bounds(B, T, cu_seqlens)):
        w1 = initial_state.w1[n if initial_state.w1.shape[0] > 1 else 0].to(dtype)
        w2 = initial_state.w2[n if initial_state.w2.shape[0] > 1 else 0].to(dtype)
        s1 = s2 = None
        if mu is not None:
            s1 = torch.zeros_like(w1) if initial_state.s1 is None else initial_state.s1[n].to(dtype)
            s2 = torch.zeros_like(w2) if initial_state.s2 is None else initial_state.s2[n].to(dtype)
        w = MLPWeights(w1, w2, s1, s2)
        seq_out = []
        for t in range(start, end):
            if (t - start) % chunk_size == 0:
                w1c, w2c = w.w1, w.w2                                         # W^c
            o_t, w = mlp_token_step(
                q[b, t], k[b, t], v[b, t], eta[b, t], alpha[b, t], None if mu is None else mu[b, t], w, w1c, w2c,
                phi=phi, residual=residual, dgd=dgd, self_target=self_target, read=read,
            )
            seq_out.append(o_t)
        V = v.shape[-1]
        outputs.append(torch.stack(seq_out, 0) if seq_out else v.new_zeros(0, H, V))
        finals.append(w)

    if cu_seqlens is None:
        o = stack_sequences(outputs, v.new_zeros(0, T, H, v.shape[-1]))
    else:
        o = torch.cat(outputs, 0)[None]
    final_state = None
    if output_final_state:
        def stack(field: int, like: torch.Tensor) -> torch.Tensor:             # fields (w1, w2, s1, s2)
            return stack_sequences([w[field] for w in finals], like.new_zeros(0, *like.shape[1:], dtype=dtype))

        init = initial_state
        final_state = MLPMemoryState(
            stack(0, init.w1), stack(1, init.w2),
            None if mu is None else stack(2, init.w1), None if mu is None else stack(3, init.w2),
        )
    return o.to(out_dtype), final_state
