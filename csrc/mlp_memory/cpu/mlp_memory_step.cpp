// Decode step of `mlp_memory` (SPEC §3) on the CPU: one task per (sequence, head), its phases
// run serially through the shared token loop (mlp_memory_step.h).
#include "mlp_memory/mlp_memory_ops.h"
#include "mlp_memory/mlp_memory_step.h"
#include "mlp_memory/mlp_memory_step_host.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <type_traits>
#include <vector>

namespace nested_kernels {
namespace mlp_memory {
namespace {

// A phase as a plain loop; no barriers needed within one thread.
struct SerialPar {
  template <typename F>
  void loop(int64_t n, const F& f) const {
    for (int64_t i = 0; i < n; ++i) f(i);
  }
  void sync() const {}
};

template <bool HAS_MOMENTUM, bool DGD, typename scalar_t, typename acc_t>
void step_fwd_cpu(const StepParams<scalar_t, acc_t>& p, int64_t NH) {
  at::parallel_for(0, NH, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> scratch(StepScratch<acc_t>::size(p.Dh, p.V));
    for (int64_t nh = begin; nh < end; ++nh) {
      step_head<HAS_MOMENTUM, DGD>(p, nh, StepScratch<acc_t>(scratch.data(), p.Dh), SerialPar{});
    }
  });
}

}  // namespace

at::Tensor mlp_memory_step_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lr,
    const at::Tensor& retention, const std::optional<at::Tensor>& momentum, at::Tensor& w1, at::Tensor& w2,
    at::Tensor& chunk_w1, at::Tensor& chunk_w2, const std::optional<at::Tensor>& s1,
    const std::optional<at::Tensor>& s2, at::Tensor& position, int64_t chunk_size, std::string_view activation,
    bool residual, bool dgd, bool self_target, std::string_view read) {
  const StepSizes s = check_mlp_memory_step_args(q, k, v, lr, retention, momentum, w1, w2, chunk_w1, chunk_w2, s1,
                                                 s2, position, chunk_size, activation, residual, self_target, read,
                                                 at::kCPU, /*check_position_values=*/true);
  const MemoryInputs t = prepare_mlp_memory_step(q, k, v, lr, retention, momentum, s);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "mlp_memory_step_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const auto p = mlp_memory_step_params<scalar_t, acc_t>(t, w1, w2, chunk_w1, chunk_w2, s1, s2, position, s,
                                                           chunk_size, activation, residual, self_target, read);
    dispatch_momentum_dgd(momentum.has_value(), dgd, [&]<bool HAS_MOMENTUM, bool DGD>() {
      step_fwd_cpu<HAS_MOMENTUM, DGD>(p, s.N * s.H);
    });
  });
  position.add_(s.T).remainder_(chunk_size);  // the kernel read the positions before the call
  return t.o;
}

}  // namespace mlp_memory
}  // namespace nested_kernels
