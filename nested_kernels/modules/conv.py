"""Short causal depthwise convolution over time (Titans, fla `ShortConvolution`), with a cache
of the last `kernel_size − 1` inputs so that chained calls equal one call."""
from typing import Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F


class ShortConvolution(nn.Module):
    def __init__(self, channels: int, kernel_size: int = 4):
        super().__init__()
        self.kernel_size = kernel_size
        self.weight = nn.Parameter(torch.empty(channels, 1, kernel_size))
        self.bias = nn.Parameter(torch.zeros(channels))
        nn.init.kaiming_uniform_(self.weight, a=5**0.5)

    def forward(self, x: torch.Tensor, cache: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """x `[B, T, C]`, cache `[B, kernel_size − 1, C]` (zeros when None) -> (y `[B, T, C]`, new cache)."""
        B, T, C = x.shape
        if cache is None:
            cache = x.new_zeros(B, self.kernel_size - 1, C)
        if T == 0:                                                            # nothing to convolve; cache unchanged
            return x, cache
        padded = torch.cat([cache.to(x.dtype), x], 1)                       # causal: only past inputs
        y = F.conv1d(padded.transpose(1, 2), self.weight.to(x.dtype), self.bias.to(x.dtype), groups=C)
        return y.transpose(1, 2), padded[:, padded.shape[1] - (self.kernel_size - 1):]
