// Tile policies: how a tiled algorithm written once (e.g. linear_memory/linear_memory_chunk.h)
// spreads its work over threads and multiplies its tiles. A policy has
//   for_each(n, f)   f(i) for i in [0, n), spread over the group's threads
//   single(f)        f() on one thread of the group
//   sync()           every thread of the group waits for the others (their writes visible)
//   gemm<TRANS_A, TRANS_B>(m, n, kd, a, lda, b, ldb, lower_a, epi)
//                    epi(i, j, Σ_l A(i, l) B(l, j)) once per (i, j) in [0, m) × [0, n), with
//                    A(i, l) = TRANS_A ? a[l·lda + i] : a[i·lda + l],
//                    B(l, j) = TRANS_B ? b[j·ldb + l] : b[l·ldb + j];
//                    `lower_a` promises A(i, l) = 0 for l > i (the product may skip them).
//                    The same thread calls epi(i, j) in every product of the same m × n, so
//                    consecutive products may update one buffer without a sync between them.
// LoopTilePolicy does all of this with plain loops in acc_t: one thread on the CPU, or every
// thread of a CUDA block (each output element a dot product on one thread, the fp32 path).
// linear_memory/cuda/tile_policy_mma.cuh multiplies on tensor cores.
#pragma once

#include "common/host_device.h"

namespace nested_kernels {

template <typename acc_t>
struct LoopTilePolicy {
  int tid;       // this thread's index in the group (0 on the CPU)
  int nthreads;  // threads of the group (1 on the CPU)

  template <typename F>
  NK_HOST_DEVICE void for_each(int n, F&& f) const {
    for (int i = tid; i < n; i += nthreads) f(i);
  }

  template <typename F>
  NK_HOST_DEVICE void single(F&& f) const {
    if (tid == 0) f();
  }

  NK_HOST_DEVICE void sync() const {
#if defined(__CUDA_ARCH__)
    __syncthreads();
#endif
  }

  template <bool TRANS_A, bool TRANS_B, typename a_t, typename b_t, typename Epi>
  NK_HOST_DEVICE void gemm(int m, int n, int kd, const a_t* a, int lda, const b_t* b, int ldb, bool lower_a,
                           Epi&& epi) const {
    for (int idx = tid; idx < m * n; idx += nthreads) {
      const int i = idx / n, j = idx % n;
      const int l_end = lower_a && i + 1 < kd ? i + 1 : kd;
      acc_t acc = 0;
      for (int l = 0; l < l_end; ++l) {
        const acc_t x = static_cast<acc_t>(TRANS_A ? a[l * lda + i] : a[i * lda + l]);
        const acc_t y = static_cast<acc_t>(TRANS_B ? b[j * ldb + l] : b[l * ldb + j]);
        acc += x * y;
      }
      epi(i, j, acc);
    }
  }
};

}  // namespace nested_kernels
