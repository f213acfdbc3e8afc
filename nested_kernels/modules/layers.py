"""`LinearMemory` and `MLPMemory`: Titans-style memory layers over `linear_memory` and
`mlp_memory` (SPEC §2, §3), with state chaining for streams and decoding."""
from typing import NamedTuple, Optional, Tuple

import torch
import torch.nn as nn

from ..linear_memory import linear_memory
from ..mlp_memory import MLPMemoryState, mlp_memory
from .memory_layer import GatedOutput, MemoryProjections


class MemoryLayerState(NamedTuple):
    memory: tuple                 # the op's state: LinearMemoryState or MLPMemoryState
    conv: tuple                   # caches of the short convolutions of q, k, v


class _MemoryLayer(nn.Module):
    def __init__(self, d_model, num_heads, head_dim, *, momentum, dgd, chunk_size, conv_size, lr_max, backend):
        super().__init__()
        self.dgd, self.chunk_size, self.backend = dgd, chunk_size, backend
        self.inputs = MemoryProjections(d_model, num_heads, head_dim, head_dim, momentum=momentum,
                                        conv_size=conv_size, lr_max=lr_max)
        self.output = GatedOutput(d_model, num_heads, head_dim)

    def _memory(self, inputs, memory_state):
        raise NotImplementedError

    def forward(self, x: torch.Tensor, state: Optional[MemoryLayerState] = None
                ) -> Tuple[torch.Tensor, MemoryLayerState]:
        """x `[B, T, d_model]` -> (y `[B, T, d_model]`, state after the last token).

        Pass the returned state to the next call to continue the stream; calls split at
        multiples of `chunk_size` reproduce one call."""
        inputs, conv = self.inputs(x, None if state is None else state.conv)
        o, memory_state = self._memory(inputs, None if state is None else state.memory)
        return self.output(o, x), MemoryLayerState(memory_state, conv)


class LinearMemory(_MemoryLayer):
    """A Titans / HOPE linear memory layer: `linear_memory` between projections and a gated output."""

    def __init__(self, d_model: int, num_heads: int, head_dim: int, *, momentum: bool = True, dgd: bool = False,
                 chunk_size: int = 64, conv_size: int = 4, lr_max: float = 0.1, backend: str = "auto"):
        super().__init__(d_model, num_heads, head_dim, momentum=momentum, dgd=dgd, chunk_size=chunk_size,
                         conv_size=conv_size, lr_max=lr_max, backend=backend)

    def _memory(self, inputs, memory_state):
        return linear_memory(*inputs, dgd=self.dgd, chunk_size=self.chunk_size, initial_state=memory_state,
                             output_final_state=True, backend=self.backend)


class MLPMemory(_MemoryLayer):
    """Titans' deep memory layer: a residual 2-layer MLP per head, `f(x) = x + φ(x W1) W2`, whose
    meta-learned initial weights are parameters shared by every sequence (SPEC §3)."""

    def __init__(self, d_model: int, num_heads: int, head_dim: int, *, hidden_dim: Optional[int] = None,
                 activation: str = "silu", momentum: bool = True, dgd: bool = True, self_target: bool = False,
                 read: str = "current", chunk_size: int = 16, conv_size: int = 4, lr_max: float = 0.1,
                 backend: str = "auto"):
        super().__init__(d_model, num_heads, head_dim, momentum=momentum, dgd=dgd, chunk_size=chunk_size,
                         conv_size=conv_size, lr_max=lr_max, backend=backend)
        hidden_dim = hidden_dim or 4 * head_dim
        self.activation, self.self_target, self.read = activation, self_target, read
        self.w1 = nn.Parameter(torch.randn(1, num_heads, head_dim, hidden_dim) / head_dim**0.5)
        self.w2 = nn.Parameter(torch.zeros(1, num_heads, hidden_dim, head_dim))  # starts as the identity map

    def _memory(self, inputs, memory_state):
        if memory_state is None:
            memory_state = MLPMemoryState(self.w1, self.w2)
        return mlp_memory(*inputs, initial_state=memory_state, activation=self.activation, dgd=self.dgd,
                          self_target=self.self_target, read=self.read, chunk_size=self.chunk_size,
                          output_final_state=True, backend=self.backend)
