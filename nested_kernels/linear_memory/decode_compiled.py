"""The `cpp` and `cuda` backends of `linear_memory_step`: `torch.ops.nested_kernels.linear_memory_step`
(csrc/linear_memory/{cpu,cuda}/linear_memory_step.*), forward only, updating the decode state in
place. Registered with TORCH_LIBRARY in C++; this file adds its fake kernel for torch.compile. A
mutating op takes no autograd formula: the backends refuse calls that autograd records."""
import torch

from .._extension import has_cpp_op
from ..common.compiled_step import compiled_step_reasons
from ..common.inputs import as_gate
from .decode_state import LinearMemoryDecodeState

OP_NAME = "linear_memory_step"


cpp_unsupported_reason, cuda_unsupported_reason = compiled_step_reasons(OP_NAME)


if has_cpp_op(OP_NAME):

    @torch.library.register_fake(f"nested_kernels::{OP_NAME}")
    def _linear_memory_step_fake(q, k, v, lr, retention, momentum, memory, chunk_memory, momentum_state,
                                 position, chunk_size, scale, dgd):
        return v.new_empty(*v.shape)


def linear_memory_step_compiled(q, k, v, lr, retention, momentum, state: LinearMemoryDecodeState, *, dgd, scale):
    gate_dtype = state.memory.dtype
    return getattr(torch.ops.nested_kernels, OP_NAME)(
        q, k, v, as_gate(lr, q, gate_dtype), as_gate(retention, q, gate_dtype),
        None if momentum is None else as_gate(momentum, q, gate_dtype),
        state.memory, state.chunk_memory, state.momentum, state.position, state.chunk_size, float(scale), dgd,
    )
