// Argument checks of the `linear_memory` forward ops, shared by their CPU and CUDA entry points.
#include "common/checks.h"
#include "linear_memory/linear_memory_ops.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <vector>

namespace nested_kernels {
namespace linear_memory {
namespace {

using namespace checks;

void check_gate(const char* op, const at::Tensor& t, const char* name, const RecurrentSizes& s,
                const c10::Device& device) {
  check_device(op, t, name, device);
  check_float(op, t, name);
  check_shape(op, t, name, {s.B, s.T, s.H}, "[B, T, H]");
}

void check_state(const char* op, const at::Tensor& t, const char* name, const RecurrentSizes& s,
                 const c10::Device& device) {
  check_device(op, t, name, device);
  check_float(op, t, name);
  check_shape(op, t, name, {s.N, s.H, s.K, s.V}, "[N, H, K, V]");
}

}  // namespace

RecurrentSizes check_linear_memory_args(
    const char* op, const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lr,
    const at::Tensor& retention, const std::optional<at::Tensor>& momentum,
    const std::optional<at::Tensor>& initial_memory, const std::optional<at::Tensor>& initial_momentum,
    const std::optional<at::Tensor>& cu_seqlens, int64_t chunk_size, c10::DeviceType device_type,
    bool check_cu_seqlens_values) {
  check_device_type(op, q, device_type);
  const c10::Device device = q.device();
  check_device(op, k, "k", device);
  check_device(op, v, "v", device);
  TORCH_CHECK(q.dim() == 4, op, "q must be 4-D [B, T, H, K], got shape ", q.sizes());
  check_float(op, q, "q");
  RecurrentSizes s{q.size(0), q.size(1), q.size(2), q.size(3), 0, q.size(0)};
  check_shape(op, k, "k", q.sizes(), "[B, T, H, K] (the shape of q)");
  check_dtype_of_q(op, k, "k", q);
  TORCH_CHECK(v.dim() == 4, op, "v must be 4-D [B, T, H, V], got shape ", v.sizes());
  s.V = v.size(3);
  check_shape(op, v, "v", {s.B, s.T, s.H, s.V}, "[B, T, H, V]");
  check_dtype_of_q(op, v, "v", q);
  TORCH_CHECK(chunk_size >= 1, op, "chunk_size must be >= 1, got ", chunk_size);

  if (cu_seqlens.has_value()) {
    const at::Tensor& cu = *cu_seqlens;
    check_device(op, cu, "cu_seqlens", device);
    TORCH_CHECK(cu.scalar_type() == at::kInt || cu.scalar_type() == at::kLong, op,
                "cu_seqlens must be int32 or int64, got ", cu.scalar_type());
    TORCH_CHECK(cu.dim() == 1 && cu.size(0) >= 1, op, "cu_seqlens must be 1-D [N + 1] with N >= 0, got shape ",
                cu.sizes());
    TORCH_CHECK(s.B == 1, op, "cu_seqlens requires batch size B == 1 (sequences packed along T), got B = ",
                s.B);
    s.N = cu.size(0) - 1;
    if (check_cu_seqlens_values) {
      const at::Tensor offsets = cu.to(at::kLong).contiguous();
      const int64_t* o = offsets.const_data_ptr<int64_t>();
      TORCH_CHECK(o[0] == 0, op, "cu_seqlens must start at 0, got cu_seqlens[0] = ", o[0]);
      TORCH_CHECK(o[s.N] == s.T, op, "cu_seqlens must end at T = ", s.T, ", got cu_seqlens[", s.N, "] = ", o[s.N]);
      for (int64_t n = 0; n < s.N; ++n) {
        TORCH_CHECK(o[n] <= o[n + 1], op, "cu_seqlens must be non-decreasing, got cu_seqlens[", n, "] = ", o[n],
                    " > cu_seqlens[", n + 1, "] = ", o[n + 1]);
      }
    }
  }

  check_gate(op, lr, "lr", s, device);
  check_gate(op, retention, "retention", s, device);
  if (momentum.has_value()) {
    check_gate(op, *momentum, "momentum", s, device);
  }
  if (initial_memory.has_value()) {
    check_state(op, *initial_memory, "initial_memory", s, device);
  }
  if (initial_momentum.has_value()) {
    TORCH_CHECK(momentum.has_value(), op,
                "initial_momentum was given but momentum is None (a call without momentum has no momentum state)");
    check_state(op, *initial_momentum, "initial_momentum", s, device);
  }
  return s;
}

namespace {

at::Tensor state_or_zeros(const std::optional<at::Tensor>& init, at::IntArrayRef shape, const at::TensorOptions& opts) {
  if (init.has_value()) {
    // A fresh copy: the kernel updates it in place into the final state.
    return init->to(opts, /*non_blocking=*/false, /*copy=*/true).contiguous();
  }
  return at::zeros(shape, opts);
}

}  // namespace

RecurrentTensors prepare_linear_memory_recurrent(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lr,
    const at::Tensor& retention, const std::optional<at::Tensor>& momentum,
    const std::optional<at::Tensor>& initial_memory, const std::optional<at::Tensor>& initial_momentum,
    const std::optional<at::Tensor>& cu_seqlens, const RecurrentSizes& s) {
  const at::ScalarType acc_type = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const at::TensorOptions acc_opts = q.options().dtype(acc_type);
  const std::vector<int64_t> state_shape{s.N, s.H, s.K, s.V};
  RecurrentTensors t;
  static_cast<MemoryInputs&>(t) = prepare_memory_inputs(q, k, v, lr, retention, momentum, s.B, s.T, s.H, s.V);
  if (cu_seqlens.has_value()) {
    t.cu_seqlens = cu_seqlens->to(at::kLong).contiguous();
  }
  t.final_memory = state_or_zeros(initial_memory, state_shape, acc_opts);
  t.final_momentum = momentum.has_value() ? state_or_zeros(initial_momentum, state_shape, acc_opts)
                                          : at::empty({0}, acc_opts);
  return t;
}

}  // namespace linear_memory
}  // namespace nested_kernels
