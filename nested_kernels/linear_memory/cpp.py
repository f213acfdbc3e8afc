"""The `cpp` backend of `linear_memory`: the compiled token-by-token recurrence on the CPU
(`csrc/linear_memory/cpu/`), forward only. Registered with TORCH_LIBRARY in C++; this file
adds its fake (meta) kernel for torch.compile and an autograd kernel that refuses training."""
from typing import Optional

import torch

from .._extension import has_cpp_op
from ..common.inputs import as_gate
from .state import LinearMemoryState

OP_NAME = "linear_memory_recurrent"


def unsupported_reason(call: dict) -> Optional[str]:
    if not has_cpp_op(OP_NAME):
        return "the compiled extension nested_kernels._C is not built (see `nested-kernels info`)"
    if call["device"].type != "cpu":
        return f"it runs on the CPU only, the inputs are on {call['device']}"
    if call["requires_grad"]:
        return "it is forward-only (inference and decoding); use backend='torch' for training"
    return None


if has_cpp_op(OP_NAME):

    @torch.library.register_fake(f"nested_kernels::{OP_NAME}")
    def _linear_memory_recurrent_fake(q, k, v, lr, retention, momentum, initial_memory, initial_momentum,
                                      cu_seqlens, chunk_size, scale, dgd):
        B, T, H, K = q.shape
        V = v.shape[-1]
        N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
        state_dtype = torch.float64 if v.dtype == torch.float64 else torch.float32
        memory = q.new_empty(N, H, K, V, dtype=state_dtype)
        mom = memory.new_empty(N, H, K, V) if momentum is not None else memory.new_empty(0)
        return v.new_empty(B, T, H, V), memory, mom

    def _refuse_backward(ctx, *grads):
        raise NotImplementedError("linear_memory: the cpp backend is forward-only; use backend='torch' for training")

    torch.library.register_autograd(f"nested_kernels::{OP_NAME}", _refuse_backward)


def linear_memory_cpp(
    q, k, v, lr, retention, momentum=None, *, dgd=False, chunk_size=64, scale=1.0,
    initial_state: Optional[LinearMemoryState] = None, output_final_state=False, cu_seqlens=None,
):
    gate_dtype = torch.float64 if v.dtype == torch.float64 else torch.float32
    o, memory, mom = getattr(torch.ops.nested_kernels, OP_NAME)(
        q, k, v, as_gate(lr, q, gate_dtype), as_gate(retention, q, gate_dtype),
        None if momentum is None else as_gate(momentum, q, gate_dtype),
        None if initial_state is None else initial_state.memory,
        None if initial_state is None else initial_state.momentum,
        cu_seqlens, chunk_size, float(scale), dgd,
    )
    final_state = None
    if output_final_state:
        final_state = LinearMemoryState(memory, mom if momentum is not None else None)
    return o, final_state
