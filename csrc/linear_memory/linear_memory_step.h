// Decode step of `linear_memory` (SPEC §2), shared by the CPU and CUDA kernels of
// `linear_memory_step`: the token loop of one column of one (sequence, head)'s state. No ATen,
// so nvcc device code can use it; the per-element steps are those of the recurrence
// (linear_memory_recurrent.h). Column j of M, M^c and S evolves on its own: the CPU kernel
// loops over columns, the CUDA kernel gives each column a thread.
#pragma once

#include <cstdint>

#include "common/memory_input_pointers.h"
#include "linear_memory/linear_memory_recurrent.h"

namespace nested_kernels {
namespace linear_memory {

// Inputs (memory_input_pointers.h, [N, T, H, ·]) and state of one `linear_memory_step` call,
// contiguous; gates and states in acc_t.
template <typename scalar_t, typename acc_t>
struct StepParams : MemoryInputPointers<scalar_t, acc_t> {
  scalar_t* o;               // [N, T, H, V]
  acc_t* memory;             // [N, H, K, V] running memory M_t, updated in place
  acc_t* chunk_memory;       // [N, H, K, V] chunk-start memory M^c, updated in place
  acc_t* mom_state;          // [N, H, K, V] running momentum S_t, null without momentum
  const int64_t* position;   // [N] tokens of the current chunk written before this call, in [0, chunk_size)
  int64_t T;                 // new tokens per sequence
  int64_t H;                 // heads
  int64_t K;                 // rows of M
  int64_t V;                 // columns of M (the row stride of the states)
  int64_t chunk_size;        // tokens per chunk, ≥ 1
  acc_t scale;               // read scale
};

// The T new tokens of column j of (sequence, head) nh = n · H + h: updates M, M^c, S in place
// and writes o[n, :, h, j].
template <bool HAS_MOMENTUM, bool DGD, typename scalar_t, typename acc_t>
NK_HOST_DEVICE inline void step_column(const StepParams<scalar_t, acc_t>& p, int64_t nh, int64_t j) {
  const int64_t n = nh / p.H, h = nh % p.H, V = p.V;
  acc_t* NK_RESTRICT m = p.memory + nh * p.K * V + j;
  acc_t* NK_RESTRICT mc = p.chunk_memory + nh * p.K * V + j;
  acc_t* NK_RESTRICT s = HAS_MOMENTUM ? p.mom_state + nh * p.K * V + j : nullptr;
  int64_t pos = p.position[n];
  for (int64_t t = 0; t < p.T; ++t, ++pos) {
    if (pos == p.chunk_size) pos = 0;
    if (pos == 0) {
      for (int64_t i = 0; i < p.K; ++i) mc[i * V] = m[i * V];  // M^c: the memory at the chunk start
    }
    const int64_t row = (n * p.T + t) * p.H + h;  // token (n, t), head h
    const scalar_t* k = p.k + row * p.K;
    const scalar_t* q = p.q + row * p.K;
    const acc_t eta = p.lr[row], alpha = p.retention[row];
    const acc_t mu = HAS_MOMENTUM ? p.momentum[row] : acc_t(0);

    // r_t[j] = k_t M^c[:, j] − v_t[j];  with dgd, kM = (k_t M_{t−1})[j]
    acc_t r = 0, kM = 0;
    for (int64_t i = 0; i < p.K; ++i) {
      const acc_t k_i = static_cast<acc_t>(k[i]);
      r += k_i * mc[i * V];
      if (DGD) kM += k_i * m[i * V];
    }
    r -= static_cast<acc_t>(p.v[row * V + j]);

    // S_t, M_t element by element (SPEC §2), and o_t[j] = scale · q_t M_t[:, j]
    acc_t o = 0;
    for (int64_t i = 0; i < p.K; ++i) {
      const acc_t eta_k = eta * static_cast<acc_t>(k[i]);
      const acc_t s_i = momentum_step<HAS_MOMENTUM>(mu, HAS_MOMENTUM ? s[i * V] : acc_t(0), eta_k, r);
      if (HAS_MOMENTUM) s[i * V] = s_i;
      const acc_t m_i = memory_step<DGD>(alpha, m[i * V], s_i, eta_k, kM);
      m[i * V] = m_i;
      o += static_cast<acc_t>(q[i]) * m_i;
    }
    p.o[row * V + j] = static_cast<scalar_t>(p.scale * o);
  }
}

}  // namespace linear_memory
}  // namespace nested_kernels
