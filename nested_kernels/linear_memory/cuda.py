"""The chunked forward `nested_kernels::linear_memory_chunked_fwd` (csrc/linear_memory/, SPEC §2
with dgd=False): its fake (meta) kernel for torch.compile and an autograd kernel that refuses
training. Registered with TORCH_LIBRARY in C++; its CPU kernel runs the chunk algorithm of the
CUDA kernel to come."""
import torch

from .._extension import has_cpp_op

OP_NAME = "linear_memory_chunked_fwd"


def chunk_slots(T, N: int, chunk_size: int, varlen: bool):
    """Chunk slots of the chunk-start states (csrc/linear_memory/linear_memory_chunk.h
    `chunk_slots`): every chunk of a dense row; with cu_seqlens the bound T // C + N of
    Σ_n ceil(T_n / C), known without reading the offsets."""
    return T // chunk_size + N if varlen else (T + chunk_size - 1) // chunk_size


if has_cpp_op(OP_NAME):

    @torch.library.register_fake(f"nested_kernels::{OP_NAME}")
    def _linear_memory_chunked_fwd_fake(q, k, v, lr, retention, momentum, initial_memory, initial_momentum,
                                        cu_seqlens, chunk_size, scale):
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
