"""Token-by-token reference of `mlp_memory` (SPEC §3): the oracle for every other tier.

One Python loop over tokens per sequence, all heads at once. The inner gradient is written
in closed form with the explicit φ', so autograd through this loop is the exact outer
gradient, second-order (φ'') terms included. fp64 for fp64 inputs, fp32 otherwise.
"""
import torch

from ..common.activations import get_activation
from ..common.inputs import memory_inputs, sequence_bounds
from .state import MLPMemoryState


def _row_matmul(x, w):
    return torch.einsum("hi,hio->ho", x, w)


def mlp_memory_reference(
    q, k, v, lr, retention, momentum=None, *, initial_state: MLPMemoryState, activation="silu",
    residual=True, dgd=False, self_target=False, read="current", chunk_size=16,
    output_final_state=False, cu_seqlens=None,
):
    B, T, H, K = q.shape
    phi = get_activation(activation)
    out_dtype, dtype, q, k, v, eta, alpha, mu = memory_inputs(q, k, v, lr, retention, momentum)

    def memory(x, w1, w2):                                                    # f_W(x) = [x +] φ(x W1) W2
        y = _row_matmul(phi.fn(_row_matmul(x, w1)), w2)
        return x + y if residual else y

    outputs, finals = [], []
    for n, (b, start, end) in enumerate(sequence_bounds(B, T, cu_seqlens)):
        w1 = initial_state.w1[n if initial_state.w1.shape[0] > 1 else 0].to(dtype)
        w2 = initial_state.w2[n if initial_state.w2.shape[0] > 1 else 0].to(dtype)
        s1 = s2 = None
        if mu is not None:
            s1 = torch.zeros_like(w1) if initial_state.s1 is None else initial_state.s1[n].to(dtype)
            s2 = torch.zeros_like(w2) if initial_state.s2 is None else initial_state.s2[n].to(dtype)
        seq_out = []
        for t in range(start, end):
            if (t - start) % chunk_size == 0:
                w1c, w2c = w1, w2                                             # W^c
            k_t, v_t, q_t = k[b, t], v[b, t], q[b, t]
            e_t, a_t = eta[b, t, :, None, None], alpha[b, t, :, None, None]
            target = memory(v_t, w1c, w2c) if self_target else v_t            # v̂_t = f_{W^c}(v_t)
            z = _row_matmul(k_t, w1c)
            act = phi.fn(z)
            r = memory(k_t, w1c, w2c) - target                                # r_t = f_{W^c}(k_t) − target_t
            u2 = act[:, :, None] * r[:, None, :]                              # U2_t = a_tᵀ r_t
            delta = torch.einsum("hv,hdv->hd", r, w2c) * phi.grad(z)          # δ_t = (r_t W2^cᵀ) ⊙ φ'(z_t)
            u1 = k_t[:, :, None] * delta[:, None, :]                          # U1_t = k_tᵀ δ_t
            step1, step2 = -e_t * u1, -e_t * u2
            if mu is not None:
                m_t = mu[b, t, :, None, None]
                s1, s2 = m_t * s1 + step1, m_t * s2 + step2                   # S_t = μ_t S_{t−1} − η_t U_t
                step1, step2 = s1, s2
            w1_new = a_t * w1 + step1                                         # W1_t = α_t W1_{t−1} + S1_t
            if dgd:                                                           # − η_t k_tᵀ (k_t W1_{t−1})
                w1_new = w1_new - e_t * k_t[:, :, None] * _row_matmul(k_t, w1)[:, None, :]
            w1, w2 = w1_new, a_t * w2 + step2                                 # W2_t = α_t W2_{t−1} + S2_t
            if read == "current":
                seq_out.append(memory(q_t, w1, w2))                           # o_t = f_{W_t}(q_t)
            else:
                seq_out.append(memory(q_t, w1c, w2c))                         # o_t = f_{W^c}(q_t)
        V = v.shape[-1]
        outputs.append(torch.stack(seq_out, 0) if seq_out else v.new_zeros(0, H, V))
        finals.append((w1, w2, s1, s2))

    o = torch.stack(outputs, 0) if cu_seqlens is None else torch.cat(outputs, 0)[None]
    final_state = None
    if output_final_state:
        w1s, w2s, s1s, s2s = zip(*finals)
        final_state = MLPMemoryState(
            torch.stack(w1s, 0), torch.stack(w2s, 0),
            None if mu is None else torch.stack(s1s, 0), None if mu is None else torch.stack(s2s, 0),
        )
    return o.to(out_dtype), final_state
