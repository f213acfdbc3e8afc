from typing import NamedTuple

import torch


class CMSState(NamedTuple):
    """Weights of one CMS level after a call, per sequence (SPEC §4).

    w1: `[B, D, Dh]` fp32 (fp64 for fp64 inputs), the input-side weight read as `x W1`.
    w2: `[B, Dh, D]` fp32 (fp64 for fp64 inputs), the output-side weight read as `φ(x W1) W2`.
    Pass them back as `w1`, `w2` of the next call to continue the stream.
    """

    w1: torch.Tensor
    w2: torch.Tensor
