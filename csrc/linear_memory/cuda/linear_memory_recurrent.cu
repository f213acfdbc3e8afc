// Token-by-token forward of `linear_memory` (SPEC §2) on a CUDA device: the CPU kernel's
// recurrence, column-parallel. Column j of M (and of S, M^c) evolves on its own, so a block
// takes one (sequence, head) and a tile of columns; each column's K rows are spread over
// `k_split` adjacent lanes (kRows each, in registers), whose partial dot products
// (k_t M^c, k_t M_{t−1}, q_t M_t) meet by warp shuffles. A straightforward kernel: the
// reference for the chunked CUDA kernels to come, not the fast path.
#include "common/flag_dispatch.h"
#include "linear_memory/linear_memory_ops.h"
#include "linear_memory/linear_memory_recurrent.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include <type_traits>

namespace nested_kernels {
namespace linear_memory {
namespace {

constexpr int kRows = 8;             // rows of a column one thread keeps (M, M^c, S: 3·kRows registers)
constexpr int kThreads = 128;        // threads per block
constexpr int kMaxK = 32 * kRows;    // a column's rows span at most one warp

// The inputs of one call (linear_memory_inputs.h; K ≤ kMaxK) and its outputs, states in acc_t.
template <typename scalar_t, typename acc_t>
struct RecurrentCudaParams : LinearMemoryInputs<scalar_t, acc_t> {
  scalar_t* o;                // [B, T, H, V]
  acc_t* memory;              // [N, H, K, V] initial memory on entry, final memory on exit
  acc_t* mom_state;           // [N, H, K, V] the same for S, null without momentum
  int k_split;                // lanes per column, a power of two ≤ 32, k_split · kRows ≥ K
};

// Sum over the k_split adjacent lanes of a column (all 32 lanes of the warp take part).
template <typename acc_t>
__device__ __forceinline__ acc_t column_sum(acc_t x, int k_split) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) {
    if (offset < k_split) {
      x += __shfl_xor_sync(0xffffffffu, x, offset);
    }
  }
  return x;
}

template <typename scalar_t, typename acc_t, bool HAS_MOMENTUM, bool DGD>
__global__ void __launch_bounds__(kThreads)
    linear_memory_recurrent_fwd_kernel(const RecurrentCudaParams<scalar_t, acc_t> p) {
  const int64_t i_nh = blockIdx.x;  // (sequence, head)
  const int64_t i_n = i_nh / p.H, i_h = i_nh % p.H;
  const int K = static_cast<int>(p.K);
  const int i_lane = threadIdx.x % p.k_split;  // this thread's rows: i_lane + r · k_split
  const int64_t i_v = static_cast<int64_t>(blockIdx.y) * (kThreads / p.k_split) + threadIdx.x / p.k_split;
  const bool m_v = i_v < p.V;  // a real column (padding threads still join the shuffles)
  const int64_t b = p.cu_seqlens ? 0 : i_n;
  const int64_t bos = p.cu_seqlens ? p.cu_seqlens[i_n] : 0;
  const int64_t eos = p.cu_seqlens ? p.cu_seqlens[i_n + 1] : p.T;

  // Column i_v of this (sequence, head)'s state; rows at stride V.
  acc_t* p_m = p.memory + i_nh * p.K * p.V + i_v;
  acc_t* p_s = HAS_MOMENTUM ? p.mom_state + i_nh * p.K * p.V + i_v : nullptr;
  acc_t b_m[kRows], b_mc[kRows], b_s[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int i_k = i_lane + r * p.k_split;
    const bool m_k = m_v && i_k < K;
    b_m[r] = m_k ? p_m[static_cast<int64_t>(i_k) * p.V] : acc_t(0);
    b_s[r] = HAS_MOMENTUM && m_k ? p_s[static_cast<int64_t>(i_k) * p.V] : acc_t(0);
    b_mc[r] = b_m[r];
  }

  for (int64_t t = bos, i_c = 0; t < eos; ++t, ++i_c) {  // i_c: position in the chunk
    if (i_c == p.chunk_size) i_c = 0;
    if (i_c == 0) {
#pragma unroll
      for (int r = 0; r < kRows; ++r) b_mc[r] = b_m[r];  // M^c
    }
    const int64_t o_row = (b * p.T + t) * p.H + i_h;  // token (b, t), head h
    const scalar_t* p_k = p.k + o_row * p.K;
    const scalar_t* p_q = p.q + o_row * p.K;
    acc_t b_k[kRows];
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int i_k = i_lane + r * p.k_split;
      b_k[r] = i_k < K ? static_cast<acc_t>(p_k[i_k]) : acc_t(0);
    }
    const acc_t eta = p.lr[o_row], alpha = p.retention[o_row];
    const acc_t mu = HAS_MOMENTUM ? p.momentum[o_row] : acc_t(0);
    const acc_t b_v = m_v ? static_cast<acc_t>(p.v[o_row * p.V + i_v]) : acc_t(0);

    // r_t[j] = k_t M^c[:, j] − v_t[j];  with dgd, (k_t M_{t−1})[j]
    acc_t b_r = 0, b_p = 0;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      b_r += b_k[r] * b_mc[r];
      if (DGD) b_p += b_k[r] * b_m[r];
    }
    b_r = column_sum(b_r, p.k_split) - b_v;
    if (DGD) b_p = column_sum(b_p, p.k_split);

    // S_t, M_t (the shared per-element steps) and o_t[j] = scale · q_t M_t[:, j]
    acc_t b_o = 0;
#pragma unroll
    for (int r = 0; r < kRows; ++r) {
      const int i_k = i_lane + r * p.k_split;
      const acc_t eta_k = eta * b_k[r];
      b_s[r] = momentum_step<HAS_MOMENTUM>(mu, b_s[r], eta_k, b_r);
      b_m[r] = memory_step<DGD>(alpha, b_m[r], b_s[r], eta_k, b_p);
      b_o += (i_k < K ? static_cast<acc_t>(p_q[i_k]) : acc_t(0)) * b_m[r];
    }
    b_o = column_sum(b_o, p.k_split);
    if (m_v && i_lane == 0) {
      p.o[o_row * p.V + i_v] = static_cast<scalar_t>(p.scale * b_o);
    }
  }

#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const int i_k = i_lane + r * p.k_split;
    if (m_v && i_k < K) {
      p_m[static_cast<int64_t>(i_k) * p.V] = b_m[r];
      if (HAS_MOMENTUM) p_s[static_cast<int64_t>(i_k) * p.V] = b_s[r];
    }
  }
}

template <typename scalar_t, typename acc_t, bool HAS_MOMENTUM, bool DGD>
void launch(const RecurrentCudaParams<scalar_t, acc_t>& p, int64_t NH) {
  const int64_t columns_per_block = kThreads / p.k_split;
  const dim3 grid(static_cast<unsigned>(NH), static_cast<unsigned>((p.V + columns_per_block - 1) / columns_per_block));
  linear_memory_recurrent_fwd_kernel<scalar_t, acc_t, HAS_MOMENTUM, DGD>
      <<<grid, kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(p);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_memory_recurrent_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lr,
    const at::Tensor& retention, const std::optional<at::Tensor>& momentum,
    const std::optional<at::Tensor>& initial_memory, const std::optional<at::Tensor>& initial_momentum,
    const std::optional<at::Tensor>& cu_seqlens, int64_t chunk_size, double scale, bool dgd) {
  const RecurrentSizes s = check_linear_memory_args("linear_memory_recurrent: ", q, k, v, lr, retention, momentum,
                                                     initial_memory, initial_momentum, cu_seqlens, chunk_size,
                                                     at::kCUDA, /*check_cu_seqlens_values=*/false);
  TORCH_CHECK(s.K <= kMaxK, "linear_memory_recurrent: q and k must have K <= ", kMaxK, " on CUDA, got K = ", s.K);
  TORCH_CHECK(s.N * s.H <= 0x7fffffff, "linear_memory_recurrent: N * H must be < 2^31 on CUDA, got ", s.N * s.H);
  const c10::cuda::CUDAGuard device_guard(q.device());

  const RecurrentTensors t = prepare_linear_memory_recurrent(q, k, v, lr, retention, momentum, initial_memory,
                                                             initial_momentum, cu_seqlens, s);
  if (s.N * s.H == 0 || s.V == 0) {
    return {t.o, t.final_memory, t.final_momentum};
  }
  int k_split = 1;
  while (k_split * kRows < s.K) k_split *= 2;

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "linear_memory_recurrent_cuda", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    RecurrentCudaParams<scalar_t, acc_t> p;
    fill_linear_memory_inputs(p, t, t.cu_seqlens, s, chunk_size, scale);
    p.o = t.o.mutable_data_ptr<scalar_t>();
    p.memory = t.final_memory.mutable_data_ptr<acc_t>();
    p.mom_state = momentum.has_value() ? t.final_momentum.mutable_data_ptr<acc_t>() : nullptr;
    p.k_split = k_split;
    dispatch_momentum_dgd(momentum.has_value(), dgd, [&]<bool HAS_MOMENTUM, bool DGD>() {
      launch<scalar_t, acc_t, HAS_MOMENTUM, DGD>(p, s.N * s.H);
    });
  });
  return {t.o, t.final_memory, t.final_momentum};
}

}  // namespace linear_memory
}  // namespace nested_kernels

TORCH_LIBRARY_IMPL(nested_kernels, CUDA, m) {
  m.impl("linear_memory_recurrent", &nested_kernels::linear_memory::linear_memory_recurrent_cuda);
}
