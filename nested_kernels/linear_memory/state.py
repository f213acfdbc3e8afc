from typing import NamedTuple, Optional

import torch


class LinearMemoryState(NamedTuple):
    """State of a linear memory, per sequence and head (SPEC §2).

    memory: `[N, H, K, V]` fp32, the matrix M read as `k M`.
    momentum: `[N, H, K, V]` fp32, the momentum S, or None when the op runs without momentum.
    """

    memory: torch.Tensor
    momentum: Optional[torch.Tensor] = None
