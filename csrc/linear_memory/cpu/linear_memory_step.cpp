// Decode step of `linear_memory` (SPEC §2) on the CPU: one task per (sequence, head), its
// columns one after another through the shared column loop (linear_memory_step.h).
#include "common/flag_dispatch.h"
#include "linear_memory/linear_memory_ops.h"
#include "linear_memory/linear_memory_step.h"
#include "linear_memory/linear_memory_step_host.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <type_traits>

namespace nested_kernels {
namespace linear_memory {
namespace {

template <typename scalar_t, typename acc_t, bool HAS_MOMENTUM, bool DGD>
void step_fwd_cpu(const StepParams<scalar_t, acc_t>& p, int64_t NH) {
  at::parallel_for(0, NH, 1, [&](int64_t begin, int64_t end) {
    for (int64_t nh = begin; nh < end; ++nh) {
      for (int64_t j = 0; j < p.V; ++j) {
        step_column<HAS_MOMENTUM, DGD>(p, nh, j);
      }
    }
  });
}

}  // namespace

at::Tensor linear_memory_step_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lr,
    const at::Tensor& retention, const std::optional<at::Tensor>& momentum, at::Tensor& memory,
    at::Tensor& chunk_memory, const std::optional<at::Tensor>& momentum_state, at::Tensor& position,
    int64_t chunk_size, double scale, bool dgd) {
  const StepSizes s = check_linear_memory_step_args(q, k, v, lr, retention, momentum, memory, chunk_memory,
                                                    momentum_state, position, chunk_size, at::kCPU,
                                                    /*check_position_values=*/true);
  const MemoryInputs t = prepare_linear_memory_step(q, k, v, lr, retention, momentum, s);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "linear_memory_step_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const auto p = linear_memory_step_params<scalar_t, acc_t>(t, memory, chunk_memory, momentum_state, position, s,
                                                              chunk_size, scale);
    dispatch_momentum_dgd(momentum.has_value(), dgd, [&]<bool HAS_MOMENTUM, bool DGD>() {
      step_fwd_cpu<scalar_t, acc_t, HAS_MOMENTUM, DGD>(p, s.N * s.H);
    });
  });
  position.add_(s.T).remainder_(chunk_size);  // the kernel read the positions before the call
  return t.o;
}

}  // namespace linear_memory
}  // namespace nested_kernels
