// Argument-check helpers shared by the host entry points of every op. Each takes the op's
// message prefix (e.g. "linear_memory_step: ") so that errors name the op and the argument.
#pragma once

#include <ATen/ATen.h>
#include <c10/core/Device.h>

namespace nested_kernels {
namespace checks {

// float32, float64, bfloat16 or float16: the input dtypes every op accepts.
bool is_float_dtype(at::ScalarType t);

// q on a device of the kernel's type (the first check of every entry point).
void check_device_type(const char* op, const at::Tensor& q, c10::DeviceType device_type);

// Every other tensor on q's device.
void check_device(const char* op, const at::Tensor& t, const char* name, const c10::Device& device);

void check_float(const char* op, const at::Tensor& t, const char* name);

// `layout` spells the expected shape in letters, e.g. "[N, T, H]".
void check_shape(const char* op, const at::Tensor& t, const char* name, at::IntArrayRef expected,
                 const char* layout);

// k and v take the dtype of q.
void check_dtype_of_q(const char* op, const at::Tensor& t, const char* name, const at::Tensor& q);

// A decode state a kernel updates in place: on `device`, shape `expected`, in the accumulation
// type `acc_type` (float64 for float64 inputs, else float32), contiguous.
void check_inplace_state(const char* op, const at::Tensor& t, const char* name, const c10::Device& device,
                         at::IntArrayRef expected, const char* layout, at::ScalarType acc_type);

// A decode position: int64 [N], contiguous (updated in place); with `check_values` (host memory
// only) every entry in [0, chunk_size).
void check_position(const char* op, const at::Tensor& position, int64_t N, const c10::Device& device,
                    int64_t chunk_size, bool check_values);

}  // namespace checks
}  // namespace nested_kernels
