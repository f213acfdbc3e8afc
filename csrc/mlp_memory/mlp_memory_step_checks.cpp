// Argument checks of `mlp_memory_step`, shared by the CPU and CUDA entry points.
#include "common/checks.h"
#include "mlp_memory/mlp_memory_ops.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

namespace nested_kernels {
namespace mlp_memory {
namespace {

using namespace checks;

constexpr const char* kOp = "mlp_memory_step: ";

void check_gate(const at::Tensor& t, const char* name, const StepSizes& s, const c10::Device& device) {
  check_device(kOp, t, name, device);
  check_float(kOp, t, name);
  check_shape(kOp, t, name, {s.N, s.T, s.H}, "[N, T, H]");
}

}  // namespace

StepSizes check_mlp_memory_step_args(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lr,
    const at::Tensor& retention, const std::optional<at::Tensor>& momentum, const at::Tensor& w1,
    const at::Tensor& w2, const at::Tensor& chunk_w1, const at::Tensor& chunk_w2,
    const std::optional<at::Tensor>& s1, const std::optional<at::Tensor>& s2, const at::Tensor& position,
    int64_t chunk_size, std::string_view activation, bool residual, bool self_target, std::string_view read,
    c10::DeviceType device_type, bool check_position_values) {
  check_device_type(kOp, q, device_type);
  const c10::Device device = q.device();
  TORCH_CHECK(q.dim() == 4, kOp, "q must be 4-D [N, T, H, K], got shape ", q.sizes());
  check_float(kOp, q, "q");
  StepSizes s{q.size(0), q.size(1), q.size(2), q.size(3), 0, 0};
  check_device(kOp, k, "k", device);
  check_shape(kOp, k, "k", q.sizes(), "[N, T, H, K] (the shape of q)");
  check_dtype_of_q(kOp, k, "k", q);
  check_device(kOp, v, "v", device);
  TORCH_CHECK(v.dim() == 4, kOp, "v must be 4-D [N, T, H, V], got shape ", v.sizes());
  s.V = v.size(3);
  check_shape(kOp, v, "v", {s.N, s.T, s.H, s.V}, "[N, T, H, V]");
  check_dtype_of_q(kOp, v, "v", q);
  TORCH_CHECK(chunk_size >= 1, kOp, "chunk_size must be >= 1, got ", chunk_size);
  TORCH_CHECK(activation == "silu" || activation == "gelu", kOp, "activation must be \"silu\" or \"gelu\", got \"",
              activation, "\"");
  TORCH_CHECK(read == "current" || read == "chunk_start", kOp, "read must be \"current\" or \"chunk_start\", got \"",
              read, "\"");
  TORCH_CHECK(!(residual || self_target) || s.K == s.V, kOp, "residual and self_target need K == V, got K = ", s.K,
              ", V = ", s.V);

  check_gate(lr, "lr", s, device);
  check_gate(retention, "retention", s, device);
  if (momentum.has_value()) {
    check_gate(*momentum, "momentum", s, device);
  }
  const at::ScalarType acc_type = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  TORCH_CHECK(w1.dim() == 4, kOp, "w1 must be 4-D [N, H, K, Dh], got shape ", w1.sizes());
  s.Dh = w1.size(3);
  check_inplace_state(kOp, w1, "w1", device, {s.N, s.H, s.K, s.Dh}, "[N, H, K, Dh]", acc_type);
  check_inplace_state(kOp, w2, "w2", device, {s.N, s.H, s.Dh, s.V}, "[N, H, Dh, V]", acc_type);
  check_inplace_state(kOp, chunk_w1, "chunk_w1", device, {s.N, s.H, s.K, s.Dh}, "[N, H, K, Dh]", acc_type);
  check_inplace_state(kOp, chunk_w2, "chunk_w2", device, {s.N, s.H, s.Dh, s.V}, "[N, H, Dh, V]", acc_type);
  TORCH_CHECK(momentum.has_value() == s1.has_value() && momentum.has_value() == s2.has_value(), kOp,
              "s1 and s2 must be given exactly when momentum is, got momentum ", momentum.has_value() ? "given" : "None",
              ", s1 ", s1.has_value() ? "given" : "None", ", s2 ", s2.has_value() ? "given" : "None");
  if (momentum.has_value()) {
    check_inplace_state(kOp, *s1, "s1", device, {s.N, s.H, s.K, s.Dh}, "[N, H, K, Dh]", acc_type);
    check_inplace_state(kOp, *s2, "s2", device, {s.N, s.H, s.Dh, s.V}, "[N, H, Dh, V]", acc_type);
  }
  check_position(kOp, position, s.N, device, chunk_size, check_position_values);
  return s;
}

}  // namespace mlp_memory
}  // namespace nested_kernels
