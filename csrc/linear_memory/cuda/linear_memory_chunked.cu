// Chunked forward of `linear_memory` (SPEC §2) on a CUDA device: the chunk algorithm
// of linear_memory_chunk.h (shared with the CPU kernel), one block per (sequence, head) and
// value tile, looping over the sequence's chunks with the state tile and every chunk tile in
// shared memory. bf16/fp16 inputs multiply on tensor cores (MmaTilePolicy: mma.sync m16n8k16,
// fp32 accumulate, sm_80+); fp32 inputs with plain fp32 loops (LoopTilePolicy), exact like the
// CPU kernel.
#include "common/tile_policy.h"
#include "common/tile_policy_mma.cuh"
#include "linear_memory/linear_memory_chunk.h"
#include "linear_memory/linear_memory_chunked_host.h"
#include "linear_memory/linear_memory_ops.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include <type_traits>

namespace nested_kernels {
namespace linear_memory {
namespace {

constexpr int kWarps = 4;                  // warps per block
constexpr int kThreads = kWarps * 32;      // threads per block
constexpr int kGranule = 16;               // tile rows / columns are multiples of mma's m16n8k16 steps
constexpr int64_t kMaxChunk = 64;          // BT ≤ 64: the G and A tiles of a chunk
constexpr int64_t kMaxK = 256;             // BK ≤ 256, with BV = 16 past 128

// The products of a block: tensor cores for bf16/fp16, fp32 loops for fp32.
template <typename scalar_t>
struct BlockPolicy {
  using type = MmaTilePolicy<scalar_t, kWarps>;
  static __device__ __forceinline__ type make() { return type{}; }
};

template <>
struct BlockPolicy<float> {
  using type = LoopTilePolicy<float>;
  static __device__ __forceinline__ type make() { return type{static_cast<int>(threadIdx.x), kThreads}; }
};

// grid (N·H, value tiles); dynamic shared memory: the chunk workspace of `shape`. At most one block
// per SM fits its shared memory at the larger tiles anyway; min-blocks 1 lets ptxas take the
// registers it wants (with the default it spilled 4 bytes on sm_80).
template <typename scalar_t, bool HAS_MOMENTUM, bool DGD>
__global__ void __launch_bounds__(kThreads, 1)
    linear_memory_chunked_fwd_kernel(const ChunkedParams<scalar_t, float> p, const ChunkTileShape shape) {
  extern __shared__ __align__(16) char smem[];
  const auto w = carve_chunk_workspace<scalar_t, float>(smem, shape, HAS_MOMENTUM, DGD);
  auto pol = BlockPolicy<scalar_t>::make();
  linear_memory_chunked_fwd_tile<HAS_MOMENTUM, DGD>(pol, p, w, shape, static_cast<int64_t>(blockIdx.x),
                                               static_cast<int64_t>(blockIdx.y));
}

template <typename scalar_t, bool HAS_MOMENTUM, bool DGD>
void launch(const ChunkedParams<scalar_t, float>& p, const ChunkTileShape& shape, int64_t NH, int64_t smem_bytes) {
  const auto kernel = linear_memory_chunked_fwd_kernel<scalar_t, HAS_MOMENTUM, DGD>;
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(smem_bytes)));
  const dim3 grid(static_cast<unsigned>(NH), static_cast<unsigned>((p.V + shape.BV - 1) / shape.BV));
  kernel<<<grid, kThreads, smem_bytes, c10::cuda::getCurrentCUDAStream()>>>(p, shape);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_memory_chunked_fwd_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lr,
    const at::Tensor& retention, const std::optional<at::Tensor>& momentum,
    const std::optional<at::Tensor>& initial_memory, const std::optional<at::Tensor>& initial_momentum,
    const std::optional<at::Tensor>& cu_seqlens, int64_t chunk_size, double scale, bool dgd) {
  constexpr const char* op = "linear_memory_chunked_fwd: ";
  const RecurrentSizes s = check_linear_memory_args(op, q, k, v, lr, retention, momentum, initial_memory,
                                                     initial_momentum, cu_seqlens, chunk_size, at::kCUDA,
                                                     /*check_cu_seqlens_values=*/false);
  TORCH_CHECK(q.scalar_type() != at::kDouble, op, "q must be float32, bfloat16 or float16 on CUDA, got ",
              q.scalar_type());
  TORCH_CHECK(chunk_size <= kMaxChunk, op, "chunk_size must be <= ", kMaxChunk, " on CUDA, got ", chunk_size);
  TORCH_CHECK(s.K <= kMaxK, op, "q and k must have K <= ", kMaxK, " on CUDA, got K = ", s.K);
  TORCH_CHECK(s.N * s.H <= 0x7fffffff, op, "N * H must be < 2^31 on CUDA, got ", s.N * s.H);
  const c10::cuda::CUDAGuard device_guard(q.device());

  const ChunkedTensors t = prepare_linear_memory_chunked(q, k, v, lr, retention, momentum, initial_memory,
                                                         initial_momentum, cu_seqlens, chunk_size, s);
  const auto result = [&] {
    return std::make_tuple(t.o, t.final_memory, t.final_momentum, t.chunk_memory, t.chunk_momentum);
  };
  if (s.N * s.H == 0 || s.V == 0 || s.T == 0) {
    return result();
  }
  const ChunkTileShape shape = chunk_tile_shape(chunk_size, s.K, kGranule);
  int major = 0, smem_optin = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, q.get_device()));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, q.get_device()));
  TORCH_CHECK(major >= 8, op, "needs compute capability 8.0 or newer (mma.sync bf16/fp16), got ", major, ".x");

  const auto run = [&](auto tag) {
    using scalar_t = decltype(tag);
    const int64_t smem = chunk_workspace_bytes<scalar_t, float>(shape, momentum.has_value(), dgd);
    TORCH_CHECK(smem <= smem_optin, op, "chunk_size ", chunk_size, " with K = ", s.K, " in ", q.scalar_type(),
                dgd ? " with dgd" : "", " needs ", smem, " bytes of shared memory per block, this device has ",
                smem_optin, "; use a smaller chunk_size");
    const ChunkedParams<scalar_t, float> p = chunked_params<scalar_t, float>(t, s, chunk_size, scale);
    const int64_t NH = s.N * s.H;
    if (momentum.has_value()) {
      dgd ? launch<scalar_t, true, true>(p, shape, NH, smem) : launch<scalar_t, true, false>(p, shape, NH, smem);
    } else {
      dgd ? launch<scalar_t, false, true>(p, shape, NH, smem) : launch<scalar_t, false, false>(p, shape, NH, smem);
    }
  };
  switch (q.scalar_type()) {
    case at::kFloat:
      run(float{});
      break;
    case at::kBFloat16:
      run(c10::BFloat16{});
      break;
    case at::kHalf:
      run(c10::Half{});
      break;
    default:
      TORCH_CHECK(false, op, "unreachable dtype ", q.scalar_type());
  }
  return result();
}

}  // namespace linear_memory
}  // namespace nested_kernels

TORCH_LIBRARY_IMPL(nested_kernels, CUDA, m) {
  m.impl("linear_memory_chunked_fwd", &nested_kernels::linear_memory::linear_memory_chunked_fwd_cuda);
}
