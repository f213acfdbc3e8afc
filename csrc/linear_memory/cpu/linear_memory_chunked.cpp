// Chunked forward and backward of `linear_memory` (SPEC §2) on the CPU: the CUDA kernel's tiles and
// algorithm (linear_memory_chunk.h) with LoopTilePolicy, one task per (sequence, head, value
// tile), its workspace on the heap. It exists so that the shared chunk algorithm runs in CI
// without a GPU; the fast CPU path is the recurrence (linear_memory_recurrent).
#include "common/flag_dispatch.h"
#include "common/tile_policy.h"
#include "linear_memory/linear_memory_chunk.h"
#include "linear_memory/linear_memory_chunk_bwd.h"
#include "linear_memory/linear_memory_chunked_host.h"
#include "linear_memory/linear_memory_ops.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <cstddef>
#include <cstdint>
#include <type_traits>
#include <vector>

namespace nested_kernels {
namespace linear_memory {
namespace {

constexpr int kGranule = 16;     // the CUDA kernel's tile granule: the same padded tiles here
constexpr int64_t kMaxChunk = 1024;  // a chunk is one BT × BT tile of G

// Runs tile(pol, workspace, i_nh, i_vt) for every (sequence·head, value tile), one task each, with a
// workspace on the heap per thread laid out by carve(base, spill): its two levels of `split` bytes
// in two allocations (NESTED_KERNELS_CHUNK_SMEM_BUDGET splits it as on CUDA, same arithmetic).
template <typename acc_t, typename Carve, typename Tile>
void for_each_tile(int64_t NH, int64_t NV, const WorkspaceSplit& split, Carve&& carve, Tile&& tile) {
  const auto words = [](int64_t bytes) { return (bytes + sizeof(std::max_align_t) - 1) / sizeof(std::max_align_t); };
  at::parallel_for(0, NH * NV, 1, [&](int64_t begin, int64_t end) {
    std::vector<std::max_align_t> first(words(split.shared)), second(words(split.global));
    const auto w = carve(reinterpret_cast<char*>(first.data()), reinterpret_cast<char*>(second.data()));
    LoopTilePolicy<acc_t> pol{0, 1};
    for (int64_t task = begin; task < end; ++task) {
      tile(pol, w, task / NV, task % NV);
    }
  });
}

template <typename scalar_t, typename acc_t, bool HAS_MOMENTUM, bool DGD>
void chunked_fwd_cpu(const ChunkedParams<scalar_t, acc_t>& p, int64_t NH) {
  const ChunkTileShape shape = chunk_tile_shape(p.chunk_size, p.K, kGranule);
  const int64_t budget = chunk_smem_budget("linear_memory_chunked_fwd: ", INT64_MAX);
  for_each_tile<acc_t>(
      NH, (p.V + shape.BV - 1) / shape.BV, chunk_workspace_split<scalar_t, acc_t>(shape, HAS_MOMENTUM, DGD, budget),
      [&](char* base, char* spill) {
        return carve_chunk_workspace<scalar_t, acc_t>(base, spill, budget, shape, HAS_MOMENTUM, DGD);
      },
      [&](auto& pol, const auto& w, int64_t i_nh, int64_t i_vt) {
        linear_memory_chunked_fwd_tile<HAS_MOMENTUM, DGD>(pol, p, w, shape, i_nh, i_vt);
      });
}

template <typename scalar_t, typename acc_t, bool HAS_MOMENTUM, bool DGD>
void chunked_bwd_cpu(const ChunkedBwdParams<scalar_t, acc_t>& p, int64_t NH) {
  const ChunkTileShape shape = chunk_tile_shape(p.chunk_size, p.K, kGranule);
  const int64_t budget = chunk_smem_budget("linear_memory_chunked_bwd: ", INT64_MAX);
  for_each_tile<acc_t>(
      NH, (p.V + shape.BV - 1) / shape.BV,
      chunk_bwd_workspace_split<scalar_t, acc_t>(shape, HAS_MOMENTUM, DGD, budget),
      [&](char* base, char* spill) {
        return carve_chunk_bwd_workspace<scalar_t, acc_t>(base, spill, budget, shape, HAS_MOMENTUM, DGD);
      },
      [&](auto& pol, const auto& w, int64_t i_nh, int64_t i_vt) {
        linear_memory_chunked_bwd_tile<HAS_MOMENTUM, DGD>(pol, p, w, shape, i_nh, i_vt);
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
    dispatch_momentum_dgd(momentum.has_value(), dgd, [&]<bool HAS_MOMENTUM, bool DGD>() {
      chunked_fwd_cpu<scalar_t, acc_t, HAS_MOMENTUM, DGD>(p, s.N * s.H);
    });
  });
  return result();
}

ChunkedBwdResult linear_memory_chunked_bwd_cpu(
    const at::Tensor& d_o, const std::optional<at::Tensor>& d_final_memory,
    const std::optional<at::Tensor>& d_final_momentum, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& lr, const at::Tensor& retention, const std::optional<at::Tensor>& momentum,
    const at::Tensor& chunk_memory, const std::optional<at::Tensor>& chunk_momentum,
    const std::optional<at::Tensor>& cu_seqlens, int64_t chunk_size, double scale, bool dgd) {
  constexpr const char* op = "linear_memory_chunked_bwd: ";
  const RecurrentSizes s = check_linear_memory_chunked_bwd_args(op, d_o, d_final_memory, d_final_momentum, q, k, v,
                                                                lr, retention, momentum, chunk_memory, chunk_momentum,
                                                                cu_seqlens, chunk_size, at::kCPU, true);
  TORCH_CHECK(chunk_size <= kMaxChunk, op, "chunk_size must be <= ", kMaxChunk, " (a chunk is one tile), got ",
              chunk_size);
  const ChunkedBwdTensors t = prepare_linear_memory_chunked_bwd(d_o, d_final_memory, d_final_momentum, q, k, v, lr,
                                                                retention, momentum, chunk_memory, chunk_momentum,
                                                                cu_seqlens, chunk_size, s, kGranule);
  if (s.N * s.H == 0 || s.V == 0 || s.T == 0) {
    return finish_linear_memory_chunked_bwd(t);
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "linear_memory_chunked_bwd_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    const ChunkedBwdParams<scalar_t, acc_t> p = chunked_bwd_params<scalar_t, acc_t>(t, s, chunk_size, scale);
    dispatch_momentum_dgd(momentum.has_value(), dgd, [&]<bool HAS_MOMENTUM, bool DGD>() {
      chunked_bwd_cpu<scalar_t, acc_t, HAS_MOMENTUM, DGD>(p, s.N * s.H);
    });
  });
  return finish_linear_memory_chunked_bwd(t);
}

}  // namespace linear_memory
}  // namespace nested_kernels
