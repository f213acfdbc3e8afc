// Decode step of `mlp_memory` (SPEC §3) on a CUDA device: one launch for all sequences and
// heads. A block takes one (sequence, head) and runs the shared token loop (mlp_memory_step.h)
// with each phase split over its threads (consecutive threads, consecutive state elements:
// coalesced) and __syncthreads between phases; the per-token vectors (5 · Dh + V values) live
// in shared memory, the weights in global memory.
#include "mlp_memory/mlp_memory_ops.h"
#include "mlp_memory/mlp_memory_step.h"
#include "mlp_memory/mlp_memory_step_host.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <type_traits>

namespace nested_kernels {
namespace mlp_memory {
namespace {

constexpr int kThreads = 256;                 // threads per (sequence, head)
constexpr int64_t kMaxSharedBytes = 48 * 1024;  // the scratch must fit the default shared memory

// A phase split over the block's threads, then a block-wide barrier.
struct BlockPar {
  template <typename F>
  __device__ void loop(int64_t n, const F& f) const {
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) f(i);
  }
  __device__ void sync() const { __syncthreads(); }
};

template <typename scalar_t, typename acc_t, bool HAS_MOMENTUM, bool DGD>
__global__ void __launch_bounds__(kThreads) mlp_memory_step_fwd_kernel(const StepParams<scalar_t, acc_t> p) {
  extern __shared__ unsigned char b_smem[];
  const int64_t i_nh = blockIdx.x;  // (sequence, head)
  step_head<HAS_MOMENTUM, DGD>(p, i_nh, StepScratch<acc_t>(reinterpret_cast<acc_t*>(b_smem), p.Dh), BlockPar{});
}

}  // namespace

at::Tensor mlp_memory_step_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lr,
    const at::Tensor& retention, const std::optional<at::Tensor>& momentum, at::Tensor& w1, at::Tensor& w2,
    at::Tensor& chunk_w1, at::Tensor& chunk_w2, const std::optional<at::Tensor>& s1,
    const std::optional<at::Tensor>& s2, at::Tensor& position, int64_t chunk_size, std::string_view activation,
    bool residual, bool dgd, bool self_target, std::string_view read) {
  const StepSizes s = check_mlp_memory_step_args(q, k, v, lr, retention, momentum, w1, w2, chunk_w1, chunk_w2, s1,
                                                 s2, position, chunk_size, activation, residual, self_target, read,
                                                 at::kCUDA, /*check_position_values=*/false);
  TORCH_CHECK(s.N * s.H <= 0x7fffffff, "mlp_memory_step: N * H must be < 2^31 on CUDA, got ", s.N * s.H);
  const c10::cuda::CUDAGuard device_guard(q.device());
  const MemoryInputs t = prepare_mlp_memory_step(q, k, v, lr, retention, momentum, s);
  if (s.N * s.H == 0 || s.T == 0) {
    return t.o;
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "mlp_memory_step_cuda", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const int64_t smem = StepScratch<acc_t>::size(s.Dh, s.V) * static_cast<int64_t>(sizeof(acc_t));
    TORCH_CHECK(smem <= kMaxSharedBytes, "mlp_memory_step: 5 * Dh + V values must fit ", kMaxSharedBytes,
                " bytes of shared memory on CUDA, got Dh = ", s.Dh, ", V = ", s.V);
    const auto p = mlp_memory_step_params<scalar_t, acc_t>(t, w1, w2, chunk_w1, chunk_w2, s1, s2, position, s,
                                                           chunk_size, activation, residual, self_target, read);
    dispatch_momentum_dgd(momentum.has_value(), dgd, [&]<bool HAS_MOMENTUM, bool DGD>() {
      mlp_memory_step_fwd_kernel<scalar_t, acc_t, HAS_MOMENTUM, DGD>
          <<<static_cast<unsigned>(s.N * s.H), kThreads, smem, c10::cuda::getCurrentCUDAStream()>>>(p);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  });
  position.add_(s.T).remainder_(chunk_size);  // after the kernel on the same stream, which read the old positions
  return t.o;
}

}  // namespace mlp_memory
}  // namespace nested_kernels

TORCH_LIBRARY_IMPL(nested_kernels, CUDA, m) {
  m.impl("mlp_memory_step", &nested_kernels::mlp_memory::mlp_memory_step_cuda);
}
