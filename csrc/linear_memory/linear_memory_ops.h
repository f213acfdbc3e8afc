// Host entry points of the `linear_memory` ops (SPEC §2). Schemas: csrc/registration.cpp.
#pragma once

#include "common/memory_inputs.h"
#include "linear_memory/linear_memory_inputs.h"

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>

#include <cstdint>
#include <optional>
#include <tuple>

namespace nested_kernels {
namespace linear_memory {

// Sizes of one validated `linear_memory_recurrent` call.
struct RecurrentSizes {
  int64_t B;  // batch rows of q/k/v
  int64_t T;  // tokens per batch row
  int64_t H;  // heads
  int64_t K;  // key width (rows of M)
  int64_t V;  // value width (columns of M)
  int64_t N;  // sequences: B dense, cu_seqlens.size(0) - 1 varlen
};

// Checks every argument of a `linear_memory` forward op (`linear_memory_recurrent`,
// `linear_memory_chunked_fwd`: shapes, dtypes, q a `device_type` tensor and every other tensor on
// q's device, chunk_size ≥ 1, cu_seqlens) and raises c10::Error naming the argument after `op`,
// the message prefix ("linear_memory_recurrent: ").
// `check_cu_seqlens_values` also reads cu_seqlens (0 first, T last, non-decreasing); it needs
// cu_seqlens in host memory.
RecurrentSizes check_linear_memory_args(
    const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lr,
    const at::Tensor& retention, const std::optional<at::Tensor>& momentum,
    const std::optional<at::Tensor>& initial_memory, const std::optional<at::Tensor>& initial_momentum,
    const std::optional<at::Tensor>& cu_seqlens, int64_t chunk_size, c10::DeviceType device_type,
    bool check_cu_seqlens_values);

// The tensors a `linear_memory_recurrent` kernel reads and writes, shared by the CPU and CUDA
// entry points: inputs made contiguous (gates and momentum in the accumulation type, float64
// for float64 inputs else float32; cu_seqlens as int64), and fresh outputs: o [B, T, H, V] in
// v's dtype, the final states [N, H, K, V] starting as copies of the initial states (zeros when
// absent; the kernels update them in place), final_momentum an empty [0] tensor without momentum.
struct RecurrentTensors : MemoryInputs {           // q, k, v, gates and o (common/memory_inputs.h)
  at::Tensor cu_seqlens;                           // undefined when absent
  at::Tensor final_memory, final_momentum;
};

// The inputs' pointers and sizes for a kernel (linear_memory_inputs.h) from the prepared tensors;
// momentum and cu_seqlens are null where the tensors are undefined (absent).
template <typename scalar_t, typename acc_t>
void fill_linear_memory_inputs(LinearMemoryInputs<scalar_t, acc_t>& p, const MemoryInputs& t,
                               const at::Tensor& cu_seqlens, const RecurrentSizes& s, int64_t chunk_size,
                               double scale) {
  fill_memory_input_pointers(p, t);
  p.cu_seqlens = cu_seqlens.defined() ? cu_seqlens.const_data_ptr<int64_t>() : nullptr;
  p.B = s.B;
  p.T = s.T;
  p.H = s.H;
  p.K = s.K;
  p.V = s.V;
  p.chunk_size = chunk_size;
  p.scale = static_cast<acc_t>(scale);
}

RecurrentTensors prepare_linear_memory_recurrent(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lr,
    const at::Tensor& retention, const std::optional<at::Tensor>& momentum,
    const std::optional<at::Tensor>& initial_memory, const std::optional<at::Tensor>& initial_momentum,
    const std::optional<at::Tensor>& cu_seqlens, const RecurrentSizes& s);

// Token-by-token forward of SPEC §2 on the CPU. q, k: [B, T, H, K]; v: [B, T, H, V];
// lr, retention, momentum: [B, T, H]; initial states [N, H, K, V]; cu_seqlens int32/int64
// [N + 1] with B == 1. Returns (o [B, T, H, V] in v's dtype, final memory [N, H, K, V],
// final momentum [N, H, K, V] or an empty [0] tensor without momentum); states are float32,
// float64 for float64 inputs.
std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_memory_recurrent_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lr,
    const at::Tensor& retention, const std::optional<at::Tensor>& momentum,
    const std::optional<at::Tensor>& initial_memory, const std::optional<at::Tensor>& initial_momentum,
    const std::optional<at::Tensor>& cu_seqlens, int64_t chunk_size, double scale, bool dgd);

// The same on a CUDA device (csrc/linear_memory/cuda/, CUDA builds only). K <= 256.
// cu_seqlens values are not read back (no device sync): they must be valid.
std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_memory_recurrent_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lr,
    const at::Tensor& retention, const std::optional<at::Tensor>& momentum,
    const std::optional<at::Tensor>& initial_memory, const std::optional<at::Tensor>& initial_momentum,
    const std::optional<at::Tensor>& cu_seqlens, int64_t chunk_size, double scale, bool dgd);

// The tensors of a `linear_memory_chunked_fwd` call: those of the recurrence, and the
// chunk-start states [B, H, NC, K, V] (NC = chunk_slots(...), linear_memory_chunk.h; zeros where
// no chunk writes, chunk_momentum an empty [0] tensor without momentum).
struct ChunkedTensors : RecurrentTensors {
  at::Tensor chunk_memory, chunk_momentum;
  int64_t NC = 0;
};

ChunkedTensors prepare_linear_memory_chunked(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lr,
    const at::Tensor& retention, const std::optional<at::Tensor>& momentum,
    const std::optional<at::Tensor>& initial_memory, const std::optional<at::Tensor>& initial_momentum,
    const std::optional<at::Tensor>& cu_seqlens, int64_t chunk_size, const RecurrentSizes& s);

// Chunked forward of SPEC §2 (linear_memory_chunk.h) on the CPU: the same tiles
// and the same algorithm as the CUDA kernel, products as loops. Arguments as
// `linear_memory_recurrent_cpu`. Returns (o [B, T, H, V] in v's dtype, final memory, final
// momentum (empty [0] without momentum), chunk_memory, chunk_momentum): the state at the start
// of every chunk, [B, H, NC, K, V]; with cu_seqlens B = 1 and sequence n's chunks start at slot
// Σ_{m<n} ceil(T_m / C), NC = T / C + N. States are float32, float64 for float64 inputs.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_memory_chunked_fwd_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lr,
    const at::Tensor& retention, const std::optional<at::Tensor>& momentum,
    const std::optional<at::Tensor>& initial_memory, const std::optional<at::Tensor>& initial_momentum,
    const std::optional<at::Tensor>& cu_seqlens, int64_t chunk_size, double scale, bool dgd);

// The same on a CUDA device (csrc/linear_memory/cuda/, CUDA builds only): bf16/fp16 products on
// tensor cores (mma.sync, sm_80+), fp32 products as loops. q in float32, bfloat16 or float16,
// chunk_size ≤ 64, K ≤ 256. cu_seqlens values are not read back (no device sync): they must be valid.
std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_memory_chunked_fwd_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lr,
    const at::Tensor& retention, const std::optional<at::Tensor>& momentum,
    const std::optional<at::Tensor>& initial_memory, const std::optional<at::Tensor>& initial_momentum,
    const std::optional<at::Tensor>& cu_seqlens, int64_t chunk_size, double scale, bool dgd);

// The tensors of a `linear_memory_chunked_bwd` call: the forward's inputs (MemoryInputs; its o is
// dv), dO and the final states' adjoints (undefined when absent), the chunk-start states, and the
// outputs: dq, dk [NVT, B, T, H, K] and the gates' [NVT, B, T, H] as partial sums of every value
// tile (acc type; the host sums them), the initial states' adjoints [N, H, K, V].
struct ChunkedBwdTensors : MemoryInputs {
  at::Tensor cu_seqlens, d_o, d_final_memory, d_final_momentum, chunk_memory, chunk_momentum;
  at::Tensor dq, dk, dlr, dretention, dmomentum, d_initial_memory, d_initial_momentum;
  int64_t NC = 0;   // chunk slots
  int64_t NVT = 0;  // value tiles
};

// Checks every argument of `linear_memory_chunked_bwd` (those of the forward, and do, the final
// states' adjoints, the chunk-start states) and raises c10::Error naming the argument.
RecurrentSizes check_linear_memory_chunked_bwd_args(
    const char* op, const at::Tensor& d_o, const std::optional<at::Tensor>& d_final_memory,
    const std::optional<at::Tensor>& d_final_momentum, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& lr, const at::Tensor& retention, const std::optional<at::Tensor>& momentum,
    const at::Tensor& chunk_memory, const std::optional<at::Tensor>& chunk_momentum,
    const std::optional<at::Tensor>& cu_seqlens, int64_t chunk_size, c10::DeviceType device_type,
    bool check_cu_seqlens_values);

// Inputs made contiguous (in the accumulation type where the kernel reads it), outputs allocated.
// `granule`: the kernels' tile granule (chunk_tile_shape), which fixes the value tiles.
ChunkedBwdTensors prepare_linear_memory_chunked_bwd(
    const at::Tensor& d_o, const std::optional<at::Tensor>& d_final_memory,
    const std::optional<at::Tensor>& d_final_momentum, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& lr, const at::Tensor& retention, const std::optional<at::Tensor>& momentum,
    const at::Tensor& chunk_memory, const std::optional<at::Tensor>& chunk_momentum,
    const std::optional<at::Tensor>& cu_seqlens, int64_t chunk_size, const RecurrentSizes& s, int granule);

// The op's outputs from the kernel's: partial sums summed over the value tiles, dq and dk in q's
// dtype. (dq, dk, dv, dlr, dretention, dmomentum, d_initial_memory, d_initial_momentum); without
// momentum dmomentum and d_initial_momentum are empty [0] tensors.
using ChunkedBwdResult =
    std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>;
ChunkedBwdResult finish_linear_memory_chunked_bwd(const ChunkedBwdTensors& t);

// Chunked backward of SPEC §2 (linear_memory_chunk_bwd.h) on the CPU: the same tiles and algorithm
// as the CUDA kernel. do [B, T, H, V]; d_final_memory, d_final_momentum [N, H, K, V] (absent: zero);
// q .. momentum, cu_seqlens, chunk_size, scale, dgd those of the forward call and chunk_memory,
// chunk_momentum its chunk-start states. Gate gradients in the accumulation type.
ChunkedBwdResult linear_memory_chunked_bwd_cpu(
    const at::Tensor& d_o, const std::optional<at::Tensor>& d_final_memory,
    const std::optional<at::Tensor>& d_final_momentum, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& lr, const at::Tensor& retention, const std::optional<at::Tensor>& momentum,
    const at::Tensor& chunk_memory, const std::optional<at::Tensor>& chunk_momentum,
    const std::optional<at::Tensor>& cu_seqlens, int64_t chunk_size, double scale, bool dgd);

// The same on a CUDA device (csrc/linear_memory/cuda/, CUDA builds only), limits of the forward's.
ChunkedBwdResult linear_memory_chunked_bwd_cuda(
    const at::Tensor& d_o, const std::optional<at::Tensor>& d_final_memory,
    const std::optional<at::Tensor>& d_final_momentum, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& lr, const at::Tensor& retention, const std::optional<at::Tensor>& momentum,
    const at::Tensor& chunk_memory, const std::optional<at::Tensor>& chunk_momentum,
    const std::optional<at::Tensor>& cu_seqlens, int64_t chunk_size, double scale, bool dgd);

// Sizes of one validated `linear_memory_step` call.
struct StepSizes {
  int64_t N;  // sequences (batch rows of q/k/v)
  int64_t T;  // new tokens per sequence
  int64_t H;  // heads
  int64_t K;  // key width (rows of M)
  int64_t V;  // value width (columns of M)
};

// Checks every argument of `linear_memory_step` (shapes, dtypes, devices, states contiguous in
// the accumulation type, position int64 [N]) and raises c10::Error naming the argument.
// `check_position_values` also reads position (each in [0, chunk_size)); it needs host memory.
StepSizes check_linear_memory_step_args(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lr,
    const at::Tensor& retention, const std::optional<at::Tensor>& momentum, const at::Tensor& memory,
    const at::Tensor& chunk_memory, const std::optional<at::Tensor>& momentum_state, const at::Tensor& position,
    int64_t chunk_size, c10::DeviceType device_type, bool check_position_values);

// Decode step of SPEC §2 on the CPU: T new tokens of each of N sequences from the decode state
// (memory M_t, chunk_memory M^c, momentum_state S_t: [N, H, K, V] float32, float64 for float64
// inputs; position [N] int64), all updated in place. q, k: [N, T, H, K]; v: [N, T, H, V];
// gates [N, T, H]. Returns o [N, T, H, V] in v's dtype.
at::Tensor linear_memory_step_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lr,
    const at::Tensor& retention, const std::optional<at::Tensor>& momentum, at::Tensor& memory,
    at::Tensor& chunk_memory, const std::optional<at::Tensor>& momentum_state, at::Tensor& position,
    int64_t chunk_size, double scale, bool dgd);

// The same on a CUDA device (csrc/linear_memory/cuda/, CUDA builds only): one launch for all
// sequences and heads. position values are not read back (no device sync): they must be valid.
at::Tensor linear_memory_step_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lr,
    const at::Tensor& retention, const std::optional<at::Tensor>& momentum, at::Tensor& memory,
    at::Tensor& chunk_memory, const std::optional<at::Tensor>& momentum_state, at::Tensor& position,
    int64_t chunk_size, double scale, bool dgd);

}  // namespace linear_memory
}  // namespace nested_kernels
