// Host entry points of the `mlp_memory` ops (SPEC §3). Schemas: csrc/registration.cpp.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/core/DeviceType.h>

#include <cstdint>
#include <optional>
#include <string_view>

namespace nested_kernels {
namespace mlp_memory {

// Sizes of one validated `mlp_memory_step` call.
struct StepSizes {
  int64_t N;   // sequences (batch rows of q/k/v)
  int64_t T;   // new tokens per sequence
  int64_t H;   // heads
  int64_t K;   // input width (rows of W1)
  int64_t Dh;  // hidden width
  int64_t V;   // output width (columns of W2)
};

// Checks every argument of `mlp_memory_step` (shapes, dtypes, devices, states contiguous in the
// accumulation type, position int64 [N], activation "silu" | "gelu", read "current" |
// "chunk_start", K == V for residual and self_target) and raises c10::Error naming the argument.
// `check_position_values` also reads position (each in [0, chunk_size)); it needs host memory.
StepSizes check_mlp_memory_step_args(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lr,
    const at::Tensor& retention, const std::optional<at::Tensor>& momentum, const at::Tensor& w1,
    const at::Tensor& w2, const at::Tensor& chunk_w1, const at::Tensor& chunk_w2,
    const std::optional<at::Tensor>& s1, const std::optional<at::Tensor>& s2, const at::Tensor& position,
    int64_t chunk_size, std::string_view activation, bool residual, bool self_target, std::string_view read,
    c10::DeviceType device_type, bool check_position_values);

// Decode step of SPEC §3 on the CPU: T new tokens of each of N sequences from the decode state
// (w1, chunk_w1, s1 [N, H, K, Dh]; w2, chunk_w2, s2 [N, H, Dh, V]: float32, float64 for float64
// inputs; position [N] int64), all updated in place. q, k: [N, T, H, K]; v: [N, T, H, V];
// gates [N, T, H]. Returns o [N, T, H, V] in v's dtype.
at::Tensor mlp_memory_step_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lr,
    const at::Tensor& retention, const std::optional<at::Tensor>& momentum, at::Tensor& w1, at::Tensor& w2,
    at::Tensor& chunk_w1, at::Tensor& chunk_w2, const std::optional<at::Tensor>& s1,
    const std::optional<at::Tensor>& s2, at::Tensor& position, int64_t chunk_size, std::string_view activation,
    bool residual, bool dgd, bool self_target, std::string_view read);

// The same on a CUDA device (csrc/mlp_memory/cuda/, CUDA builds only): one launch, a block per
// (sequence, head). position values are not read back (no device sync): they must be valid.
at::Tensor mlp_memory_step_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lr,
    const at::Tensor& retention, const std::optional<at::Tensor>& momentum, at::Tensor& w1, at::Tensor& w2,
    at::Tensor& chunk_w1, at::Tensor& chunk_w2, const std::optional<at::Tensor>& s1,
    const std::optional<at::Tensor>& s2, at::Tensor& position, int64_t chunk_size, std::string_view activation,
    bool residual, bool dgd, bool self_target, std::string_view read);

}  // namespace mlp_memory
}  // namespace nested_kernels
