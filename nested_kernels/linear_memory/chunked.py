"""Torch tier of `linear_memory`: the chunked closed form of SPEC §2 in vectorised PyTorch.

A Python loop over chunks carries (M, S); everything else is batched matmuls. Differentiable
by autograd. Computes in fp32 (fp64 for fp64 inputs); outputs in v's dtype.
"""
from typing import Optional

import torch

from ..common.chunk_gates import padded_chunk_gates
from ..common.chunk_state import chunk_end_state, chunk_read, dgd_inverse, dgd_pseudo_values
from ..common.chunking import from_chunks, last_row, optional_stack, to_chunks
from ..common.inputs import memory_inputs, sequence_bounds
from .state import LinearMemoryState


def _linear_memory_dense(q, k, v, eta, alpha, mu, memory, mom, *, dgd, chunk_size, scale):
    """One dense batch: q, k [B, T, H, K], v [B, T, H, V], gates [B, T, H], states [B, H, K, V]."""
    T = q.shape[1]
    if T == 0:                                                                # nothing to read or write
        return v.new_zeros(v.shape), memory, mom
    chunk_size = min(chunk_size, T)                                           # longer: the same one chunk
    Q, Kc, Vc = (to_chunks(x, chunk_size) for x in (q, k, v))                # [B, H, NT, C, ·]
    gates = padded_chunk_gates(eta, alpha, mu, lambda g, pad: to_chunks(g, chunk_size, pad))
    kk = Kc @ Kc.transpose(-1, -2)
    qk = (Q @ Kc.transpose(-1, -2)).tril()
    dgd_inv = dgd_inverse(gates, kk) if dgd else None

    starts, mom_starts, residuals, pseudos = [], [], [], []
    for c in range(Q.shape[2]):
        g, kc = gates.chunk(c), Kc[:, :, c]
        kx0 = kc @ memory
        r = kx0 - Vc[:, :, c]                                                 # R = K M^c − V
        w = None
        if dgd:
            ks0 = None if mom is None else kc @ mom
            w = dgd_pseudo_values(g, dgd_inv[:, :, c], kk[:, :, c], kx0, ks0, r)
        starts.append(memory)
        mom_starts.append(mom)
        residuals.append(r)
        pseudos.append(w)
        memory, mom = chunk_end_state(g, last_row(T, chunk_size, c), kc, memory, mom, r, w)

    M0 = torch.stack(starts, 2)                                               # [B, H, NT, K, V]
    S0 = optional_stack(mom_starts, 2)
    o = chunk_read(
        gates, qk, Q @ M0, None if S0 is None else Q @ S0,
        torch.stack(residuals, 2), optional_stack(pseudos, 2),
    )
    return from_chunks(scale * o, T), memory, mom


def linear_memory_chunked(
    q, k, v, lr, retention, momentum=None, *, dgd=False, chunk_size=64, scale=1.0,
    initial_state: Optional[LinearMemoryState] = None, output_final_state=False, cu_seqlens=None,
):
    B, T, H, K = q.shape
    V = v.shape[-1]
    out_dtype, dtype, q, k, v, eta, alpha, mu = memory_inputs(q, k, v, lr, retention, momentum)
    bounds = sequence_bounds(B, T, cu_seqlens)
    N = len(bounds)

    memory = q.new_zeros(N, H, K, V) if initial_state is None else initial_state.memory.to(dtype)
    mom = None
    if mu is not None:
        given = None if initial_state is None else initial_state.momentum
        mom = q.new_zeros(N, H, K, V) if given is None else given.to(dtype)

    def run(sl, seq_memory, seq_mom):
        return _linear_memory_dense(
            q[sl], k[sl], v[sl], eta[sl], alpha[sl], None if mu is None else mu[sl],
            seq_memory, seq_mom, dgd=dgd, chunk_size=chunk_size, scale=scale,
        )

    if cu_seqlens is None:
        o, memory, mom = run(slice(None), memory, mom)
    else:
        outs, memories, moms = [], [], []
        for n, (_, start, end) in enumerate(bounds):
            o_n, m_n, s_n = run((slice(None), slice(start, end)), memory[n:n + 1], None if mom is None else mom[n:n + 1])
            outs.append(o_n)
            memories.append(m_n[0])
            moms.append(None if s_n is None else s_n[0])
        o, memory, mom = torch.cat(outs, 1), torch.stack(memories, 0), optional_stack(moms, 0)

    final_state = LinearMemoryState(memory, mom) if output_final_state else None
    return o.to(out_dtype), final_state
