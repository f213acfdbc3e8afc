"""Normalisation of `cms_level`'s validated inputs, shared by its reference and torch tiers."""
import torch

from ..common.inputs import compute_dtype


def cms_inputs(x, w1, w2, retention, target, grad_y):
    """(output dtype, compute dtype, x, the error signal (grad_y or target), retention) in the
    compute dtype: fp32, or fp64 when an input is fp64 (SPEC §1)."""
    dtype = compute_dtype(*(t for t in (x, w1, w2, target, grad_y) if t is not None))
    signal = (grad_y if grad_y is not None else target).to(dtype)
    alpha = retention.to(dtype) if isinstance(retention, torch.Tensor) else float(retention)
    return x.dtype, dtype, x.to(dtype), signal, alpha
