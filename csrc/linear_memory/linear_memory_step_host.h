// Host side of `linear_memory_step` shared by the CPU and CUDA entry points: the tensors a kernel
// reads (made contiguous, gates in the accumulation type) and its StepParams.
#pragma once

#include <ATen/ATen.h>

#include <optional>

#include "common/memory_inputs.h"
#include "linear_memory/linear_memory_ops.h"
#include "linear_memory/linear_memory_step.h"

namespace nested_kernels {
namespace linear_memory {

// The inputs of one `linear_memory_step` call (common/memory_inputs.h).
inline MemoryInputs prepare_linear_memory_step(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                              const at::Tensor& lr, const at::Tensor& retention,
                                              const std::optional<at::Tensor>& momentum, const StepSizes& s) {
  return prepare_memory_inputs(q, k, v, lr, retention, momentum, s.N, s.T, s.H, s.V);
}

template <typename scalar_t, typename acc_t>
StepParams<scalar_t, acc_t> linear_memory_step_params(const MemoryInputs& t, at::Tensor& memory,
                                                      at::Tensor& chunk_memory,
                                                      const std::optional<at::Tensor>& momentum_state,
                                                      const at::Tensor& position, const StepSizes& s,
                                                      int64_t chunk_size, double scale) {
  StepParams<scalar_t, acc_t> p;
  fill_memory_input_pointers(p, t);
  p.o = t.o.mutable_data_ptr<scalar_t>();
  p.memory = memory.mutable_data_ptr<acc_t>();
  p.chunk_memory = chunk_memory.mutable_data_ptr<acc_t>();
  p.mom_state = momentum_state.has_value() ? momentum_state->mutable_data_ptr<acc_t>() : nullptr;
  p.position = position.const_data_ptr<int64_t>();
  p.T = s.T;
  p.H = s.H;
  p.K = s.K;
  p.V = s.V;
  p.chunk_size = chunk_size;
  p.scale = static_cast<acc_t>(scale);
  return p;
}

}  // namespace linear_memory
}  // namespace nested_kernels
