// Argument-check helpers shared by the host entry points of every op (see checks.h).
#include "common/checks.h"

#include <c10/util/Exception.h>

namespace nested_kernels {
namespace checks {

bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kBFloat16 || t == at::kHalf;
}

void check_device_type(const char* op, const at::Tensor& q, c10::DeviceType device_type) {
  TORCH_CHECK(q.device().type() == device_type, op, "q must be a ", c10::DeviceTypeName(device_type),
              " tensor for this kernel, got a tensor on ", q.device());
}

void check_device(const char* op, const at::Tensor& t, const char* name, const c10::Device& device) {
  TORCH_CHECK(t.device() == device, op, name, " must be on ", device, " (the device of q), got a tensor on ",
              t.device());
}

void check_float(const char* op, const at::Tensor& t, const char* name) {
  TORCH_CHECK(is_float_dtype(t.scalar_type()), op, name, " must be float32, float64, bfloat16 or float16, got ",
              t.scalar_type());
}

void check_shape(const char* op, const at::Tensor& t, const char* name, at::IntArrayRef expected,
                 const char* layout) {
  TORCH_CHECK(t.sizes() == expected, op, name, " must have shape ", layout, " = ", expected, ", got ", t.sizes());
}

void check_dtype_of_q(const char* op, const at::Tensor& t, const char* name, const at::Tensor& q) {
  TORCH_CHECK(t.scalar_type() == q.scalar_type(), op, name, " must have the dtype of q (", q.scalar_type(),
              "), got ", t.scalar_type());
}

void check_inplace_state(const char* op, const at::Tensor& t, const char* name, const c10::Device& device,
                         at::IntArrayRef expected, const char* layout, at::ScalarType acc_type) {
  check_device(op, t, name, device);
  check_shape(op, t, name, expected, layout);
  const bool fp64 = acc_type == at::kDouble;
  TORCH_CHECK(t.scalar_type() == acc_type, op, name, " must be ", fp64 ? "float64" : "float32",
              " (the state type for ", fp64 ? "float64" : "float32/bfloat16/float16", " inputs), got ",
              t.scalar_type());
  TORCH_CHECK(t.is_contiguous(), op, name, " must be contiguous (it is updated in place), got strides ",
              t.strides());
}

void check_position(const char* op, const at::Tensor& position, int64_t N, const c10::Device& device,
                    int64_t chunk_size, bool check_values) {
  check_device(op, position, "position", device);
  TORCH_CHECK(position.scalar_type() == at::kLong, op, "position must be int64, got ", position.scalar_type());
  check_shape(op, position, "position", {N}, "[N]");
  TORCH_CHECK(position.is_contiguous(), op, "position must be contiguous (it is updated in place)");
  if (check_values) {
    const int64_t* p = position.const_data_ptr<int64_t>();
    for (int64_t n = 0; n < N; ++n) {
      TORCH_CHECK(p[n] >= 0 && p[n] < chunk_size, op, "position must be in [0, chunk_size = ", chunk_size,
                  "), got position[", n, "] = ", p[n]);
    }
  }
}

}  // namespace checks
}  // namespace nested_kernels
