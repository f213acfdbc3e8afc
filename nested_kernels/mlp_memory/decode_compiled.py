"""The `cpp` and `cuda` backends of `mlp_memory_step`: `torch.ops.nested_kernels.mlp_memory_step`
(csrc/mlp_memory/{cpu,cuda}/mlp_memory_step.*), forward only, updating the decode state in place.
Registered with TORCH_LIBRARY in C++; this file adds its fake kernel for torch.compile. A mutating
op takes no autograd formula: the backends refuse calls that autograd records."""
import torch

from .._extension import has_cpp_op
from ..common.compiled_step import compiled_step_reasons
from ..common.inputs import as_gate
from .decode_state import MLPMemoryDecodeState

OP_NAME = "mlp_memory_step"


cpp_unsupported_reason, cuda_unsupported_reason = compiled_step_reasons(OP_NAME)


if has_cpp_op(OP_NAME):

    @torch.library.register_fake(f"nested_kernels::{OP_NAME}")
    def _mlp_memory_step_fake(q, k, v, lr, retention, momentum, w1, w2, chunk_w1, chunk_w2, s1, s2, position,
                              chunk_size, activation, residual, dgd, self_target, read):
        return v.new_empty(*v.shape)


def mlp_memory_step_compiled(q, k, v, lr, retention, momentum, state: MLPMemoryDecodeState, *, activation, residual,
                             dgd, self_target, read):
    gate_dtype = state.w1.dtype
    return getattr(torch.ops.nested_kernels, OP_NAME)(
        q, k, v, as_gate(lr, q, gate_dtype), as_gate(retention, q, gate_dtype),
        None if momentum is None else as_gate(momentum, q, gate_dtype),
        state.w1, state.w2, state.chunk_w1, state.chunk_w2, state.s1, state.s2, state.position, state.chunk_size,
        activation, residual, dgd, self_target, read,
    )
