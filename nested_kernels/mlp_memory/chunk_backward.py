"""The backward of one chunk of `mlp_memory` (SPEC §3), for every (sequence, head) pair at once: the
step of the reverse recurrence over chunks that the triton backend runs (`triton.py`).

Each chunk length of the batch (the partial last chunks apart) goes to the hand-written Triton
backward of one chunk (`chunk_backward_triton.py`, BACKGROUND.md §4), from the stored start state.
"""
from typing import NamedTuple, Optional, Tuple

import torch

from .chunk_backward_triton import mlp_memory_chunk_backward_triton


class ChunkOptions(NamedTuple):
    """The mode switches of the op (SPEC §3), fixed for a call."""

    activation: str
    residual: bool
    dgd: bool
    self_target: bool
    read: str


ChunkGrads = Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, Optional[torch.Tensor],
                   torch.Tensor, torch.Tensor, Optional[torch.Tensor], Optional[torch.Tensor]]


def _one_length(q_c, k_c, v_c, lr_c, ret_c, mom_c, w1, w2, s1, s2, do_c, d_next, options: ChunkOptions):
    """The backward of chunks of one length: the Triton chunk-backward kernels (no autograd, so it
    runs inside the backward custom op)."""
    grads = mlp_memory_chunk_backward_triton(q_c, k_c, v_c, lr_c, ret_c, mom_c, w1, w2, s1, s2, do_c, *d_next,
                                             **options._asdict())
    return [None if g is None else g.float() for g in grads]


def chunk_backward(
    q_c: torch.Tensor, k_c: torch.Tensor, v_c: torch.Tensor,
    lr_c: torch.Tensor, ret_c: torch.Tensor, mom_c: Optional[torch.Tensor],
    w1: torch.Tensor, w2: torch.Tensor, s1: Optional[torch.Tensor], s2: Optional[torch.Tensor],
    do_c: torch.Tensor,
    dw1_next: torch.Tensor, dw2_next: torch.Tensor, ds1_next: Optional[torch.Tensor], ds2_next: Optional[torch.Tensor],
    *, lengths: torch.Tensor, options: ChunkOptions,
) -> ChunkGrads:
    r"""Gradients of one chunk of every (sequence, head) pair, given the adjoints of its outputs and
    of its end state: one step of the reverse recurrence over chunks.

    The chunk is the forward of SPEC §3 over at most C tokens from the start state (W1, W2, S1, S2):
    every inner gradient at that state, the state after the chunk's last real token returned as
    (W1', W2', S1', S2'), the reads `o` per token (`options.read`). Sequence i of the batch holds
    `lengths[i]` real tokens (1 ≤ lengths[i] ≤ C: the last chunk of a sequence may be partial);
    its rows ≥ lengths[i] are padding, ignored (their gradients are zero).

    Args:
        q_c, k_c (torch.Tensor): `[N', C, H, K]`, v_c `[N', C, H, V]`; any float dtype (computed in fp32).
        lr_c, ret_c (torch.Tensor): η, α `[N', C, H]`; mom_c μ `[N', C, H]` or None (no momentum).
        w1 (torch.Tensor): `[N', H, K, Dh]` fp32, W1 at the chunk start (per sequence, never broadcast).
        w2 (torch.Tensor): `[N', H, Dh, V]` fp32.
        s1, s2 (torch.Tensor, Optional): momenta `[N', H, K, Dh]`, `[N', H, Dh, V]` fp32; None iff mom_c is None.
        do_c (torch.Tensor): ∂L/∂o of the chunk's reads `[N', C, H, V]`.
        dw1_next, dw2_next, ds1_next, ds2_next (torch.Tensor): ∂L/∂ of the chunk-end state, shapes of
            w1, w2, s1, s2 (the momenta's None iff mom_c is None).
        lengths (torch.Tensor): `[N']` int, real tokens per chunk.
        options (ChunkOptions): activation, residual, dgd, self_target, read.

    Returns:
        (dq, dk, dv, dlr, dret, dmom, dw1, dw2, ds1, ds2): fp32, shapes of the inputs; dmom, ds1,
        ds2 None without momentum; zeros on padding rows. dw1 … ds2 are ∂L/∂ of the chunk-start
        state through this chunk: the `*_next` adjoints of the previous chunk.
    """
    tensors = (q_c, k_c, v_c, lr_c, ret_c, mom_c, w1, w2, s1, s2)
    d_next = (dw1_next, dw2_next, ds1_next, ds2_next)
    out = [None if x is None else torch.zeros(x.shape, dtype=torch.float32, device=x.device) for x in tensors]
    for length in torch.unique(lengths).tolist():                             # the partial last chunks apart
        rows = (lengths == length).nonzero().squeeze(1)
        part = lambda x, cut=False: None if x is None else x[rows, :length] if cut else x[rows]
        grads = _one_length(*(part(x, True) for x in tensors[:6]), *(part(x) for x in tensors[6:]),
                            part(do_c, True), [part(x) for x in d_next], options)
        for i, g in enumerate(grads):
            if g is None:
                continue
            if i < 6:
                out[i][rows, :length] = g
            else:
                out[i][rows] = g
    return tuple(out)
