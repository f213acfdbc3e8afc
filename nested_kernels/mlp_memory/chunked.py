"""Torch tier of `mlp_memory`: the chunked dual form of SPEC §3 in vectorised PyTorch.

Per chunk, at the chunk-start weights W^c: Z = K W1^c, A = φ(Z), R = f_{W^c}(K) − target,
δ = (R W2^cᵀ) ⊙ φ'(Z). W1 is a linear layer with keys K and errors δ (DGD applies to it),
W2 one with keys A and errors R; both follow the gate algebra of `common/chunk_gates.py`.
The reads of `read="current"` are formed layer by layer after the loop: Zq from W1's dual
form, Aq = φ(Zq), then W2's dual form with keys A and queries Aq.
"""
import torch

from ..common.activations import get_activation
from ..common.chunk_gates import padded_chunk_gates
from ..common.chunk_state import chunk_end_state, chunk_read, dgd_inverse, dgd_pseudo_values
from ..common.chunking import from_chunks, last_row, optional_stack, to_chunks
from ..common.inputs import memory_inputs, sequence_bounds
from .state import MLPMemoryState


def _mlp_memory_dense(q, k, v, eta, alpha, mu, w1, w2, s1, s2, *, phi, residual, dgd, self_target, read, chunk_size):
    """One dense batch: q, k [B, T, H, K], v [B, T, H, V], gates [B, T, H], weights [B | 1, H, ·, ·]."""
    B, T = q.shape[:2]
    w1, w2 = w1.expand(B, *w1.shape[1:]), w2.expand(B, *w2.shape[1:])        # shared weights broadcast
    if T == 0:                                                                # nothing to read or write
        return v.new_zeros(v.shape), (w1, w2, s1, s2)
    chunk_size = min(chunk_size, T)                                           # longer: the same one chunk
    Q, Kc, Vc = (to_chunks(x, chunk_size) for x in (q, k, v))                # [B, H, NT, C, ·]
    gates = padded_chunk_gates(eta, alpha, mu, lambda g, pad: to_chunks(g, chunk_size, pad))
    kk = Kc @ Kc.transpose(-1, -2)
    dgd_inv = dgd_inverse(gates, kk) if dgd else None

    def memory(x, w1c, w2c):                                                  # f_W(x) = [x +] φ(x W1) W2
        y = phi.fn(x @ w1c) @ w2c
        return x + y if residual else y

    saved = {name: [] for name in ("w1", "w2", "s1", "s2", "act", "delta", "r", "pseudo")}
    for c in range(Q.shape[2]):
        g, kc, vc = gates.chunk(c), Kc[:, :, c], Vc[:, :, c]
        z = kc @ w1
        act = phi.fn(z)
        out = act @ w2
        target = memory(vc, w1, w2) if self_target else vc
        r = (kc + out if residual else out) - target                         # R = f_{W^c}(K) − target
        delta = (r @ w2.transpose(-1, -2)) * phi.grad(z)                      # δ = (R W2^cᵀ) ⊙ φ'(Z)
        pseudo = None
        if dgd:
            ks0 = None if s1 is None else kc @ s1
            pseudo = dgd_pseudo_values(g, dgd_inv[:, :, c], kk[:, :, c], z, ks0, delta)
        for name, value in zip(saved, (w1, w2, s1, s2, act, delta, r, pseudo)):
            saved[name].append(value)
        row = last_row(T, chunk_size, c)
        w1, s1 = chunk_end_state(g, row, kc, w1, s1, delta, pseudo)
        w2, s2 = chunk_end_state(g, row, act, w2, s2, r, None)

    W1, W2 = torch.stack(saved["w1"], 2), torch.stack(saved["w2"], 2)       # [B, H, NT, ·, ·]
    if read == "chunk_start":
        o = memory(Q, W1, W2)                                                 # o_t = f_{W^c}(q_t)
    else:
        S1, S2 = optional_stack(saved["s1"], 2), optional_stack(saved["s2"], 2)
        A = torch.stack(saved["act"], 2)
        zq = chunk_read(                                                      # Zq = Q W1_t, before φ
            gates, (Q @ Kc.transpose(-1, -2)).tril(), Q @ W1, None if S1 is None else Q @ S1,
            torch.stack(saved["delta"], 2), optional_stack(saved["pseudo"], 2),
        )
        aq = phi.fn(zq)
        o = chunk_read(                                                       # Aq W2_t
            gates, (aq @ A.transpose(-1, -2)).tril(), aq @ W2, None if S2 is None else aq @ S2,
            torch.stack(saved["r"], 2), None,
        )
        if residual:
            o = Q + o
    return from_chunks(o, T), (w1, w2, s1, s2)


def mlp_memory_chunked(
    q, k, v, lr, retention, momentum=None, *, initial_state: MLPMemoryState, activation="silu",
    residual=True, dgd=False, self_target=False, read="current", chunk_size=16,
    output_final_state=False, cu_seqlens=None,
):
    B, T, H, _ = q.shape
    out_dtype, dtype, q, k, v, eta, alpha, mu = memory_inputs(q, k, v, lr, retention, momentum)
    bounds = sequence_bounds(B, T, cu_seqlens)
    N = len(bounds)

    w1, w2 = initial_state.w1.to(dtype), initial_state.w2.to(dtype)
    s1 = s2 = None
    if mu is not None:
        s1 = w1.new_zeros(N, *w1.shape[1:]) if initial_state.s1 is None else initial_state.s1.to(dtype)
        s2 = w2.new_zeros(N, *w2.shape[1:]) if initial_state.s2 is None else initial_state.s2.to(dtype)
    options = dict(phi=get_activation(activation), residual=residual, dgd=dgd, self_target=self_target,
                   read=read, chunk_size=chunk_size)

    def pick(x, n):                                                           # row n of a per-sequence or broadcast tensor
        return None if x is None else x[n:n + 1] if x.shape[0] > 1 else x

    if cu_seqlens is None:
        o, final = _mlp_memory_dense(q, k, v, eta, alpha, mu, w1, w2, s1, s2, **options)
    else:
        outs, finals = [], []
        for n, (_, start, end) in enumerate(bounds):
            state_n = tuple(pick(x, n) for x in (w1, w2, s1, s2))
            sl = (slice(None), slice(start, end))
            o_n, final_n = _mlp_memory_dense(
                q[sl], k[sl], v[sl], eta[sl], alpha[sl], None if mu is None else mu[sl], *state_n, **options
            )
            outs.append(o_n)
            finals.append(final_n)
        o = torch.cat(outs, 1)
        final = tuple(optional_stack([None if x is None else x[0] for x in xs], 0) for xs in zip(*finals))

    final_state = MLPMemoryState(*final) if output_final_state else None
    return o.to(out_dtype), final_state
