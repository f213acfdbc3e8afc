// The chunked forward of `linear_memory` (SPEC §2 kernel notes), written once for the
// CPU kernel and the CUDA kernel. Pure arithmetic on raw pointers: no ATen, so nvcc device code
// can use it. The matrix products go through a tile policy (common/tile_policy.h: plain loops;
// linear_memory/cuda/tile_policy_mma.cuh: mma.sync), which also says how work is spread over
// threads and how they wait for each other.
//
// One call handles one (sequence, head) and one tile of BV value columns (every product is
// column-wise in V). Per chunk of C tokens, rows i = 0..L−1 its real tokens, M^c, S^c the state
// at its start (fp32), β_i = Π_{l≤i} α_l, m_i = Π_{l≤i} μ_l, f_i = Σ_{l≤i} (β_i/β_l) m_l,
// n_{j,i} = η_j Π_{j<s≤i} μ_s and G_ij = Σ_{l=j..i} (β_i/β_l) n_{j,l} (j ≤ i):
//   R  = K M^c − V
//   O  = scale · (diag(β) Q M^c + diag(f) Q S^c − (tril(Q Kᵀ) ⊙ G) R)
//   M' = β_r M^c + f_r S^c − Kᵀ (G_r ⊙ R),   S' = m_r S^c − Kᵀ (n_r ⊙ R)     (r = L − 1)
// With dgd, also E_ij = η_j Π_{j<s≤i} α_s and W_i = k_i M_{i−1} (the state before token i), the
// solution of the unit lower triangular system (I + L) W = P (triton_kernels/linear_memory/README.md):
//   L_ij = (k_i·k_j) E_{i−1,j},  P_i = β_{i−1} k_i M^c + f_{i−1} k_i S^c − Σ_{j<i} G_{i−1,j} (k_i·k_j) r_j
//   (j < i; β_{−1} = 1, f_{−1} = 0), solved by forward substitution, column by column of V, and
//   O −= scale · (tril(Q Kᵀ) ⊙ E) W,   M' −= Kᵀ (E_r ⊙ W).
// The gate products are running products over the chunk, not differences of log-cumsums:
// retention 0 (log 0) stays exact and no exp is needed.
#pragma once

#include "linear_memory/linear_memory_chunk_steps.h"

#include <cstdint>

namespace nested_kernels {
namespace linear_memory {

// Inputs (ChunkedInputs) and outputs of one `linear_memory_chunked_fwd` call, states in acc_t.
template <typename scalar_t, typename acc_t>
struct ChunkedParams : ChunkedInputs<scalar_t, acc_t> {
  scalar_t* o;                // [B, T, H, V]
  acc_t* memory;              // [N, H, K, V] initial memory on entry, final memory on exit
  acc_t* mom_state;           // [N, H, K, V] the same for S, null without momentum
  acc_t* chunk_memory;        // [B, H, NC, K, V] M^c of every chunk
  acc_t* chunk_momentum;      // [B, H, NC, K, V] S^c of every chunk, null without momentum
};

// The chunked forward of one (sequence, head) `i_nh` and value tile `i_vt` (columns
// i_vt·BV ..). Every thread of the policy's group calls it. Policy contract (see
// common/tile_policy.h): for_each, single, sync, and gemm<TRANS_A, TRANS_B>(m, n, kd, a, lda,
// b, ldb, lower_a, epi) calling epi(i, j, Σ_l A(i,l) B(l,j)) once per output element, with the
// same thread for (i, j) in every product of the same m × n.
NK_EXEC_CHECK_DISABLE
template <bool HAS_MOMENTUM, bool DGD, typename Policy, typename scalar_t, typename acc_t>
NK_HOST_DEVICE inline void linear_memory_chunked_fwd_tile(Policy& pol, const ChunkedParams<scalar_t, acc_t>& p,
                                                          const ChunkWorkspace<scalar_t, acc_t>& w,
                                                          const ChunkTileShape& sh, int64_t i_nh, int64_t i_vt) {
  const int BT = sh.BT, BK = sh.BK, BV = sh.BV;
  const int64_t H = p.H, K = p.K, V = p.V, C = p.chunk_size;
  const ChunkSequence seq(p, i_nh);
  const int64_t o_v = i_vt * BV;  // first column of the tile
  const ChunkGates<acc_t> gt(w.gates, BT);

  // The state tile, zero past K and V.
  acc_t* p_m = p.memory + i_nh * K * V;
  acc_t* p_s = HAS_MOMENTUM ? p.mom_state + i_nh * K * V : nullptr;
  pol.for_each(BK * BV, [&](int idx) {
    const int i = idx / BV, j = idx % BV;
    const bool in = i < K && o_v + j < V;
    w.mem[idx] = in ? p_m[i * V + o_v + j] : acc_t(0);
    if (HAS_MOMENTUM) w.mom[idx] = in ? p_s[i * V + o_v + j] : acc_t(0);
  });
  pol.sync();

  for (int64_t t0 = seq.bos, c = 0; t0 < seq.eos; t0 += C, ++c) {
    const int L = static_cast<int>(seq.eos - t0 < C ? seq.eos - t0 : C);  // real tokens of the chunk
    const int64_t row0 = seq.row(p, t0);

    // M^c, S^c to chunk_memory; the chunk's q, k, v and gates; its gates, R [, P, W].
    const int64_t o_chunk = seq.chunk(p, c);
    pol.for_each(BK * BV, [&](int idx) {
      const int i = idx / BV, j = idx % BV;
      if (i < K && o_v + j < V) {
        p.chunk_memory[o_chunk + i * V + o_v + j] = w.mem[idx];
        if (HAS_MOMENTUM) p.chunk_momentum[o_chunk + i * V + o_v + j] = w.mom[idx];
      }
    });
    chunk_load<HAS_MOMENTUM>(pol, p, w, sh, row0, L, o_v);
    pol.sync();
    chunk_gates<HAS_MOMENTUM, DGD>(pol, w, sh, L);
    chunk_residuals<HAS_MOMENTUM, DGD>(pol, w, sh);

    // O's first terms β ⊙ Q M^c + f ⊙ Q S^c [− (tril(Q Kᵀ) ⊙ E) W]: one m × n, one thread per element.
    pol.template gemm<false, false>(BT, BV, BK, w.q, BK, w.mem, BV, false,
                                    [&](int i, int j, acc_t x) { w.o[i * BV + j] = gt.beta[i] * x; });
    if (HAS_MOMENTUM) {  // same m × n as the product above: the same thread owns w.o[i, j]
      pol.template gemm<false, false>(BT, BV, BK, w.q, BK, w.mom, BV, false,
                                      [&](int i, int j, acc_t x) { w.o[i * BV + j] += gt.fgate[i] * x; });
    }
    if (DGD) {
      // w.o −= (tril(Q Kᵀ) ⊙ E) W: the same m × n as the read below, so the same thread reads it there.
      pol.template gemm<false, false>(BT, BV, BT, w.ae, BT, w.wop, BV, true,
                                      [&](int i, int j, acc_t x) { w.o[i * BV + j] -= x; });
    }

    // O = scale · (w.o − A R), stored;  M' = β_r M^c + f_r S^c − Kᵀ (G_r ⊙ R [+ E_r ⊙ W]);
    // S' = m_r S^c − Kᵀ (n_r ⊙ R).
    pol.template gemm<false, false>(BT, BV, BT, w.a, BT, w.r, BV, true, [&](int i, int j, acc_t x) {
      if (i < L && o_v + j < V) {
        const int64_t at = (row0 + static_cast<int64_t>(i) * H) * V + o_v + j;
        p.o[at] = static_cast<scalar_t>(p.scale * (w.o[i * BV + j] - x));
      }
    });
    pol.sync();  // the products above read w.mem, w.mom, updated below
    const acc_t beta_r = gt.last[0], f_r = gt.last[1], m_r = gt.last[2];
    pol.template gemm<true, false>(BK, BV, BT, w.k, BK, w.rg, BV, false, [&](int i, int j, acc_t x) {
      const int idx = i * BV + j;
      w.mem[idx] = beta_r * w.mem[idx] + (HAS_MOMENTUM ? f_r * w.mom[idx] : acc_t(0)) - x;
    });
    if (HAS_MOMENTUM) {  // same m × n: w.mom[i, j] was read above by this thread
      pol.template gemm<true, false>(BK, BV, BT, w.k, BK, w.rn, BV, false, [&](int i, int j, acc_t x) {
        const int idx = i * BV + j;
        w.mom[idx] = m_r * w.mom[idx] - x;
      });
    }
    pol.sync();
  }

  pol.for_each(BK * BV, [&](int idx) {
    const int i = idx / BV, j = idx % BV;
    if (i < K && o_v + j < V) {
      p_m[i * V + o_v + j] = w.mem[idx];
      if (HAS_MOMENTUM) p_s[i * V + o_v + j] = w.mom[idx];
    }
  });
}

}  // namespace linear_memory
}  // namespace nested_kernels
