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

}  // namespace checks
}  // namespace nested_kernels
