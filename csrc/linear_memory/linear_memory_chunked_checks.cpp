// Host-side preparation of `linear_memory_chunked_fwd`, shared by its CPU and CUDA entry points
// (the argument checks are those of every linear_memory forward op: linear_memory_recurrent_checks.cpp).
#include "linear_memory/linear_memory_chunk.h"
#include "linear_memory/linear_memory_ops.h"

#include <ATen/ATen.h>

namespace nested_kernels {
namespace linear_memory {

ChunkedTensors prepare_linear_memory_chunked(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lr,
    const at::Tensor& retention, const std::optional<at::Tensor>& momentum,
    const std::optional<at::Tensor>& initial_memory, const std::optional<at::Tensor>& initial_momentum,
    const std::optional<at::Tensor>& cu_seqlens, int64_t chunk_size, const RecurrentSizes& s) {
  ChunkedTensors t;
  static_cast<RecurrentTensors&>(t) =
      prepare_linear_memory_recurrent(q, k, v, lr, retention, momentum, initial_memory, initial_momentum,
                                      cu_seqlens, s);
  const bool varlen = cu_seqlens.has_value();
  t.NC = chunk_slots(s.T, s.N, chunk_size, varlen);
  const at::TensorOptions opts = t.final_memory.options();
  // Dense calls write every slot; with cu_seqlens the slots past the last chunk stay zero.
  const auto slots = [&] {
    return varlen ? at::zeros({s.B, s.H, t.NC, s.K, s.V}, opts) : at::empty({s.B, s.H, t.NC, s.K, s.V}, opts);
  };
  t.chunk_memory = slots();
  t.chunk_momentum = momentum.has_value() ? slots() : at::empty({0}, opts);
  return t;
}

}  // namespace linear_memory
}  // namespace nested_kernels
