// Decode step of `linear_memory` (SPEC §2) on a CUDA device: one launch for all sequences and
// heads. A block takes one (sequence, head) and a tile of kThreads columns; each thread runs the
// shared column loop (linear_memory_step.h) over the new tokens, its state column read and
// written in global memory (consecutive threads, consecutive columns: coalesced).
#include "common/flag_dispatch.h"
#include "linear_memory/linear_memory_ops.h"
#include "linear_memory/linear_memory_step.h"
#include "linear_memory/linear_memory_step_host.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <type_traits>

namespace nested_kernels {
namespace linear_memory {
namespace {

constexpr int kThreads = 128;  // columns per block

template <typename scalar_t, typename acc_t, bool HAS_MOMENTUM, bool DGD>
__global__ void __launch_bounds__(kThreads) linear_memory_step_fwd_kernel(const StepParams<scalar_t, acc_t> p) {
  const int64_t i_nh = blockIdx.x;  // (sequence, head)
  const int64_t i_v = static_cast<int64_t>(blockIdx.y) * kThreads + threadIdx.x;
  if (i_v < p.V) {
    step_column<HAS_MOMENTUM, DGD>(p, i_nh, i_v);
  }
}

template <typename scalar_t, typename acc_t, bool HAS_MOMENTUM, bool DGD>
void launch(const StepParams<scalar_t, acc_t>& p, int64_t NH) {
  const dim3 grid(static_cast<unsigned>(NH), static_cast<unsigned>((p.V + kThreads - 1) / kThreads));
  linear_memory_step_fwd_kernel<scalar_t, acc_t, HAS_MOMENTUM, DGD>
      <<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

at::Tensor linear_memory_step_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lr,
    const at::Tensor& retention, const std::optional<at::Tensor>& momentum, at::Tensor& memory,
    at::Tensor& chunk_memory, const std::optional<at::Tensor>& momentum_state, at::Tensor& position,
    int64_t chunk_size, double scale, bool dgd) {
  const StepSizes s = check_linear_memory_step_args(q, k, v, lr, retention, momentum, memory, chunk_memory,
                                                    momentum_state, position, chunk_size, at::kCUDA,
                                                    /*check_position_values=*/false);
  TORCH_CHECK(s.N * s.H <= 0x7fffffff, "linear_memory_step: N * H must be < 2^31 on CUDA, got ", s.N * s.H);
  const c10::cuda::CUDAGuard device_guard(q.device());
  const MemoryInputs t = prepare_linear_memory_step(q, k, v, lr, retention, momentum, s);
  if (s.N * s.H == 0 || s.V == 0 || s.T == 0) {
    return t.o;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "linear_memory_step_cuda", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const auto p = linear_memory_step_params<scalar_t, acc_t>(t, memory, chunk_memory, momentum_state, position, s,
                                                              chunk_size, scale);
    dispatch_momentum_dgd(momentum.has_value(), dgd, [&]<bool HAS_MOMENTUM, bool DGD>() {
      launch<scalar_t, acc_t, HAS_MOMENTUM, DGD>(p, s.N * s.H);
    });
  });
  position.add_(s.T).remainder_(chunk_size);  // after the kernel on the same stream, which read the old positions
  return t.o;
}

}  // namespace linear_memory
}  // namespace nested_kernels

TORCH_LIBRARY_IMPL(nested_kernels, CUDA, m) {
  m.impl("linear_memory_step", &nested_kernels::linear_memory::linear_memory_step_cuda);
}
