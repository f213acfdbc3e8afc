// Host side of `linear_memory_chunked_fwd` and `_bwd` shared by its CPU and CUDA entry points: the kernel
// parameters from the prepared tensors (linear_memory_ops.h: prepare_linear_memory_chunked).
#pragma once

#include "linear_memory/linear_memory_chunk.h"
#include "linear_memory/linear_memory_chunk_bwd.h"
#include "linear_memory/linear_memory_ops.h"

#include <ATen/ATen.h>

#include <cerrno>
#include <cstdint>
#include <cstdlib>

namespace nested_kernels {
namespace linear_memory {

// Bytes of a chunk workspace its kernel keeps in the first level (CUDA: shared memory; the rest
// goes to global memory): NESTED_KERNELS_CHUNK_SMEM_BUDGET where set, at most `limit` (CUDA: the
// device's opt-in shared memory per block; CPU: INT64_MAX). Read on every call.
inline int64_t chunk_smem_budget(const char* op, int64_t limit) {
  const char* env = std::getenv("NESTED_KERNELS_CHUNK_SMEM_BUDGET");
  if (env == nullptr || *env == '\0') {
    return limit;
  }
  char* end = nullptr;
  errno = 0;
  const long long budget = std::strtoll(env, &end, 10);
  TORCH_CHECK(*end == '\0' && errno == 0 && budget >= 0, op,
              "NESTED_KERNELS_CHUNK_SMEM_BUDGET must be a number of bytes >= 0, got '", env, "'");
  return budget < limit ? static_cast<int64_t>(budget) : limit;
}

// The pointer to x's data, null where x is undefined (an absent optional tensor).
template <typename T>
T* data_or_null(const at::Tensor& x) {
  return x.defined() ? x.mutable_data_ptr<T>() : nullptr;
}

// Parameters of one forward call.
template <typename scalar_t, typename acc_t>
ChunkedParams<scalar_t, acc_t> chunked_params(const ChunkedTensors& t, const RecurrentSizes& s, int64_t chunk_size,
                                              double scale) {
  const bool has_momentum = t.momentum.defined();
  ChunkedParams<scalar_t, acc_t> p;
  fill_linear_memory_inputs(p, t, t.cu_seqlens, s, chunk_size, scale);
  p.NC = t.NC;
  p.o = t.o.mutable_data_ptr<scalar_t>();
  p.memory = t.final_memory.mutable_data_ptr<acc_t>();
  p.mom_state = has_momentum ? t.final_momentum.mutable_data_ptr<acc_t>() : nullptr;
  p.chunk_memory = t.chunk_memory.mutable_data_ptr<acc_t>();
  p.chunk_momentum = has_momentum ? t.chunk_momentum.mutable_data_ptr<acc_t>() : nullptr;
  return p;
}

// Parameters of one backward call.
template <typename scalar_t, typename acc_t>
ChunkedBwdParams<scalar_t, acc_t> chunked_bwd_params(const ChunkedBwdTensors& t, const RecurrentSizes& s,
                                                     int64_t chunk_size, double scale) {
  const bool has_momentum = t.momentum.defined();
  ChunkedBwdParams<scalar_t, acc_t> p;
  fill_linear_memory_inputs(p, t, t.cu_seqlens, s, chunk_size, scale);
  p.NC = t.NC;
  p.d_o = t.d_o.const_data_ptr<scalar_t>();
  p.d_final_memory = data_or_null<acc_t>(t.d_final_memory);
  p.d_final_momentum = data_or_null<acc_t>(t.d_final_momentum);
  p.chunk_memory = t.chunk_memory.const_data_ptr<acc_t>();
  p.chunk_momentum = data_or_null<acc_t>(t.chunk_momentum);
  p.dq = t.dq.mutable_data_ptr<acc_t>();
  p.dk = t.dk.mutable_data_ptr<acc_t>();
  p.dv = t.o.mutable_data_ptr<scalar_t>();
  p.dlr = t.dlr.mutable_data_ptr<acc_t>();
  p.dretention = t.dretention.mutable_data_ptr<acc_t>();
  p.dmomentum = has_momentum ? t.dmomentum.mutable_data_ptr<acc_t>() : nullptr;
  p.d_initial_memory = t.d_initial_memory.mutable_data_ptr<acc_t>();
  p.d_initial_momentum = has_momentum ? t.d_initial_momentum.mutable_data_ptr<acc_t>() : nullptr;
  return p;
}

}  // namespace linear_memory
}  // namespace nested_kernels
