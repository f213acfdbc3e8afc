// Host side shared by the compiled memory ops (the recurrence and the decode steps, CPU and CUDA
// entry points): the tensors a kernel reads, made contiguous with the gates in the accumulation
// type, and its output.
#pragma once

#include "common/memory_input_pointers.h"

#include <ATen/ATen.h>

#include <cstdint>
#include <optional>

namespace nested_kernels {

// Inputs made contiguous, gates in the accumulation type, and the fresh output o [N, T, H, V].
struct MemoryInputs {
  at::Tensor q, k, v, lr, retention, momentum;  // momentum undefined when absent
  at::Tensor o;
};

// Accumulation type: float64 for float64 inputs, else float32 (SPEC: states in fp32).
inline MemoryInputs prepare_memory_inputs(const at::Tensor& q, const at::Tensor& k, const at::Tensor& v,
                                       const at::Tensor& lr, const at::Tensor& retention,
                                       const std::optional<at::Tensor>& momentum, int64_t N, int64_t T,
                                       int64_t H, int64_t V) {
  const at::ScalarType acc_type = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  MemoryInputs t;
  t.q = q.contiguous();
  t.k = k.contiguous();
  t.v = v.contiguous();
  t.lr = lr.to(acc_type).contiguous();
  t.retention = retention.to(acc_type).contiguous();
  if (momentum.has_value()) {
    t.momentum = momentum->to(acc_type).contiguous();
  }
  t.o = at::empty({N, T, H, V}, v.options().memory_format(at::MemoryFormat::Contiguous));
  return t;
}

// The kernel's input pointers (memory_input_pointers.h) from the prepared tensors; momentum null
// where the tensor is undefined (absent).
template <typename scalar_t, typename acc_t>
void fill_memory_input_pointers(MemoryInputPointers<scalar_t, acc_t>& p, const MemoryInputs& t) {
  p.q = t.q.const_data_ptr<scalar_t>();
  p.k = t.k.const_data_ptr<scalar_t>();
  p.v = t.v.const_data_ptr<scalar_t>();
  p.lr = t.lr.const_data_ptr<acc_t>();
  p.retention = t.retention.const_data_ptr<acc_t>();
  p.momentum = t.momentum.defined() ? t.momentum.const_data_ptr<acc_t>() : nullptr;
}

}  // namespace nested_kernels
