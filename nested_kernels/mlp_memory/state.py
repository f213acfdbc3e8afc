from typing import NamedTuple, Optional

import torch


class MLPMemoryState(NamedTuple):
    """Weights and momenta of a 2-layer MLP memory `f_W(x) = [x +] φ(x W1) W2` (SPEC §3).

    w1: `[N | 1, H, K, Dh]`, w2: `[N | 1, H, Dh, V]` — a leading 1 broadcasts over the batch.
    s1: `[N, H, K, Dh]`, s2: `[N, H, Dh, V]` momenta, or None without momentum.
    """

    w1: torch.Tensor
    w2: torch.Tensor
    s1: Optional[torch.Tensor] = None
    s2: Optional[torch.Tensor] = None
