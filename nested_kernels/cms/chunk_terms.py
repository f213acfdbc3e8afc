"""One chunk of a CMS level at frozen weights (SPEC §4), shared by the torch tier and the decode step."""
from typing import Tuple

import torch


def cms_chunk_terms(X, W1, W2, signal, eta, act, teach: bool) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Rows X `[B, C, D]` at the chunk-start weights W1 `[(B,) D, Dh]`, W2 `[(B,) Dh, D]`.

    Returns `(Y, ΔW1, ΔW2)` with Y = X + φ(X W1) W2 and the chunk's summed inner steps
    ΔW2 = Aᵀ diag(lr) E, ΔW1 = Xᵀ diag(lr) ((E W2ᵀ) ⊙ φ'(Z)), so that W^{c+1} = retention·W^c − ΔW.
    E is `signal` itself when `teach` (grad_y), else Y − signal (target). `eta` is a float or `[B, C, 1]`.
    """
    Z = X @ W1                                                 # Z = X W1^c
    A = act.fn(Z)
    Y = X + A @ W2                                             # Y = X + φ(Z) W2^c
    E = signal if teach else Y - signal                        # e_t = grad_y_t or y_t − target_t
    LE = E * eta                                               # diag(lr) E
    LD = (LE @ W2.transpose(-1, -2)) * act.grad(Z)             # diag(lr) ((E W2ᵀ) ⊙ φ'(Z))
    return Y, X.transpose(-1, -2) @ LD, A.transpose(-1, -2) @ LE
