"""`cms_level_step`: a CMS level (SPEC §4) continued a few tokens at a time, from any position.

`CMSDecodeState` keeps the chunk-start weights W^c that every token of the chunk reads and
differentiates at, and the running weights `retention·W^c − Σ (steps of the chunk so far)`,
which are exactly `cms_level`'s final state after a call ending at this token (the end of a
call is a chunk boundary, SPEC §1), and become W^{c+1} when the chunk completes.
"""
from typing import NamedTuple, Optional, Tuple

import torch

from ..common.activations import get_activation
from ..common.validation import check_chunk_size
from .checks import check_cms_inputs
from .chunk_terms import cms_chunk_terms
from .inputs import cms_inputs
from .state import CMSState


class CMSDecodeState(NamedTuple):
    """Decode state of one CMS level, per sequence; `cms_level_step` returns the next one.

    w1: `[B, D, Dh]`, w2: `[B, Dh, D]` running weights (fp32, fp64 for fp64 inputs); at
        position 0 they are W^c of the chunk about to start.
    chunk_w1, chunk_w2: W^c of the current chunk; stale while `position == 0`.
    position: tokens of the current chunk already seen, in `[0, period)`, the same for every sequence.
    period: the level's chunk length.
    """

    w1: torch.Tensor
    w2: torch.Tensor
    chunk_w1: torch.Tensor
    chunk_w2: torch.Tensor
    position: int
    period: int

    @classmethod
    def from_state(cls, state, period: int, *, batch_size: int) -> "CMSDecodeState":
        """The decode state at a chunk boundary with weights `state` (a `CMSState`, or shared `(w1 [D, Dh], w2)`)."""
        return cls.in_chunk(state, state, 0, period, batch_size=batch_size)

    @classmethod
    def in_chunk(cls, running, chunk_start, position: int, period: int, *, batch_size: int) -> "CMSDecodeState":
        """The decode state `position` tokens into a chunk that started at weights `chunk_start`
        and whose running weights are `running` (e.g. `cms_level`'s final state of a call ending here)."""
        check_chunk_size(period, "period")
        if not 0 <= position < period:
            raise ValueError(f"position: expected 0 <= position < period = {period}, got {position}")
        w1, w2, c1, c2 = (w.expand(batch_size, *w.shape[-2:]) for w in (*running, *chunk_start))
        return cls(w1, w2, c1, c2, position, period)

    def to_state(self) -> CMSState:
        """The `CMSState` to pass as `cms_level`'s weights; only at a chunk boundary (position 0)."""
        if self.position != 0:
            raise ValueError(f"state.position: expected 0 (a chunk boundary) to convert to a CMSState, "
                             f"got {self.position}")
        return CMSState(self.w1, self.w2)


def cms_level_step(x: torch.Tensor, state: CMSDecodeState, *, lr, retention=1.0, target: Optional[torch.Tensor] = None,
                   grad_y: Optional[torch.Tensor] = None, activation: str = "silu") -> Tuple[torch.Tensor, CMSDecodeState]:
    r"""Continue a CMS level's stream by T tokens from `state` (SPEC §4); any T, any position.

    Feeding a stream through any split into calls gives the outputs of one `cms_level` call
    with `period=state.period`, and at a chunk boundary `state.to_state()` is its final state.
    Differentiable (torch ops); `state` is not modified.

    Args:
        x (torch.Tensor): inputs `[B, T, D]`.
        state (CMSDecodeState): from `CMSDecodeState.from_state(...)` or a previous call.
        lr, retention, target, grad_y, activation: as in `cms_level`.

    Returns:
        y (torch.Tensor): `[B, T, D]` in x's dtype; the next `CMSDecodeState`.
    """
    if not isinstance(state, CMSDecodeState):
        raise TypeError(f"state: expected a CMSDecodeState, got {type(state).__name__}")
    check_cms_inputs(x, state.w1, state.w2, state.period, lr, retention, target, grad_y, activation)
    B, T, D = x.shape
    act = get_activation(activation)
    out_dtype, dtype, x, signal, alpha = cms_inputs(x, state.w1, state.w2, retention, target, grad_y)
    eta = lr.to(dtype)[..., None] if isinstance(lr, torch.Tensor) else float(lr)
    W1, W2, C1, C2 = (w.to(dtype) for w in state[:4])
    position, ys, lo = state.position, [], 0
    while lo < T:
        hi = min(T, lo + state.period - position)                            # the rest of the current chunk
        if position == 0:                                                     # a chunk starts: W^c, then α·W^c
            C1, C2 = W1, W2
            W1, W2 = alpha * W1, alpha * W2
        Y, dW1, dW2 = cms_chunk_terms(x[:, lo:hi], C1, C2, signal[:, lo:hi],
                                      eta[:, lo:hi] if isinstance(eta, torch.Tensor) else eta, act, grad_y is not None)
        W1, W2 = W1 - dW1, W2 - dW2                                           # running: α·W^c − Σ lr ∇_W
        ys.append(Y)
        position, lo = (position + hi - lo) % state.period, hi
    y = torch.cat(ys, 1) if ys else x.new_zeros(B, 0, D)
    return y.to(out_dtype), CMSDecodeState(W1, W2, C1, C2, position, state.period)
