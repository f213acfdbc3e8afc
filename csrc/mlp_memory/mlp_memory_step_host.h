// Host side of `mlp_memory_step` shared by the CPU and CUDA entry points: the tensors a kernel
// reads (made contiguous, gates in the accumulation type) and its StepParams.
#pragma once

#include <ATen/ATen.h>

#include <optional>
#include <string_view>

#include "common/flag_dispatch.h"
#include "common/memory_inputs.h"
#include "mlp_memory/mlp_memory_ops.h"
#include "mlp_memory/mlp_memory_step.h"

namespace nested_kernels {
namespace mlp_memory {

// The inputs of one `mlp_memory_step` call (common/memory_inputs.h).
inline MemoryInputs prepare_mlp_memory_step(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                           const at::Tensor& lr, const at::Tensor& retention,
                                           const std::optional<at::Tensor>& momentum, const StepSizes& s) {
  return prepare_memory_inputs(q, k, v, lr, retention, momentum, s.N, s.T, s.H, s.V);
}

template <typename scalar_t, typename acc_t>
StepParams<scalar_t, acc_t> mlp_memory_step_params(const MemoryInputs& t, at::Tensor& w1, at::Tensor& w2,
                                                   at::Tensor& chunk_w1, at::Tensor& chunk_w2,
                                                   const std::optional<at::Tensor>& s1,
                                                   const std::optional<at::Tensor>& s2, const at::Tensor& position,
                                                   const StepSizes& s, int64_t chunk_size,
                                                   std::string_view activation, bool residual, bool self_target,
                                                   std::string_view read) {
  StepParams<scalar_t, acc_t> p;
  fill_memory_input_pointers(p, t);
  p.o = t.o.mutable_data_ptr<scalar_t>();
  p.w1 = w1.mutable_data_ptr<acc_t>();
  p.w2 = w2.mutable_data_ptr<acc_t>();
  p.chunk_w1 = chunk_w1.mutable_data_ptr<acc_t>();
  p.chunk_w2 = chunk_w2.mutable_data_ptr<acc_t>();
  p.s1 = s1.has_value() ? s1->mutable_data_ptr<acc_t>() : nullptr;
  p.s2 = s2.has_value() ? s2->mutable_data_ptr<acc_t>() : nullptr;
  p.position = position.const_data_ptr<int64_t>();
  p.T = s.T;
  p.H = s.H;
  p.K = s.K;
  p.Dh = s.Dh;
  p.V = s.V;
  p.chunk_size = chunk_size;
  p.gelu = activation == "gelu";
  p.residual = residual;
  p.self_target = self_target;
  p.read_current = read == "current";
  return p;
}

}  // namespace mlp_memory
}  // namespace nested_kernels
