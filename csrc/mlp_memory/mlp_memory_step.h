// Decode step of `mlp_memory` (SPEC §3), shared by the CPU and CUDA kernels of
// `mlp_memory_step`: the token loop of one (sequence, head). No ATen, so nvcc device code can
// use it. A token is seven phases, each a loop over independent outputs (no cross-index
// reductions) separated by barriers; the `Par` policy runs a phase: serially on the CPU, split
// over a block's threads (and __syncthreads) on CUDA. The element updates of W1/S1 and W2/S2
// are those of the linear memory (linear_memory_recurrent.h): W1 is a linear layer with keys
// k_t and errors δ_t (dgd applies), W2 one with keys a_t and errors r_t.
#pragma once

#include <cmath>
#include <cstdint>

#include "common/memory_input_pointers.h"
#include "linear_memory/linear_memory_recurrent.h"

namespace nested_kernels {
namespace mlp_memory {

using linear_memory::memory_step;
using linear_memory::momentum_step;

// Inputs (memory_input_pointers.h, [N, T, H, ·]) and state of one `mlp_memory_step` call,
// contiguous; gates and states in acc_t.
template <typename scalar_t, typename acc_t>
struct StepParams : MemoryInputPointers<scalar_t, acc_t> {
  scalar_t* o;               // [N, T, H, V]
  acc_t* w1;                 // [N, H, K, Dh] running W1_t, updated in place
  acc_t* w2;                 // [N, H, Dh, V] running W2_t, updated in place
  acc_t* chunk_w1;           // [N, H, K, Dh] chunk-start W1^c, updated in place
  acc_t* chunk_w2;           // [N, H, Dh, V] chunk-start W2^c, updated in place
  acc_t* s1;                 // [N, H, K, Dh] running momentum S1_t, null without momentum
  acc_t* s2;                 // [N, H, Dh, V] running momentum S2_t, null without momentum
  const int64_t* position;   // [N] tokens of the current chunk written before this call, in [0, chunk_size)
  int64_t T;                 // new tokens per sequence
  int64_t H;                 // heads
  int64_t K;                 // input width (rows of W1)
  int64_t Dh;                // hidden width (columns of W1, rows of W2)
  int64_t V;                 // output width (columns of W2)
  int64_t chunk_size;        // tokens per chunk, ≥ 1
  bool gelu;                 // φ = tanh-GELU, else SiLU
  bool residual;             // f(x) = x + φ(x W1) W2 (K == V)
  bool self_target;          // target_t = f_{W^c}(v_t) (K == V)
  bool read_current;         // o_t = f_{W_t}(q_t), else f_{W^c}(q_t)
};

// φ(z) and φ'(z) (nested_kernels/common/activations.py).
template <typename acc_t>
NK_HOST_DEVICE inline void activation(bool gelu, acc_t z, acc_t& phi, acc_t& dphi) {
  using std::exp;
  using std::tanh;
  if (gelu) {
    const acc_t c = acc_t(0.7978845608028654);  // sqrt(2 / π)
    const acc_t th = tanh(c * (z + acc_t(0.044715) * z * z * z));
    phi = acc_t(0.5) * z * (1 + th);
    dphi = acc_t(0.5) * (1 + th) + acc_t(0.5) * z * (1 - th * th) * c * (1 + 3 * acc_t(0.044715) * z * z);
  } else {
    const acc_t s = 1 / (1 + exp(-z));
    phi = z * s;
    dphi = s * (1 + z * (1 - s));
  }
}

// Per-(sequence, head) scratch: 5 · Dh + V values of acc_t.
template <typename acc_t>
struct StepScratch {
  acc_t* a;      // [Dh] a_t = φ(k_t W1^c)
  acc_t* da;     // [Dh] φ'(k_t W1^c)
  acc_t* kw;     // [Dh] k_t W1_{t−1} (dgd)
  acc_t* x;      // [Dh] φ(v_t W1^c) (self_target), then φ(q_t W1) (the read)
  acc_t* delta;  // [Dh] δ_t
  acc_t* r;      // [V] r_t

  NK_HOST_DEVICE static int64_t size(int64_t Dh, int64_t V) { return 5 * Dh + V; }
  NK_HOST_DEVICE StepScratch(acc_t* base, int64_t Dh)
      : a(base), da(base + Dh), kw(base + 2 * Dh), x(base + 3 * Dh), delta(base + 4 * Dh), r(base + 5 * Dh) {}
};

// Σ_i x[i] W[i, j] over the rows of a row-major [rows, cols] matrix.
template <typename scalar_t, typename acc_t>
NK_HOST_DEVICE inline acc_t dot_column(const scalar_t* x, const acc_t* w, int64_t rows, int64_t cols, int64_t j) {
  acc_t sum = 0;
  for (int64_t i = 0; i < rows; ++i) sum += static_cast<acc_t>(x[i]) * w[i * cols + j];
  return sum;
}

// The T new tokens of (sequence, head) nh = n · H + h: updates W, W^c, S in place and writes
// o[n, :, h, :]. `par.loop(n, f)` runs f(0..n−1), `par.sync()` is a barrier.
template <bool HAS_MOMENTUM, bool DGD, typename Par, typename scalar_t, typename acc_t>
NK_HOST_DEVICE inline void step_head(const StepParams<scalar_t, acc_t>& p, int64_t nh, StepScratch<acc_t> sc,
                                     const Par& par) {
  const int64_t n = nh / p.H, h = nh % p.H, K = p.K, Dh = p.Dh, V = p.V;
  acc_t* NK_RESTRICT w1 = p.w1 + nh * K * Dh;
  acc_t* NK_RESTRICT w2 = p.w2 + nh * Dh * V;
  acc_t* NK_RESTRICT w1c = p.chunk_w1 + nh * K * Dh;
  acc_t* NK_RESTRICT w2c = p.chunk_w2 + nh * Dh * V;
  acc_t* NK_RESTRICT s1 = HAS_MOMENTUM ? p.s1 + nh * K * Dh : nullptr;
  acc_t* NK_RESTRICT s2 = HAS_MOMENTUM ? p.s2 + nh * Dh * V : nullptr;
  int64_t pos = p.position[n];
  for (int64_t t = 0; t < p.T; ++t, ++pos) {
    if (pos == p.chunk_size) pos = 0;
    if (pos == 0) {  // W^c: the weights at the chunk start
      par.loop(K * Dh, [&](int64_t e) { w1c[e] = w1[e]; });
      par.loop(Dh * V, [&](int64_t e) { w2c[e] = w2[e]; });
      par.sync();
    }
    const int64_t row = (n * p.T + t) * p.H + h;  // token (n, t), head h
    const scalar_t* k = p.k + row * K;
    const scalar_t* q = p.q + row * K;
    const scalar_t* v = p.v + row * V;
    const acc_t eta = p.lr[row], alpha = p.retention[row];
    const acc_t mu = HAS_MOMENTUM ? p.momentum[row] : acc_t(0);

    // z_t = k_t W1^c, a_t = φ(z_t); [dgd] k_t W1_{t−1}; [self_target] φ(v_t W1^c)
    par.loop(Dh, [&](int64_t j) {
      activation(p.gelu, dot_column(k, w1c, K, Dh, j), sc.a[j], sc.da[j]);
      if (DGD) sc.kw[j] = dot_column(k, w1, K, Dh, j);
      if (p.self_target) {
        acc_t unused;
        activation(p.gelu, dot_column(v, w1c, K, Dh, j), sc.x[j], unused);
      }
    });
    par.sync();
    // r_t = f_{W^c}(k_t) − target_t, target_t = f_{W^c}(v_t) if self_target else v_t
    par.loop(V, [&](int64_t c) {
      acc_t r = dot_column(sc.a, w2c, Dh, V, c) + (p.residual ? static_cast<acc_t>(k[c]) : acc_t(0));
      if (p.self_target) {
        r -= dot_column(sc.x, w2c, Dh, V, c) + (p.residual ? static_cast<acc_t>(v[c]) : acc_t(0));
      } else {
        r -= static_cast<acc_t>(v[c]);
      }
      sc.r[c] = r;
    });
    par.sync();
    // δ_t = (r_t W2^cᵀ) ⊙ φ'(z_t)
    par.loop(Dh, [&](int64_t d) {
      acc_t sum = 0;
      for (int64_t c = 0; c < V; ++c) sum += sc.r[c] * w2c[d * V + c];
      sc.delta[d] = sum * sc.da[d];
    });
    par.sync();
    // S1_t = μ_t S1_{t−1} − η_t k_tᵀ δ_t;  W1_t = α_t W1_{t−1} + S1_t − [dgd] η_t k_tᵀ (k_t W1_{t−1})
    par.loop(K * Dh, [&](int64_t e) {
      const int64_t i = e / Dh, j = e % Dh;
      const acc_t eta_k = eta * static_cast<acc_t>(k[i]);
      const acc_t s_e = momentum_step<HAS_MOMENTUM>(mu, HAS_MOMENTUM ? s1[e] : acc_t(0), eta_k, sc.delta[j]);
      if (HAS_MOMENTUM) s1[e] = s_e;
      w1[e] = memory_step<DGD>(alpha, w1[e], s_e, eta_k, DGD ? sc.kw[j] : acc_t(0));
    });
    // S2_t = μ_t S2_{t−1} − η_t a_tᵀ r_t;  W2_t = α_t W2_{t−1} + S2_t
    par.loop(Dh * V, [&](int64_t e) {
      const int64_t d = e / V, c = e % V;
      const acc_t eta_a = eta * sc.a[d];
      const acc_t s_e = momentum_step<HAS_MOMENTUM>(mu, HAS_MOMENTUM ? s2[e] : acc_t(0), eta_a, sc.r[c]);
      if (HAS_MOMENTUM) s2[e] = s_e;
      w2[e] = memory_step<false>(alpha, w2[e], s_e, eta_a, acc_t(0));
    });
    par.sync();
    // o_t = f_{W_t}(q_t) (read="current") or f_{W^c}(q_t) (read="chunk_start")
    const acc_t* rw1 = p.read_current ? w1 : w1c;
    const acc_t* rw2 = p.read_current ? w2 : w2c;
    par.loop(Dh, [&](int64_t j) {
      acc_t unused;
      activation(p.gelu, dot_column(q, rw1, K, Dh, j), sc.x[j], unused);
    });
    par.sync();
    par.loop(V, [&](int64_t c) {
      acc_t o = dot_column(sc.x, rw2, Dh, V, c);
      if (p.residual) o += static_cast<acc_t>(q[c]);
      p.o[row * V + c] = static_cast<scalar_t>(o);
    });
    par.sync();  // the next token's phases overwrite the scratch and, at a chunk start, W^c
  }
}

}  // namespace mlp_memory
}  // namespace nested_kernels
