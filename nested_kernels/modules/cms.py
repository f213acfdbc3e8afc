"""`CMS`: the Continuum Memory System as an nn.Module (SPEC §4), a chain of `cms_level`s.

Levels run fastest first, each level's output the next one's input. Every level owns:
- its meta-learned initial weights `w1 [D, Dh]`, `w2 [Dh, D]` (nn.Parameters, shared by the
  batch; their gradient sums over it). Init: w1 ~ N(0, 1/D), so unit-variance inputs give
  unit-variance pre-activations; w2 ~ N(0, w2_std²) with a small `w2_std` (default 0.02),
  so each level starts near the identity `y = x` without making w1's gradient vanish;
- a learnable inner learning rate η = softplus(θ), one scalar per level [decision: learned,
  positive by construction], initialised so that η = `lr`.
`retention` is one fixed float for every level.

Teach signal [decision]: with neither `target` nor `grad_y`, each level's local objective
is to reconstruct its own input (target = the level's input x, so the inner loss is
½‖φ(x W1) W2‖²: it pulls the residual branch towards zero, a learned in-context decay).
`grad_y` (e.g. ∂L/∂y of the outer loss) or `target`, when given, is passed to every level
unchanged [decision: the levels are residual, so ∂L/∂y_ℓ ≈ ∂L/∂y to first order].
"""
import math
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..cms import CMSDecodeState, CMSState, cms_level, cms_level_step
from ..common.streaming import continue_stream


def _softplus_inverse(y: float) -> float:
    return y + math.log(-math.expm1(-y))                      # softplus(θ) = y


class CMS(nn.Module):
    """A chain of CMS levels `[(hidden, period), ...]`, fastest first.

    Args:
        d_model (int): width D of the input and output `[B, T, D]`.
        levels (sequence of (int, int)): `(hidden Dh, period C)` of each level, fastest first.
        activation (str): φ of every level, `"silu"` or `"gelu"`. Default: `"silu"`.
        lr (float): initial inner learning rate of every level (learned). Default: `1e-2`.
        retention (float): fixed retention α ∈ [0, 1] of every level. Default: `1.0`.
        w2_std (float): standard deviation of the initial w2. Default: `0.02`.
        backend (str): `backend=` of `cms_level`. Default: `"auto"`.

    `forward(x, state=None, target=None, grad_y=None)` returns `(y, new_state)`:
    y `[B, T, D]` in x's dtype, new_state a list of one `CMSState` per level. Passing
    `new_state` back as `state` continues the stream (split it at multiples of every period
    to reproduce one call exactly).
    """

    def __init__(
        self,
        d_model: int,
        levels: Sequence[Tuple[int, int]],
        activation: str = "silu",
        lr: float = 1e-2,
        retention: float = 1.0,
        w2_std: float = 0.02,
        backend: str = "auto",
    ):
        super().__init__()
        if len(levels) == 0:
            raise ValueError("levels: expected at least one (hidden, period) pair, got []")
        if not lr > 0:
            raise ValueError(f"lr: expected a float > 0 (it is a softplus), got {lr}")
        self.d_model = d_model
        self.hidden = [int(h) for h, _ in levels]
        self.periods = [int(p) for _, p in levels]
        self.activation = activation
        self.retention = retention
        self.backend = backend
        self.w1 = nn.ParameterList(nn.Parameter(torch.randn(d_model, h) / math.sqrt(d_model)) for h in self.hidden)
        self.w2 = nn.ParameterList(nn.Parameter(torch.randn(h, d_model) * w2_std) for h in self.hidden)
        self.lr_param = nn.Parameter(torch.full((len(levels),), _softplus_inverse(lr)))

    def inner_lr(self) -> torch.Tensor:
        """The per-level inner learning rates η = softplus(θ), shape `[levels]`."""
        return F.softplus(self.lr_param)

    def forward(
        self,
        x: torch.Tensor,
        state: Optional[List[CMSState]] = None,
        target: Optional[torch.Tensor] = None,
        grad_y: Optional[torch.Tensor] = None,
    ) -> Tuple[torch.Tensor, List[CMSState]]:
        if state is not None and len(state) != len(self.periods):
            raise ValueError(f"state: expected one CMSState per level ({len(self.periods)}), got {len(state)}")
        B, T = x.shape[:2]
        lrs = self.inner_lr()
        new_state = []
        for i, period in enumerate(self.periods):
            w1, w2 = (self.w1[i], self.w2[i]) if state is None else state[i]
            own_target = x if target is None and grad_y is None else target   # [decision] reconstruct the input
            x, level_state = cms_level(
                x, w1, w2, period=period, lr=lrs[i].expand(B, T), retention=self.retention,
                target=own_target, grad_y=grad_y, activation=self.activation,
                output_final_state=True, backend=self.backend,
            )
            new_state.append(level_state)
        return x, new_state

    def stream(self, x: torch.Tensor, state: Optional[List[CMSDecodeState]] = None
               ) -> Tuple[torch.Tensor, List[CMSDecodeState]]:
        """`forward` (default teach signal) for a stream fed in any split, without recomputing past tokens.

        `state`: None (the initial weights) or the previous call's list of `CMSDecodeState`s, one per
        level, which keep each level's position in its current chunk. The outputs over the stream
        equal one `forward` call; returns `(y, new decode states)`.
        """
        if state is not None and len(state) != len(self.periods):
            raise ValueError(f"state: expected one CMSDecodeState per level ({len(self.periods)}), got {len(state)}")
        B, T = x.shape[:2]
        lrs = self.inner_lr()
        new_state = []
        for i, period in enumerate(self.periods):
            lr, inp = lrs[i].expand(B, T), x
            options = dict(retention=self.retention, activation=self.activation)

            def step(lo, hi, dec):
                return cms_level_step(inp[:, lo:hi], dec, lr=lr[:, lo:hi], target=inp[:, lo:hi], **options)

            def chunked(lo, hi, start):
                return cms_level(inp[:, lo:hi], *start, period=period, lr=lr[:, lo:hi], target=inp[:, lo:hi],
                                 output_final_state=True, backend=self.backend, **options)

            parts, level_state = continue_stream(
                T, 0 if state is None else state[i].position, period, step=step, chunked=chunked,
                boundary_state=lambda dec: (self.w1[i], self.w2[i]) if dec is None else dec.to_state(),
                decode_state=lambda running, start, pos: CMSDecodeState.in_chunk(running, start, pos, period,
                                                                                   batch_size=B),
                state=None if state is None else state[i],
            )
            x = torch.cat(parts, 1) if parts else x                         # T = 0: nothing to run
            new_state.append(level_state)
        return x, new_state

    def extra_repr(self) -> str:
        levels = list(zip(self.hidden, self.periods))
        return f"d_model={self.d_model}, levels={levels}, activation={self.activation!r}, retention={self.retention}"
