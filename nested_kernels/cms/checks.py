"""Argument checks of `cms_level` (SPEC §4), shared with `cms_level_step`."""
from typing import Optional

import torch

from ..common.activations import ACTIVATIONS
from ..common.validation import check_choice, check_chunk_size, check_tensor


def _check_weights(w1, w2, B: int, D: int, device: torch.device) -> None:
    """w1 [D, Dh] with w2 [Dh, D] (shared), or w1 [B, D, Dh] with w2 [B, Dh, D] (per sequence)."""
    check_tensor("w1", w1, device=device)
    check_tensor("w2", w2, device=device)
    if w1.dim() == 2:
        check_tensor("w1", w1, shape=(D, None), dims="[D, Dh]")
        Dh = w1.shape[-1]
        check_tensor("w2", w2, shape=(Dh, D), dims="[Dh, D] (shared, like w1)")
    elif w1.dim() == 3:
        check_tensor("w1", w1, shape=(B, D, None), dims="[B, D, Dh]")
        Dh = w1.shape[-1]
        check_tensor("w2", w2, shape=(B, Dh, D), dims="[B, Dh, D] (per sequence, like w1)")
    else:
        raise ValueError(f"w1: expected a 2-d [D, Dh] or 3-d [B, D, Dh] tensor, got shape {list(w1.shape)}")


def _check_scalar_gate(name: str, gate, lo: float, hi: Optional[float], kind: str) -> None:
    """A Python float gate must lie in [lo, hi]; tensor gates are not range-checked (no host sync)."""
    if isinstance(gate, bool) or not isinstance(gate, (int, float)):
        raise TypeError(f"{name}: expected a float or {kind}, got {type(gate).__name__}")
    if not (lo <= gate and (hi is None or gate <= hi)):
        want = f"{lo} <= {name} <= {hi}" if hi is not None else f"{name} >= {lo}"
        raise ValueError(f"{name}: expected {want}, got {gate}")



def check_cms_inputs(x, w1, w2, period, lr, retention, target, grad_y, activation) -> None:
    """The checks of `cms_level`'s arguments, shared with `cms_level_step`."""
    check_tensor("x", x, ndim=3, dims="[B, T, D]")
    B, T, D = x.shape
    device = x.device
    _check_weights(w1, w2, B, D, device)
    check_chunk_size(period, "period")
    if isinstance(lr, torch.Tensor):
        check_tensor("lr", lr, shape=(B, T), dims="[B, T]", device=device)
    else:
        _check_scalar_gate("lr", lr, 0.0, None, "a tensor [B, T]")
    if isinstance(retention, torch.Tensor):
        check_tensor("retention", retention, ndim=0, dims="(a scalar)", device=device)
    else:
        _check_scalar_gate("retention", retention, 0.0, 1.0, "a 0-d tensor")
    if (target is None) == (grad_y is None):
        given = "both" if target is not None else "neither"
        raise ValueError(f"target/grad_y: expected exactly one of target or grad_y, got {given}")
    for name, signal in (("target", target), ("grad_y", grad_y)):
        if signal is not None:
            check_tensor(name, signal, shape=(B, T, D), dims="[B, T, D]", device=device)
    check_choice("activation", activation, sorted(ACTIVATIONS))
