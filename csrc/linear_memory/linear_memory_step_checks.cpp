// Argument checks of `linear_memory_step`, shared by the CPU and CUDA entry points.
#include "common/checks.h"
#include "linear_memory/linear_memory_ops.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

namespace nested_kernels {
namespace linear_memory {
namespace {

using namespace checks;

constexpr const char* kOp = "linear_memory_step: ";

void check_gate(const at::Tensor& t, const char* name, const StepSizes& s, const c10::Device& device) {
  check_device(kOp, t, name, device);
  check_float(kOp, t, name);
  check_shape(kOp, t, name, {s.N, s.T, s.H}, "[N, T, H]");
}

// A state the kernel updates in place: [N, H, K, V], contiguous, in the accumulation type.
void check_state(const at::Tensor& t, const char* name, const StepSizes& s, const c10::Device& device,
                 at::ScalarType acc_type) {
  check_inplace_state(kOp, t, name, device, {s.N, s.H, s.K, s.V}, "[N, H, K, V]", acc_type);
}

}  // namespace

StepSizes check_linear_memory_step_args(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lr,
    const at::Tensor& retention, const std::optional<at::Tensor>& momentum, const at::Tensor& memory,
    const at::Tensor& chunk_memory, const std::optional<at::Tensor>& momentum_state, const at::Tensor& position,
    int64_t chunk_size, c10::DeviceType device_type, bool check_position_values) {
  check_device_type(kOp, q, device_type);
  const c10::Device device = q.device();
  TORCH_CHECK(q.dim() == 4, kOp, "q must be 4-D [N, T, H, K], got shape ", q.sizes());
  check_float(kOp, q, "q");
  StepSizes s{q.size(0), q.size(1), q.size(2), q.size(3), 0};
  check_device(kOp, k, "k", device);
  check_shape(kOp, k, "k", q.sizes(), "[N, T, H, K] (the shape of q)");
  check_dtype_of_q(kOp, k, "k", q);
  check_device(kOp, v, "v", device);
  TORCH_CHECK(v.dim() == 4, kOp, "v must be 4-D [N, T, H, V], got shape ", v.sizes());
  s.V = v.size(3);
  check_shape(kOp, v, "v", {s.N, s.T, s.H, s.V}, "[N, T, H, V]");
  check_dtype_of_q(kOp, v, "v", q);
  TORCH_CHECK(chunk_size >= 1, kOp, "chunk_size must be >= 1, got ", chunk_size);

  check_gate(lr, "lr", s, device);
  check_gate(retention, "retention", s, device);
  if (momentum.has_value()) {
    check_gate(*momentum, "momentum", s, device);
  }
  const at::ScalarType acc_type = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  check_state(memory, "memory", s, device, acc_type);
  check_state(chunk_memory, "chunk_memory", s, device, acc_type);
  TORCH_CHECK(momentum.has_value() == momentum_state.has_value(), kOp, "momentum_state must be given exactly when ",
              "momentum is, got momentum ", momentum.has_value() ? "given" : "None", " and momentum_state ",
              momentum_state.has_value() ? "given" : "None");
  if (momentum_state.has_value()) {
    check_state(*momentum_state, "momentum_state", s, device, acc_type);
  }

  check_position(kOp, position, s.N, device, chunk_size, check_position_values);
  return s;
}

}  // namespace linear_memory
}  // namespace nested_kernels
