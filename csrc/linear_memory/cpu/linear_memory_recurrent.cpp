// Token-by-token forward of `linear_memory` (SPEC §2) on the CPU: one task per (sequence, head),
// state M (and S, M^c) as K×V row-major buffers, V innermost.
#include "common/flag_dispatch.h"
#include "linear_memory/linear_memory_ops.h"
#include "linear_memory/linear_memory_recurrent.h"

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <type_traits>
#include <vector>

namespace nested_kernels {
namespace linear_memory {
namespace {

// The inputs of one call (linear_memory_inputs.h) and its outputs, states in acc_t.
template <typename scalar_t, typename acc_t>
struct RecurrentParams : LinearMemoryInputs<scalar_t, acc_t> {
  scalar_t* o;                // [B, T, H, V]
  acc_t* memory;              // [N, H, K, V] holds the initial memory on entry, the final one on exit
  acc_t* mom_state;           // [N, H, K, V] same for S, null without momentum
  int64_t N;                  // sequences
};

template <typename scalar_t, typename acc_t, bool HAS_MOMENTUM, bool DGD>
void recurrent_fwd_cpu(const RecurrentParams<scalar_t, acc_t>& p) {
  const int64_t H = p.H, K = p.K, V = p.V;
  at::parallel_for(0, p.N * H, 1, [&](int64_t begin, int64_t end) {
    // Per-task scratch: the chunk-start memory M^c, the token's rows, the residual r_t,
    // the dgd read p_t = k_t M_{t−1} and the output row.
    std::vector<acc_t> chunk_mem(p.chunk_size > 1 ? K * V : 0);
    std::vector<acc_t> k_row(K), q_row(K), r(V), kM(DGD ? V : 0), o_row(V);
    for (int64_t nh = begin; nh < end; ++nh) {
      const int64_t n = nh / H, h = nh % H;
      const int64_t b = p.cu_seqlens ? 0 : n;
      const int64_t start = p.cu_seqlens ? p.cu_seqlens[n] : 0;
      const int64_t stop = p.cu_seqlens ? p.cu_seqlens[n + 1] : p.T;
      acc_t* M = p.memory + nh * K * V;
      acc_t* S = HAS_MOMENTUM ? p.mom_state + nh * K * V : nullptr;
      // With chunk_size 1 the chunk-start memory is the running memory.
      const acc_t* Mc = p.chunk_size > 1 ? chunk_mem.data() : M;

      for (int64_t t = start; t < stop; ++t) {
        if (p.chunk_size > 1 && (t - start) % p.chunk_size == 0) {
          std::copy(M, M + K * V, chunk_mem.begin());  // M^c
        }
        const int64_t row = (b * p.T + t) * H + h;  // token (b, t), head h
        const scalar_t* k_in = p.k + row * K;
        const scalar_t* q_in = p.q + row * K;
        const scalar_t* v_in = p.v + row * V;
        for (int64_t i = 0; i < K; ++i) {
          k_row[i] = static_cast<acc_t>(k_in[i]);
          q_row[i] = static_cast<acc_t>(q_in[i]);
        }
        const acc_t eta = p.lr[row], alpha = p.retention[row];
        const acc_t mu = HAS_MOMENTUM ? p.momentum[row] : acc_t(0);

        // r_t = k_t M^c − v_t; with dgd also k_t M_{t−1}.
        std::fill(r.begin(), r.end(), acc_t(0));
        for (int64_t i = 0; i < K; ++i) {
          row_axpy(r.data(), Mc + i * V, k_row[i], V);
        }
        if (DGD) {
          if (p.chunk_size > 1) {
            std::fill(kM.begin(), kM.end(), acc_t(0));
            for (int64_t i = 0; i < K; ++i) {
              row_axpy(kM.data(), M + i * V, k_row[i], V);
            }
          } else {
            std::copy(r.begin(), r.end(), kM.begin());
          }
        }
        for (int64_t j = 0; j < V; ++j) {
          r[j] -= static_cast<acc_t>(v_in[j]);
        }

        // S_t, M_t row by row, and o_t = q_t M_t accumulated on the way.
        std::fill(o_row.begin(), o_row.end(), acc_t(0));
        for (int64_t i = 0; i < K; ++i) {
          update_row<HAS_MOMENTUM, DGD>(M + i * V, HAS_MOMENTUM ? S + i * V : nullptr, r.data(),
                                        DGD ? kM.data() : nullptr, alpha, mu, eta * k_row[i], q_row[i],
                                        o_row.data(), V);
        }
        scalar_t* o_out = p.o + row * V;
        for (int64_t j = 0; j < V; ++j) {
          o_out[j] = static_cast<scalar_t>(p.scale * o_row[j]);
        }
      }
    }
  });
}

template <typename scalar_t, typename acc_t>
void dispatch_flags(const RecurrentParams<scalar_t, acc_t>& p, bool dgd) {
  dispatch_momentum_dgd(p.momentum != nullptr, dgd, [&]<bool HAS_MOMENTUM, bool DGD>() {
    recurrent_fwd_cpu<scalar_t, acc_t, HAS_MOMENTUM, DGD>(p);
  });
}

}  // namespace

std::tuple<at::Tensor, at::Tensor, at::Tensor> linear_memory_recurrent_cpu(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& v, const at::Tensor& lr,
    const at::Tensor& retention, const std::optional<at::Tensor>& momentum,
    const std::optional<at::Tensor>& initial_memory, const std::optional<at::Tensor>& initial_momentum,
    const std::optional<at::Tensor>& cu_seqlens, int64_t chunk_size, double scale, bool dgd) {
  const RecurrentSizes s = check_linear_memory_args("linear_memory_recurrent: ", q, k, v, lr, retention, momentum,
                                                     initial_memory, initial_momentum, cu_seqlens, chunk_size,
                                                     at::kCPU, /*check_cu_seqlens_values=*/true);
  const RecurrentTensors t = prepare_linear_memory_recurrent(q, k, v, lr, retention, momentum, initial_memory,
                                                             initial_momentum, cu_seqlens, s);

  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, q.scalar_type(), "linear_memory_recurrent_cpu", [&] {
    using acc_t = std::conditional_t<std::is_same_v<scalar_t, double>, double, float>;
    RecurrentParams<scalar_t, acc_t> p;
    fill_linear_memory_inputs(p, t, t.cu_seqlens, s, chunk_size, scale);
    p.o = t.o.mutable_data_ptr<scalar_t>();
    p.memory = t.final_memory.mutable_data_ptr<acc_t>();
    p.mom_state = momentum.has_value() ? t.final_momentum.mutable_data_ptr<acc_t>() : nullptr;
    p.N = s.N;
    dispatch_flags(p, dgd);
  });
  return {t.o, t.final_memory, t.final_momentum};
}

}  // namespace linear_memory
}  // namespace nested_kernels
