// Chunked forward and backward of `linear_memory` (SPEC §2) on a CUDA device: the chunk algorithms
// of linear_memory_chunk.h and linear_memory_chunk_bwd.h (shared with the CPU kernel), one block per
// (sequence, head) and value tile, looping over the sequence's chunks with the state tile (or its
// adjoint) and every chunk tile in its workspace: shared memory up to the device's opt-in limit (or
// NESTED_KERNELS_CHUNK_SMEM_BUDGET), the rest in a per-block slice of global memory. bf16/fp16
// inputs multiply on tensor cores (MmaTilePolicy: mma.sync m16n8k16, fp32 accumulate, sm_80+);
// fp32 inputs with plain fp32 loops (LoopTilePolicy), exact like the CPU kernel.
#include "common/flag_dispatch.h"
#include "common/tile_policy.h"
#include "common/tile_policy_mma.cuh"
#include "linear_memory/linear_memory_chunk.h"
#include "linear_memory/linear_memory_chunk_bwd.h"
#include "linear_memory/linear_memory_chunked_host.h"
#include "linear_memory/linear_memory_ops.h"

#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>


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

// Where a block's chunk workspace lives: the first `budget` bytes of its layout in dynamic shared
// memory, the rest in the block's slice of a global buffer (csrc/README.md "Workspace").
struct BlockWorkspace {
  int64_t budget;        // bytes of the layout in shared memory (the carver's first level)
  char* global;          // [gridDim.x, global_bytes] the second level, a slice per block; null when none
  int64_t global_bytes;  // bytes of a block's slice
  int64_t NVT;           // value tiles
  int64_t tasks;         // (sequence·head, value tile) pairs, N·H·NVT; block b runs b, b + gridDim.x, ...
};

// The second level of this block: its own slice, so the policies' thread and sync contract holds
// as in shared memory (__syncthreads orders a block's global writes too). Without SPILL the
// workspace fits shared memory: no second level and no budget, so every pointer is known to be
// shared (32-bit addresses; the generic pointers of a split cost ptxas 40-110 more registers).
template <bool SPILL>
__device__ __forceinline__ char* block_spill(const BlockWorkspace& ws) {
  return SPILL ? ws.global + static_cast<int64_t>(blockIdx.x) * ws.global_bytes : nullptr;
}

template <bool SPILL>
__device__ __forceinline__ int64_t block_budget(const BlockWorkspace& ws) {
  return SPILL ? ws.budget : INT64_MAX;
}

// grid (min(tasks, resident blocks) when the workspace spills to global memory (SPILL), else tasks),
// looping over the (sequence·head, value tile) tasks. At most one block per SM fits its shared
// memory at the larger tiles anyway; min-blocks 1 lets ptxas take the registers it wants (with the
// default it spilled 4 bytes on sm_80).
template <typename scalar_t, bool HAS_MOMENTUM, bool DGD, bool SPILL>
__global__ void __launch_bounds__(kThreads, 1)
    linear_memory_chunked_fwd_kernel(const ChunkedParams<scalar_t, float> p, const ChunkTileShape shape,
                                     const BlockWorkspace ws) {
  extern __shared__ __align__(16) char smem[];
  const auto w = carve_chunk_workspace<scalar_t, float>(smem, block_spill<SPILL>(ws), block_budget<SPILL>(ws), shape,
                                                        HAS_MOMENTUM, DGD);
  auto pol = BlockPolicy<scalar_t>::make();
  for (int64_t task = blockIdx.x; task < ws.tasks; task += gridDim.x) {
    linear_memory_chunked_fwd_tile<HAS_MOMENTUM, DGD>(pol, p, w, shape, task / ws.NVT, task % ws.NVT);
    pol.sync();  // the next task reuses the workspace
  }
}

// The backward: the same grid, block and policy; its workspace is chunk_bwd_workspace_split.
template <typename scalar_t, bool HAS_MOMENTUM, bool DGD, bool SPILL>
__global__ void __launch_bounds__(kThreads, 1)
    linear_memory_chunked_bwd_kernel(const ChunkedBwdParams<scalar_t, float> p, const ChunkTileShape shape,
                                     const BlockWorkspace ws) {
  extern __shared__ __align__(16) char smem[];
  const auto w = carve_chunk_bwd_workspace<scalar_t, float>(smem, block_spill<SPILL>(ws), block_budget<SPILL>(ws),
                                                            shape, HAS_MOMENTUM, DGD);
  auto pol = BlockPolicy<scalar_t>::make();
  for (int64_t task = blockIdx.x; task < ws.tasks; task += gridDim.x) {
    linear_memory_chunked_bwd_tile<HAS_MOMENTUM, DGD>(pol, p, w, shape, task / ws.NVT, task % ws.NVT);
    pol.sync();  // the next task reuses the workspace
  }
}

// One launch of `kernel` over the N·H·NVT tasks with the workspace `split` (its first level of at
// most `budget` bytes in dynamic shared memory). Where part of it spills, the grid is the blocks
// the device holds at once, each with its slice of a scratch buffer allocated here (on the stream).
// `kernels`: the variant without and with SPILL.
template <typename Kernel, typename Params>
void launch(const Kernel (&kernels)[2], const Params& p, const ChunkTileShape& shape, int64_t NH,
            const WorkspaceSplit& split, int64_t budget, const at::Tensor& like) {
  const Kernel kernel = kernels[split.global > 0 ? 1 : 0];
  C10_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                      static_cast<int>(split.shared)));
  const int64_t NVT = (p.V + shape.BV - 1) / shape.BV;
  BlockWorkspace ws{budget, nullptr, split.global, NVT, NH * NVT};
  int64_t blocks = ws.tasks < 0x7fffffff ? ws.tasks : 0x7fffffff;
  at::Tensor scratch;
  if (split.global > 0) {
    int per_sm = 0, sms = 0;
    C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kThreads,
                                                                 static_cast<size_t>(split.shared)));
    C10_CUDA_CHECK(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, like.get_device()));
    const int64_t resident = static_cast<int64_t>(per_sm > 0 ? per_sm : 1) * sms;
    blocks = blocks < resident ? blocks : resident;
    scratch = at::empty({blocks * split.global}, like.options().dtype(at::kByte));
    ws.global = reinterpret_cast<char*>(scratch.mutable_data_ptr<uint8_t>());
  }
  kernel<<<static_cast<unsigned>(blocks), kThreads, split.shared, c10::cuda::getCurrentCUDAStream()>>>(p, shape, ws);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Checks the limits of the CUDA kernels (after the op's argument checks) and the device; returns
// its opt-in shared memory per block.
int64_t check_cuda_chunked(const char* op, const at::Tensor& q, int64_t chunk_size, const RecurrentSizes& s) {
  TORCH_CHECK(q.scalar_type() != at::kDouble, op, "q must be float32, bfloat16 or float16 on CUDA, got ",
              q.scalar_type());
  TORCH_CHECK(chunk_size <= kMaxChunk, op, "chunk_size must be <= ", kMaxChunk, " on CUDA, got ", chunk_size);
  TORCH_CHECK(s.K <= kMaxK, op, "q and k must have K <= ", kMaxK, " on CUDA, got K = ", s.K);
  TORCH_CHECK(s.N * s.H <= 0x7fffffff, op, "N * H must be < 2^31 on CUDA, got ", s.N * s.H);
  int major = 0, smem_optin = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, q.get_device()));
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, q.get_device()));
  TORCH_CHECK(major >= 8, op, "needs compute capability 8.0 or newer (mma.sync bf16/fp16), got ", major, ".x");
  return smem_optin;
}

// Runs run(scalar_t{}) for q's dtype (float32, bfloat16, float16).
template <typename Run>
void dispatch_cuda_dtype(const char* op, at::ScalarType dtype, Run&& run) {
  switch (dtype) {
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
      TORCH_CHECK(false, op, "unreachable dtype ", dtype);
  }
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
  const c10::cuda::CUDAGuard device_guard(q.device());
  const int64_t budget = chunk_smem_budget(op, check_cuda_chunked(op, q, chunk_size, s));
  const ChunkedTensors t = prepare_linear_memory_chunked(q, k, v, lr, retention, momentum, initial_memory,
                                                         initial_momentum, cu_seqlens, chunk_size, s);
  const auto result = [&] {
    return std::make_tuple(t.o, t.final_memory, t.final_momentum, t.chunk_memory, t.chunk_momentum);
  };
  if (s.N * s.H == 0 || s.V == 0 || s.T == 0) {
    return result();
  }
  const ChunkTileShape shape = chunk_tile_shape(chunk_size, s.K, kGranule);
  dispatch_cuda_dtype(op, q.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    const WorkspaceSplit split = chunk_workspace_split<scalar_t, float>(shape, momentum.has_value(), dgd, budget);
    const ChunkedParams<scalar_t, float> p = chunked_params<scalar_t, float>(t, s, chunk_size, scale);
    dispatch_momentum_dgd(momentum.has_value(), dgd, [&]<bool MOM, bool DG>() {
      using Kernel = void (*)(ChunkedParams<scalar_t, float>, ChunkTileShape, BlockWorkspace);
      const Kernel kernels[2] = {linear_memory_chunked_fwd_kernel<scalar_t, MOM, DG, false>,
                                 linear_memory_chunked_fwd_kernel<scalar_t, MOM, DG, true>};
      launch(kernels, p, shape, s.N * s.H, split, budget, q);
    });
  });
  return result();
}

ChunkedBwdResult linear_memory_chunked_bwd_cuda(
    const at::Tensor& d_o, const std::optional<at::Tensor>& d_final_memory,
    const std::optional<at::Tensor>& d_final_momentum, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& lr, const at::Tensor& retention, const std::optional<at::Tensor>& momentum,
    const at::Tensor& chunk_memory, const std::optional<at::Tensor>& chunk_momentum,
    const std::optional<at::Tensor>& cu_seqlens, int64_t chunk_size, double scale, bool dgd) {
  constexpr const char* op = "linear_memory_chunked_bwd: ";
  const RecurrentSizes s = check_linear_memory_chunked_bwd_args(op, d_o, d_final_memory, d_final_momentum, q, k, v,
                                                                lr, retention, momentum, chunk_memory, chunk_momentum,
                                                                cu_seqlens, chunk_size, at::kCUDA,
                                                                /*check_cu_seqlens_values=*/false);
  const c10::cuda::CUDAGuard device_guard(q.device());
  const int64_t budget = chunk_smem_budget(op, check_cuda_chunked(op, q, chunk_size, s));
  const ChunkedBwdTensors t = prepare_linear_memory_chunked_bwd(d_o, d_final_memory, d_final_momentum, q, k, v, lr,
                                                                retention, momentum, chunk_memory, chunk_momentum,
                                                                cu_seqlens, chunk_size, s, kGranule);
  if (s.N * s.H == 0 || s.V == 0 || s.T == 0) {
    return finish_linear_memory_chunked_bwd(t);
  }
  const ChunkTileShape shape = chunk_tile_shape(chunk_size, s.K, kGranule);
  dispatch_cuda_dtype(op, q.scalar_type(), [&](auto tag) {
    using scalar_t = decltype(tag);
    const WorkspaceSplit split =
        chunk_bwd_workspace_split<scalar_t, float>(shape, momentum.has_value(), dgd, budget);
    const ChunkedBwdParams<scalar_t, float> p = chunked_bwd_params<scalar_t, float>(t, s, chunk_size, scale);
    dispatch_momentum_dgd(momentum.has_value(), dgd, [&]<bool MOM, bool DG>() {
      using Kernel = void (*)(ChunkedBwdParams<scalar_t, float>, ChunkTileShape, BlockWorkspace);
      const Kernel kernels[2] = {linear_memory_chunked_bwd_kernel<scalar_t, MOM, DG, false>,
                                 linear_memory_chunked_bwd_kernel<scalar_t, MOM, DG, true>};
      launch(kernels, p, shape, s.N * s.H, split, budget, q);
    });
  });
  return finish_linear_memory_chunked_bwd(t);
}

}  // namespace linear_memory
}  // namespace nested_kernels

TORCH_LIBRARY_IMPL(nested_kernels, CUDA, m) {
  m.impl("linear_memory_chunked_fwd", &nested_kernels::linear_memory::linear_memory_chunked_fwd_cuda);
  m.impl("linear_memory_chunked_bwd", &nested_kernels::linear_memory::linear_memory_chunked_bwd_cuda);
}
