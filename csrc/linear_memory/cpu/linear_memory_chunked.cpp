// Chunked forward of `linear_memory` (SPEC §2) on the CPU: the CUDA kernel's tiles and
// algorithm (linear_memory_chunk.h) with LoopTilePolicy, one task per (sequence, head, value
// tile), its workspace on the heap. It exists so that the shared chunk algorithm runs in CI
// without a GPU; the fast CPU path is the recurrence (linear_memory_recurrent).
#include "common/tile_policy.h"
#include "linear_memory/linear_memory_chunk.h"
#include "linear_memory/linear_memory_chunked_host.h"
#include "linear_memory/linear_memory_ops.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cstddef>
#include <type_traits>
#include <vector>

namespace nested_kernels {
namespace linear_memory {
namespace {

constexpr int kGranule = 16;     // the CUDA kernel's tile granule: the same padded tiles here
constexpr int64_t kMaxChunk = 1024;  // a chunk is one BT × BT tile of G

template <typename scalar_t, typename acc_t, bool HAS_MOMENTUM, bool DGD>
void chunked_fwd_cpu(const ChunkedParams<scalar_t, acc_t>& p, int64_t NH) {
  const ChunkTileShape shape = chunk_tile_shape(p.chunk_size, p.K, kGranule);
  const int64_t NV = (p.V + shape.BV - 1) / shape.BV;
  const int64_t bytes = chunk_workspace_bytes<scalar_t, acc_t>(shape, HAS_MOMENTUM, DGD);
  at::parallel_for(0, NH * NV, 1, [&](int64_t begin, int64_t end) {
    std::vector<std::max_align_t> scratch((bytes + sizeof(std::max_align_t) - 1) / sizeof(std::max_align_t));
    const auto w = carve_chunk_workspace<scalar_t, acc_t>(reinterpret_cast<char*>(scratch.data()), shape,
                                                          HAS_MOMENTUM, DGD);
    LoopTilePolicy<acc_t> pol{0, 1};
    for (int64_t task = begin; task < end; ++task) {
      linear_memory_chunked_fwd_tile<HAS_MOMENTUM, DGD>(pol, p, w, shape, task / NV, task % NV);
    }
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> linear_memory_chunked_fwd_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lr,
    const at::Tensor& retention, const std::optional<at::Tensor>& momentum,
    const std::optional<at::Tensor>& initial_memory, const std::optional<at::Tensor>& initial_momentum,
    const std::optional<at::Tensor>& cu_seqlens, int64_t chunk_size, double scale, bool dgd) {
  const RecurrentSizes s = check_linear_memory_args("linear_memory_chunked_fwd: ", q, k, v, lr, retention, momentum,
                                                     initial_memory, initial_momentum, cu_seqlens, chunk_size,
                                                     at::kCPU, /*check_cu_seqlens_values=*/true);
  TORCH_CHECK(chunk_size <= kMaxChunk, "linear_memory_chunked_fwd: chunk_size must be <= ", kMaxChunk,
              " (a chunk is one tile), got ", chunk_size);
  const ChunkedTensors t = prepare_linear_memory_chunked(q, k, v, lr, retention, momentum, initial_memory,
                                                         initial_momentum, cu_seqlens, chunk_size, s);
  const auto result = [&] {
    return std::make_tuple(t.o, t.final_memory, t.final_momentum, t.chunk_memory, t.chunk_momentum);
  };
  if (s.N * s.H == 0 || s.V == 0 || s.T == 0) {
    return result();
  }

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "linear_memory_chunked_fwd_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const ChunkedParams<scalar_t, acc_t> p = chunked_params<scalar_t, acc_t>(t, s, chunk_size, scale);
    const int64_t NH = s.N * s.H;
    if (momentum.has_value()) {
      dgd ? chunked_fwd_cpu<scalar_t, acc_t, true, true>(p, NH)
          : chunked_fwd_cpu<scalar_t, acc_t, true, false>(p, NH);
    } else {
      dgd ? chunked_fwd_cpu<scalar_t, acc_t, false, true>(p, NH)
          : chunked_fwd_cpu<scalar_t, acc_t, false, false>(p, NH);
    }
  });
  return result();
}

}  // namespace linear_memory
}  // namespace nested_kernels
