// Per-token arithmetic of `linear_memory` (SPEC §2), shared by the CPU kernel and the CUDA
// kernel. Pure arithmetic on raw pointers and scalars: no ATen, so nvcc device code can use it.
//
// Per (sequence, head), for token t with M^c the memory at the start of its chunk:
//   r_t = k_t M^c − v_t
//   S_t = μ_t S_{t−1} − η_t k_tᵀ r_t                         (μ ≡ 0 without momentum)
//   M_t = α_t M_{t−1} + S_t − [dgd] η_t k_tᵀ (k_t M_{t−1})
//   o_t = scale · q_t M_t
// Column j of M and S evolves independently of the other columns: element (i, j) needs only
// k_t[i], r_t[j] and (k_t M_{t−1})[j].
#pragma once

#include "common/host_device.h"

#include <cstdint>

namespace nested_kernels {
namespace linear_memory {

// S_t[i, j] = μ_t S_{t−1}[i, j] − (η_t k_t[i]) r_t[j]; `eta_k` is η_t k_t[i].
template <bool HAS_MOMENTUM, typename acc_t>
NK_HOST_DEVICE inline acc_t momentum_step(acc_t mu, acc_t s_prev, acc_t eta_k, acc_t r) {
  if (HAS_MOMENTUM) {
    return mu * s_prev - eta_k * r;
  }
  return -eta_k * r;
}

// M_t[i, j] = α_t M_{t−1}[i, j] + S_t[i, j] − [dgd] (η_t k_t[i]) (k_t M_{t−1})[j]; `p` is (k_t M_{t−1})[j].
template <bool DGD, typename acc_t>
NK_HOST_DEVICE inline acc_t memory_step(acc_t alpha, acc_t m_prev, acc_t s, acc_t eta_k, acc_t p) {
  if (DGD) {
    return alpha * m_prev + s - eta_k * p;
  }
  return alpha * m_prev + s;
}

// acc[0:V] += coef * row[0:V]: one row's share of a read `x M` (x a row vector).
template <typename acc_t>
NK_HOST_DEVICE inline void row_axpy(acc_t* NK_RESTRICT acc, const acc_t* NK_RESTRICT row, acc_t coef,
                                    int64_t V) {
  for (int64_t j = 0; j < V; ++j) {
    acc[j] += coef * row[j];
  }
}

// One token's update of row i of M (and S), V columns contiguous, and that row's share of the
// read: o[0:V] += q_t[i] · M_t[i, 0:V]. `s_row` is unused (may be null) without momentum;
// `p` is unused (may be null) without dgd.
template <bool HAS_MOMENTUM, bool DGD, typename acc_t>
NK_HOST_DEVICE inline void update_row(acc_t* NK_RESTRICT m_row, acc_t* NK_RESTRICT s_row,
                                      const acc_t* NK_RESTRICT r, const acc_t* NK_RESTRICT p,
                                      acc_t alpha, acc_t mu, acc_t eta_k, acc_t q_i,
                                      acc_t* NK_RESTRICT o, int64_t V) {
  for (int64_t j = 0; j < V; ++j) {
    const acc_t s = momentum_step<HAS_MOMENTUM>(mu, HAS_MOMENTUM ? s_row[j] : acc_t(0), eta_k, r[j]);
    if (HAS_MOMENTUM) {
      s_row[j] = s;
    }
    const acc_t m = memory_step<DGD>(alpha, m_row[j], s, eta_k, DGD ? p[j] : acc_t(0));
    m_row[j] = m;
    o[j] += q_i * m;
  }
}

}  // namespace linear_memory
}  // namespace nested_kernels
