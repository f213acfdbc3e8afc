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

#include <cstdint>

#ifndef NK_HOST_DEVICE
#if defined(__CUDACC__)
#define NK_HOST_DEVICE __host__ __device__
#else
#define NK_HOST_DEVICE
#endif
#endif

// The chunk template is host-device; a policy's members may be device-only (mma.sync).
#ifndef NK_EXEC_CHECK_DISABLE
#if defined(__CUDACC__)
#define NK_EXEC_CHECK_DISABLE _Pragma("nv_exec_check_disable")
#else
#define NK_EXEC_CHECK_DISABLE
#endif
#endif

namespace nested_kernels {
namespace linear_memory {

// Inputs and outputs of one `linear_memory_chunked_fwd` call, contiguous (the host makes them
// so), gates and states in acc_t.
template <typename scalar_t, typename acc_t>
struct ChunkedParams {
  const scalar_t* q;          // [B, T, H, K]
  const scalar_t* k;          // [B, T, H, K]
  const scalar_t* v;          // [B, T, H, V]
  const acc_t* lr;            // [B, T, H] η
  const acc_t* retention;     // [B, T, H] α
  const acc_t* momentum;      // [B, T, H] μ, null without momentum
  const int64_t* cu_seqlens;  // [N + 1] token offsets into batch row 0, null when dense
  scalar_t* o;                // [B, T, H, V]
  acc_t* memory;              // [N, H, K, V] initial memory on entry, final memory on exit
  acc_t* mom_state;           // [N, H, K, V] the same for S, null without momentum
  acc_t* chunk_memory;        // [B, H, NC, K, V] M^c of every chunk
  acc_t* chunk_momentum;      // [B, H, NC, K, V] S^c of every chunk, null without momentum
  int64_t T;                  // tokens per batch row
  int64_t H;                  // heads
  int64_t K;                  // rows of M
  int64_t V;                  // columns of M
  int64_t NC;                 // chunk slots per (batch row, head) of chunk_memory
  int64_t chunk_size;         // tokens per chunk C, 1 ≤ C ≤ BT
  acc_t scale;                // read scale
};

// Tile sizes of one call: BT ≥ C token rows, BK ≥ K key rows, BV value columns per tile. Rows
// and columns past the real ones are zero-padded.
struct ChunkTileShape {
  int BT;
  int BK;
  int BV;
};

// The tiles of a call, rounded up to `granule` (16: mma.sync's m16n8k16 steps; the CPU kernel
// uses the same tiles). BV = 32, 16 for K > 128, so that the state tile and the key tiles fit in
// shared memory together.
NK_HOST_DEVICE inline ChunkTileShape chunk_tile_shape(int64_t chunk_size, int64_t K, int granule) {
  const auto up = [granule](int64_t x) { return static_cast<int>((x + granule - 1) / granule * granule); };
  const int BK = up(K < 1 ? 1 : K);
  return ChunkTileShape{up(chunk_size), BK, BK > 128 ? 16 : 32};
}

// Scratch of one call (shared memory on CUDA). op_t tiles feed the products, acc_t is the state.
template <typename op_t, typename acc_t>
struct ChunkWorkspace {
  op_t* q;        // [BT, BK] Q of the chunk
  op_t* k;        // [BT, BK] K of the chunk
  op_t* v;        // [BT, BV] V of the chunk
  op_t* a;        // [BT, BT] tril(Q Kᵀ) ⊙ G
  op_t* r;        // [BT, BV] R
  op_t* rg;       // [BT, BV] G_r ⊙ R (row j scaled by G_{r,j})
  op_t* rn;       // [BT, BV] n_r ⊙ R (momentum only)
  op_t* ae;       // [BT, BT] tril(Q Kᵀ) ⊙ E (dgd only)
  op_t* ak;       // [BT, BT] strictly lower (K Kᵀ) ⊙ G shifted down a row (dgd only)
  op_t* wop;      // [BT, BV] W (dgd only)
  acc_t* mem;     // [BK, BV] the memory tile
  acc_t* mom;     // [BK, BV] the momentum tile (momentum only)
  acc_t* g;       // [BT, BT] G
  acc_t* o;       // [BT, BV] diag(β) Q M^c + diag(f) Q S^c
  acc_t* e;       // [BT, BT] E (dgd only)
  acc_t* l;       // [BT, BT] L (dgd only)
  acc_t* pw;      // [BT, BV] P, then W in its place (dgd only)
  acc_t* gates;   // [9, BT] η, α, μ, β, f, G_{r,·}, n_{·,r}, E_{r,·}, and (β_r, f_r, m_r)
};

// Bytes of the workspace; `carve_chunk_workspace` lays it out in that many bytes (16-aligned).
template <typename op_t, typename acc_t>
NK_HOST_DEVICE inline int64_t chunk_workspace_bytes(const ChunkTileShape& s, bool has_momentum, bool dgd) {
  const auto al = [](int64_t bytes) { return (bytes + 15) / 16 * 16; };
  const int64_t BT = s.BT, BK = s.BK, BV = s.BV;
  const int64_t op = sizeof(op_t), acc = sizeof(acc_t);
  return al(BT * BK * op) * 2 + al(BT * BV * op) * (3 + has_momentum + dgd) + al(BT * BT * op) * (1 + 2 * dgd) +
         al(BK * BV * acc) * (1 + has_momentum) + al(BT * BT * acc) * (1 + 2 * dgd) +
         al(BT * BV * acc) * (1 + dgd) + al(9 * BT * acc);
}

template <typename op_t, typename acc_t>
NK_HOST_DEVICE inline ChunkWorkspace<op_t, acc_t> carve_chunk_workspace(char* base, const ChunkTileShape& s,
                                                                        bool has_momentum, bool dgd) {
  const int64_t BT = s.BT, BK = s.BK, BV = s.BV;
  char* at = base;
  const auto take = [&at](int64_t bytes) {
    char* p = at;
    at += (bytes + 15) / 16 * 16;
    return p;
  };
  ChunkWorkspace<op_t, acc_t> w;
  w.q = reinterpret_cast<op_t*>(take(BT * BK * sizeof(op_t)));
  w.k = reinterpret_cast<op_t*>(take(BT * BK * sizeof(op_t)));
  w.v = reinterpret_cast<op_t*>(take(BT * BV * sizeof(op_t)));
  w.a = reinterpret_cast<op_t*>(take(BT * BT * sizeof(op_t)));
  w.r = reinterpret_cast<op_t*>(take(BT * BV * sizeof(op_t)));
  w.rg = reinterpret_cast<op_t*>(take(BT * BV * sizeof(op_t)));
  w.rn = has_momentum ? reinterpret_cast<op_t*>(take(BT * BV * sizeof(op_t))) : nullptr;
  w.ae = dgd ? reinterpret_cast<op_t*>(take(BT * BT * sizeof(op_t))) : nullptr;
  w.ak = dgd ? reinterpret_cast<op_t*>(take(BT * BT * sizeof(op_t))) : nullptr;
  w.wop = dgd ? reinterpret_cast<op_t*>(take(BT * BV * sizeof(op_t))) : nullptr;
  w.mem = reinterpret_cast<acc_t*>(take(BK * BV * sizeof(acc_t)));
  w.mom = has_momentum ? reinterpret_cast<acc_t*>(take(BK * BV * sizeof(acc_t))) : nullptr;
  w.g = reinterpret_cast<acc_t*>(take(BT * BT * sizeof(acc_t)));
  w.o = reinterpret_cast<acc_t*>(take(BT * BV * sizeof(acc_t)));
  w.e = dgd ? reinterpret_cast<acc_t*>(take(BT * BT * sizeof(acc_t))) : nullptr;
  w.l = dgd ? reinterpret_cast<acc_t*>(take(BT * BT * sizeof(acc_t))) : nullptr;
  w.pw = dgd ? reinterpret_cast<acc_t*>(take(BT * BV * sizeof(acc_t))) : nullptr;
  w.gates = reinterpret_cast<acc_t*>(take(9 * BT * sizeof(acc_t)));
  return w;
}

// First chunk slot of sequence n in chunk_memory: the chunks of the sequences before it.
NK_HOST_DEVICE inline int64_t varlen_chunk_offset(const int64_t* cu_seqlens, int64_t n, int64_t chunk_size) {
  int64_t c = 0;
  for (int64_t m = 0; m < n; ++m) {
    c += (cu_seqlens[m + 1] - cu_seqlens[m] + chunk_size - 1) / chunk_size;
  }
  return c;
}

// Chunk slots per (batch row, head): every chunk of a dense row; with cu_seqlens an upper bound
// of Σ_n ceil(T_n / C) known without reading the offsets (slots past the last chunk stay zero).
NK_HOST_DEVICE inline int64_t chunk_slots(int64_t T, int64_t N, int64_t chunk_size, bool varlen) {
  return varlen ? T / chunk_size + N : (T + chunk_size - 1) / chunk_size;
}

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
  const int64_t i_n = i_nh / H, i_h = i_nh % H;
  const int64_t o_v = i_vt * BV;  // first column of the tile
  const int64_t b = p.cu_seqlens ? 0 : i_n;
  const int64_t bos = p.cu_seqlens ? p.cu_seqlens[i_n] : 0;
  const int64_t eos = p.cu_seqlens ? p.cu_seqlens[i_n + 1] : p.T;
  const int64_t c0 = p.cu_seqlens ? varlen_chunk_offset(p.cu_seqlens, i_n, C) : 0;
  const scalar_t zero = static_cast<scalar_t>(acc_t(0));

  acc_t* eta = w.gates;
  acc_t* alpha = w.gates + BT;
  acc_t* mu = w.gates + 2 * BT;
  acc_t* beta = w.gates + 3 * BT;
  acc_t* fgate = w.gates + 4 * BT;
  acc_t* g_last = w.gates + 5 * BT;  // G_{r,j}
  acc_t* n_last = w.gates + 6 * BT;  // n_{j,r}
  acc_t* e_last = w.gates + 7 * BT;  // E_{r,j}
  acc_t* last = w.gates + 8 * BT;    // β_r, f_r, m_r

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

  for (int64_t t0 = bos, i_c = c0; t0 < eos; t0 += C, ++i_c) {
    const int L = static_cast<int>(eos - t0 < C ? eos - t0 : C);  // real tokens of the chunk
    const int64_t row0 = (b * p.T + t0) * H + i_h;                 // token row of (b, t0, h)

    // M^c, S^c to chunk_memory; the chunk's q, k, v and gates (padding: zeros, η = 0, α = μ = 1).
    const int64_t o_chunk = ((b * H + i_h) * p.NC + i_c) * K * V;
    pol.for_each(BK * BV, [&](int idx) {
      const int i = idx / BV, j = idx % BV;
      if (i < K && o_v + j < V) {
        p.chunk_memory[o_chunk + i * V + o_v + j] = w.mem[idx];
        if (HAS_MOMENTUM) p.chunk_momentum[o_chunk + i * V + o_v + j] = w.mom[idx];
      }
    });
    pol.for_each(BT * BK, [&](int idx) {
      const int i = idx / BK, j = idx % BK;
      const bool in = i < L && j < K;
      const int64_t at = (row0 + static_cast<int64_t>(i) * H) * K + j;
      w.q[idx] = in ? p.q[at] : zero;
      w.k[idx] = in ? p.k[at] : zero;
    });
    pol.for_each(BT * BV, [&](int idx) {
      const int i = idx / BV, j = idx % BV;
      w.v[idx] = i < L && o_v + j < V ? p.v[(row0 + static_cast<int64_t>(i) * H) * V + o_v + j] : zero;
    });
    pol.for_each(BT, [&](int i) {
      const int64_t at = row0 + static_cast<int64_t>(i) * H;
      eta[i] = i < L ? p.lr[at] : acc_t(0);
      alpha[i] = i < L ? p.retention[at] : acc_t(1);
      mu[i] = HAS_MOMENTUM && i < L ? p.momentum[at] : acc_t(HAS_MOMENTUM ? 1 : 0);
    });
    pol.sync();

    // Gates. Column j of G: n_{j,i} = μ_i n_{j,i−1} (n_{j,j} = η_j), G_ij = α_i G_{i−1,j} + n_{j,i};
    // of E: E_jj = η_j, E_ij = α_i E_{i−1,j}.
    pol.for_each(BT, [&](int j) {
      acc_t n = eta[j], g = eta[j], e = eta[j];
      for (int i = 0; i < j; ++i) {
        w.g[i * BT + j] = acc_t(0);
        if (DGD) w.e[i * BT + j] = acc_t(0);
      }
      w.g[j * BT + j] = g;
      if (DGD) w.e[j * BT + j] = e;
      g_last[j] = j == L - 1 ? g : acc_t(0);
      n_last[j] = j == L - 1 ? n : acc_t(0);
      e_last[j] = DGD && j == L - 1 ? e : acc_t(0);
      for (int i = j + 1; i < BT; ++i) {
        n = HAS_MOMENTUM ? mu[i] * n : acc_t(0);
        g = alpha[i] * g + n;
        w.g[i * BT + j] = g;
        if (DGD) {
          e = alpha[i] * e;
          w.e[i * BT + j] = e;
        }
        if (i == L - 1) {
          g_last[j] = g;
          n_last[j] = n;
          if (DGD) e_last[j] = e;
        }
      }
    });
    // Rows: β_i = α_i β_{i−1}, m_i = μ_i m_{i−1}, f_i = α_i f_{i−1} + m_i (β_{−1} = m_{−1} = 1, f_{−1} = 0).
    pol.single([&] {
      acc_t bt = 1, m = 1, f = 0;
      for (int i = 0; i < BT; ++i) {
        bt = alpha[i] * bt;
        m = HAS_MOMENTUM ? mu[i] * m : acc_t(0);
        f = alpha[i] * f + m;
        beta[i] = bt;
        fgate[i] = f;
        if (i == L - 1) {
          last[0] = bt;
          last[1] = f;
          last[2] = m;
        }
      }
    });
    pol.sync();

    // A = tril(Q Kᵀ) ⊙ G;  R = K M^c − V (and its row-scaled copies);  O = β ⊙ Q M^c + f ⊙ Q S^c.
    // With dgd: tril(Q Kᵀ) ⊙ E, L, the shifted (K Kᵀ) ⊙ G and P's first terms.
    pol.template gemm<false, true>(BT, BT, BK, w.q, BK, w.k, BK, false, [&](int i, int j, acc_t x) {
      w.a[i * BT + j] = j <= i ? static_cast<scalar_t>(x * w.g[i * BT + j]) : zero;
      if (DGD) w.ae[i * BT + j] = j <= i ? static_cast<scalar_t>(x * w.e[i * BT + j]) : zero;
    });
    if (DGD) {
      pol.template gemm<false, true>(BT, BT, BK, w.k, BK, w.k, BK, false, [&](int i, int j, acc_t x) {
        const bool below = j < i;
        w.l[i * BT + j] = below ? x * w.e[(i - 1) * BT + j] : acc_t(0);
        w.ak[i * BT + j] = below ? static_cast<scalar_t>(x * w.g[(i - 1) * BT + j]) : zero;
      });
    }
    pol.template gemm<false, false>(BT, BV, BK, w.k, BK, w.mem, BV, false, [&](int i, int j, acc_t x) {
      const acc_t r = x - static_cast<acc_t>(w.v[i * BV + j]);
      w.r[i * BV + j] = static_cast<scalar_t>(r);
      if (!DGD) w.rg[i * BV + j] = static_cast<scalar_t>(g_last[i] * r);
      if (HAS_MOMENTUM) w.rn[i * BV + j] = static_cast<scalar_t>(n_last[i] * r);
      if (DGD) w.pw[i * BV + j] = (i > 0 ? beta[i - 1] : acc_t(1)) * x;
    });
    if (DGD && HAS_MOMENTUM) {  // same m × n as the product above: the same thread owns w.pw[i, j]
      pol.template gemm<false, false>(BT, BV, BK, w.k, BK, w.mom, BV, false, [&](int i, int j, acc_t x) {
        if (i > 0) w.pw[i * BV + j] += fgate[i - 1] * x;
      });
    }
    pol.template gemm<false, false>(BT, BV, BK, w.q, BK, w.mem, BV, false,
                                    [&](int i, int j, acc_t x) { w.o[i * BV + j] = beta[i] * x; });
    if (HAS_MOMENTUM) {  // same m × n as the product above: the same thread owns w.o[i, j]
      pol.template gemm<false, false>(BT, BV, BK, w.q, BK, w.mom, BV, false,
                                      [&](int i, int j, acc_t x) { w.o[i * BV + j] += fgate[i] * x; });
    }
    pol.sync();

    if (DGD) {
      // P −= ((K Kᵀ) ⊙ G_{i−1}) R, then (I + L) W = P by forward substitution, one column per thread.
      pol.template gemm<false, false>(BT, BV, BT, w.ak, BT, w.r, BV, true,
                                      [&](int i, int j, acc_t x) { w.pw[i * BV + j] -= x; });
      pol.sync();
      pol.for_each(BV, [&](int j) {
        for (int i = 0; i < BT; ++i) {
          acc_t x = w.pw[i * BV + j];
          for (int l = 0; l < i; ++l) x -= w.l[i * BT + l] * w.pw[l * BV + j];
          w.pw[i * BV + j] = x;
          w.wop[i * BV + j] = static_cast<scalar_t>(x);
          w.rg[i * BV + j] = static_cast<scalar_t>(g_last[i] * static_cast<acc_t>(w.r[i * BV + j]) + e_last[i] * x);
        }
      });
      pol.sync();
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
    const acc_t beta_r = last[0], f_r = last[1], m_r = last[2];
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
