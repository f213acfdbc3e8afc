"""The `cuda` backend of `linear_memory`: the chunked forward of `csrc/linear_memory/`
(`nested_kernels::linear_memory_chunked_fwd`; tensor cores for bf16/fp16), forward only so far.
Registered with TORCH_LIBRARY in C++; this file adds its fake (meta) kernel for torch.compile and
an autograd kernel that refuses training. The same chunk algorithm runs on the CPU (the op's CPU
kernel), which is how it is tested without a GPU; the CUDA kernel is compiled in CI but has not
run on a GPU yet, so `backend="auto"` does not pick it."""
from typing import Optional

import torch

from .._extension import build_info, has_cpp_op
from ..common.inputs import as_gate
from .state import LinearMemoryState

OP_NAME = "linear_memory_chunked_fwd"
MAX_CHUNK = 64
MAX_K = 256
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def unsupported_reason(call: dict) -> Optional[str]:
    if not has_cpp_op(OP_NAME):
        return "the compiled extension nested_kernels._C is not built (see `nested-kernels info`)"
    if not build_info().get("cuda"):
        return "nested_kernels._C was built without CUDA (NESTED_KERNELS_BUILD=cpu, or no nvcc at build time)"
    if call["device"].type != "cuda":
        return f"it runs on CUDA devices only, the inputs are on {call['device']}"
    if call["requires_grad"]:
        return "it is forward-only so far: gradients need the torch or triton backend"
    if call["dtype"] not in DTYPES:
        return f"it takes fp32/bf16/fp16 inputs, got {call['dtype']}"
    if call["chunk_size"] > MAX_CHUNK:
        return f"chunk_size must be <= {MAX_CHUNK}, got {call['chunk_size']}"
    if call["K"] > MAX_K:
        return f"K up to {MAX_K}, got K={call['K']}"
    return None


def auto_reason(call: dict) -> Optional[str]:
    """`backend="auto"` leaves the kernel out until it has been tested on a GPU."""
    return "compiled but never run on a GPU yet; name backend='cuda' to use it"


def chunk_slots(T, N: int, chunk_size: int, varlen: bool):
    """Chunk slots of the chunk-start states (csrc/linear_memory/linear_memory_chunk.h
    `chunk_slots`): every chunk of a dense row; with cu_seqlens the bound T // C + N of
    Σ_n ceil(T_n / C), known without reading the offsets."""
    return T // chunk_size + N if varlen else (T + chunk_size - 1) // chunk_size


if has_cpp_op(OP_NAME):

    @torch.library.register_fake(f"nested_kernels::{OP_NAME}")
    def _linear_memory_chunked_fwd_fake(q, k, v, lr, retention, momentum, initial_memory, initial_momentum,
                                        cu_seqlens, chunk_size, scale, dgd):
        B, T, H, K = q.shape
        V = v.shape[-1]
        N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
        NC = chunk_slots(T, N, chunk_size, cu_seqlens is not None)
        state_dtype = torch.float64 if v.dtype == torch.float64 else torch.float32
        memory = q.new_empty(N, H, K, V, dtype=state_dtype)
        chunks = q.new_empty(B, H, NC, K, V, dtype=state_dtype)
        if momentum is None:
            return v.new_empty(B, T, H, V), memory, memory.new_empty(0), chunks, memory.new_empty(0)
        return v.new_empty(B, T, H, V), memory, memory.new_empty(N, H, K, V), chunks, chunks.new_empty(chunks.shape)

    def _refuse_backward(ctx, *grads):
        raise NotImplementedError(
            f"linear_memory: {OP_NAME} is forward-only; use backend='torch' or 'triton' for training"
        )

    torch.library.register_autograd(f"nested_kernels::{OP_NAME}", _refuse_backward)


def linear_memory_cuda(
    q, k, v, lr, retention, momentum=None, *, dgd=False, chunk_size=64, scale=1.0,
    initial_state: Optional[LinearMemoryState] = None, output_final_state=False, cu_seqlens=None,
):
    o, memory, mom, _, _ = getattr(torch.ops.nested_kernels, OP_NAME)(
        q, k, v, as_gate(lr, q, torch.float32), as_gate(retention, q, torch.float32),
        None if momentum is None else as_gate(momentum, q, torch.float32),
        None if initial_state is None else initial_state.memory,
        None if initial_state is None else initial_state.momentum,
        cu_seqlens, chunk_size, float(scale), dgd,
    )
    final_state = None
    if output_final_state:
        final_state = LinearMemoryState(memory, mom if momentum is not None else None)
    return o, final_state
