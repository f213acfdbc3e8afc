"""The `cuda` backend of `linear_memory`: the chunked forward and backward of `csrc/linear_memory/`
(`nested_kernels::linear_memory_chunked_fwd` and `_bwd`; tensor cores for bf16/fp16), chunk sizes up
to 64 forward and backward: a workspace larger than the GPU's shared memory per block continues in
global memory (slower, untimed; csrc/README.md "Workspace", `NESTED_KERNELS_CHUNK_SMEM_BUDGET`).
Registered with TORCH_LIBRARY in C++; this file adds their fake (meta) kernels for torch.compile and
the forward op's autograd (the backward op from the forward's inputs and chunk-start states). The
same chunk algorithm runs on the CPU (the ops' CPU kernels), which is how it is tested without a
GPU; the CUDA kernels are compiled in CI but have not run on a GPU yet, so `backend="auto"` does
not pick them."""
from typing import Optional

import torch

from .._extension import build_info, has_cpp_op
from ..common.inputs import as_gate
from .state import LinearMemoryState

OP_NAME = "linear_memory_chunked_fwd"
BWD_OP_NAME = "linear_memory_chunked_bwd"
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
    if call["requires_grad"] and not has_cpp_op(BWD_OP_NAME):
        return "the compiled extension has no backward op: gradients need the torch or triton backend"
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


if has_cpp_op(BWD_OP_NAME):

    @torch.library.register_fake(f"nested_kernels::{BWD_OP_NAME}")
    def _linear_memory_chunked_bwd_fake(d_o, d_final_memory, d_final_momentum, q, k, v, lr, retention, momentum,
                                        chunk_memory, chunk_momentum, cu_seqlens, chunk_size, scale, dgd):
        B, T, H, K = q.shape
        V = v.shape[-1]
        N = B if cu_seqlens is None else cu_seqlens.shape[0] - 1
        state_dtype = chunk_memory.dtype
        gate = q.new_empty(B, T, H, dtype=state_dtype)
        state = q.new_empty(N, H, K, V, dtype=state_dtype)
        has_mom = momentum is not None
        mom_gate = gate.new_empty(gate.shape if has_mom else (0,))
        mom_state = state.new_empty(state.shape if has_mom else (0,))
        return (q.new_empty(q.shape), q.new_empty(q.shape), v.new_empty(v.shape), gate, gate.new_empty(gate.shape),
                mom_gate, state, mom_state)

    def _setup_context(ctx, inputs, output):
        q, k, v, lr, retention, momentum, initial_memory, initial_momentum, cu_seqlens, chunk_size, scale, dgd = inputs
        _, _, _, chunk_memory, chunk_momentum = output
        ctx.save_for_backward(q, k, v, lr, retention, momentum, chunk_memory,
                              chunk_momentum if momentum is not None else None, cu_seqlens)
        ctx.chunk_size, ctx.scale, ctx.dgd = chunk_size, scale, dgd
        ctx.has_initial = (initial_memory is not None, initial_momentum is not None)
        ctx.mark_non_differentiable(chunk_memory, chunk_momentum)

    def _backward(ctx, d_o, d_final_memory, d_final_momentum, _d_chunk_memory, _d_chunk_momentum):
        q, k, v, lr, retention, momentum, chunk_memory, chunk_momentum, cu_seqlens = ctx.saved_tensors
        if d_o is None:
            d_o = torch.zeros_like(v)
        dq, dk, dv, dlr, dret, dmom, dh0, ds0 = getattr(torch.ops.nested_kernels, BWD_OP_NAME)(
            d_o, d_final_memory, d_final_momentum if momentum is not None else None, q, k, v, lr, retention,
            momentum, chunk_memory, chunk_momentum, cu_seqlens, ctx.chunk_size, ctx.scale, ctx.dgd,
        )
        has_h0, has_s0 = ctx.has_initial
        return (dq, dk, dv, dlr.to(lr.dtype), dret.to(retention.dtype),
                None if momentum is None else dmom.to(momentum.dtype),
                dh0 if has_h0 else None, ds0 if has_s0 else None, None, None, None, None)

    torch.library.register_autograd(f"nested_kernels::{OP_NAME}", _backward, setup_context=_setup_context)


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
