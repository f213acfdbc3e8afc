// The steps of a chunk of `linear_memory` (SPEC §2 kernel notes) that the chunked forward
// (linear_memory_chunk.h) and the chunked backward (linear_memory_chunk_bwd.h) share: the tiles
// and their workspace, loading a chunk, building its gates, and R, P, W. Pure arithmetic on raw
// pointers over a tile policy (common/tile_policy.h), NK_HOST_DEVICE: the CPU kernel and the CUDA
// kernel both run it. Notation: linear_memory_chunk.h.
#pragma once

#include "common/host_device.h"
#include "linear_memory/linear_memory_inputs.h"

#include <cstdint>

namespace nested_kernels {
namespace linear_memory {

// The inputs of a chunked call (forward or backward); the forward's and the backward's parameters
// extend it. Its chunk_size C is at most the tile's BT.
template <typename scalar_t, typename acc_t>
struct ChunkedInputs : LinearMemoryInputs<scalar_t, acc_t> {
  int64_t NC;                 // chunk slots per (batch row, head) of the chunk-start states
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

// Lays buffers out one after the other, each 16-byte aligned, on two levels: from `base` while
// they fit in `budget` bytes, then from `spill` (CUDA: shared memory, then the block's slice of a
// global buffer; csrc/README.md "Workspace"). With null bases it only counts the bytes of each
// level (a workspace's sizes and its layout come from the same code, given the same budget).
struct WorkspaceCarver {
  char* base;
  char* spill = nullptr;
  int64_t budget = INT64_MAX;
  int64_t used = 0;     // bytes taken from base
  int64_t spilled = 0;  // bytes taken from spill

  template <typename T>
  NK_HOST_DEVICE T* take(int64_t elements, bool present = true) {
    if (!present) return nullptr;
    const int64_t bytes = (elements * static_cast<int64_t>(sizeof(T)) + 15) / 16 * 16;
    if (used + bytes <= budget) {
      T* p = base ? reinterpret_cast<T*>(base + used) : nullptr;
      used += bytes;
      return p;
    }
    T* p = spill ? reinterpret_cast<T*>(spill + spilled) : nullptr;
    spilled += bytes;
    return p;
  }
};

// Bytes of a workspace on each level of a WorkspaceCarver.
struct WorkspaceSplit {
  int64_t shared;  // from the first level, at most the budget
  int64_t global;  // from the second level (a block's slice), 0 when it all fits
};

// Scratch of one forward call (shared memory on CUDA). op_t tiles feed the products, acc_t is the
// state. The last four are the backward's (null in the forward).
template <typename op_t, typename acc_t>
struct ChunkWorkspace {
  op_t* q;        // [BT, BK] Q of the chunk
  op_t* k;        // [BT, BK] K of the chunk
  op_t* v;        // [BT, BV] V of the chunk
  op_t* a;        // [BT, BT] tril(Q Kᵀ) ⊙ G
  op_t* r;        // [BT, BV] R
  op_t* rg;       // [BT, BV] G_r ⊙ R (row j scaled by G_{r,j}) [+ E_r ⊙ W with dgd]
  op_t* rn;       // [BT, BV] n_r ⊙ R (momentum only)
  op_t* ae;       // [BT, BT] tril(Q Kᵀ) ⊙ E (dgd only)
  op_t* ak;       // [BT, BT] strictly lower (K Kᵀ) ⊙ G shifted down a row (dgd only)
  op_t* wop;      // [BT, BV] W (dgd only)
  acc_t* mem;     // [BK, BV] the memory tile
  acc_t* mom;     // [BK, BV] the momentum tile (momentum only)
  acc_t* g;       // [BT, BT] G
  acc_t* o;       // [BT, BV] diag(β) Q M^c + diag(f) Q S^c (forward only)
  acc_t* e;       // [BT, BT] E (dgd only)
  acc_t* l;       // [BT, BT] L (dgd only)
  acc_t* pw;      // [BT, BV] P, then W in its place (dgd only)
  acc_t* gates;   // [9, BT] η, α, μ, β, f, G_{r,·}, n_{·,r}, E_{r,·}, and (β_r, f_r, m_r)
  acc_t* qk = nullptr;    // [BT, BT] Q Kᵀ unmasked (backward)
  acc_t* kk = nullptr;    // [BT, BT] K Kᵀ unmasked (backward, dgd)
  acc_t* nmat = nullptr;  // [BT, BT] n_{j,i} at (i, j) (backward, momentum)
  acc_t* mrow = nullptr;  // [BT] m_i (backward, momentum)
};

// The forward's workspace laid out from `c` (the backward carves its own tiles after it).
template <typename op_t, typename acc_t>
NK_HOST_DEVICE inline ChunkWorkspace<op_t, acc_t> carve_chunk_workspace(WorkspaceCarver& c, const ChunkTileShape& s,
                                                                        bool has_momentum, bool dgd, bool forward) {
  const int64_t BT = s.BT, BK = s.BK, BV = s.BV;
  ChunkWorkspace<op_t, acc_t> w;
  w.q = c.take<op_t>(BT * BK);
  w.k = c.take<op_t>(BT * BK);
  w.v = c.take<op_t>(BT * BV);
  w.a = c.take<op_t>(BT * BT);
  w.r = c.take<op_t>(BT * BV);
  w.rg = c.take<op_t>(BT * BV);
  w.rn = c.take<op_t>(BT * BV, has_momentum);
  w.ae = c.take<op_t>(BT * BT, dgd);
  w.ak = c.take<op_t>(BT * BT, dgd);
  w.wop = c.take<op_t>(BT * BV, dgd);
  w.mem = c.take<acc_t>(BK * BV);
  w.mom = c.take<acc_t>(BK * BV, has_momentum);
  w.g = c.take<acc_t>(BT * BT);
  w.o = c.take<acc_t>(BT * BV, forward);
  w.e = c.take<acc_t>(BT * BT, dgd);
  w.l = c.take<acc_t>(BT * BT, dgd);
  w.pw = c.take<acc_t>(BT * BV, dgd);
  w.gates = c.take<acc_t>(9 * BT);
  return w;
}

template <typename op_t, typename acc_t>
NK_HOST_DEVICE inline ChunkWorkspace<op_t, acc_t> carve_chunk_workspace(char* base, char* spill, int64_t budget,
                                                                        const ChunkTileShape& s, bool has_momentum,
                                                                        bool dgd) {
  WorkspaceCarver c{base, spill, budget};
  return carve_chunk_workspace<op_t, acc_t>(c, s, has_momentum, dgd, /*forward=*/true);
}

// Bytes of the forward's workspace on each level with `budget` bytes of the first;
// `carve_chunk_workspace` with that budget lays it out in them.
template <typename op_t, typename acc_t>
NK_HOST_DEVICE inline WorkspaceSplit chunk_workspace_split(const ChunkTileShape& s, bool has_momentum, bool dgd,
                                                           int64_t budget) {
  WorkspaceCarver c{nullptr, nullptr, budget};
  carve_chunk_workspace<op_t, acc_t>(c, s, has_momentum, dgd, /*forward=*/true);
  return WorkspaceSplit{c.used, c.spilled};
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

// Where the tokens and chunks of the (sequence, head) `i_nh` are: batch row b, tokens [bos, eos) of
// it, its first chunk slot c0.
struct ChunkSequence {
  int64_t i_h, b, bos, eos, c0;

  template <typename Params>
  NK_HOST_DEVICE ChunkSequence(const Params& p, int64_t i_nh) {
    const int64_t i_n = i_nh / p.H;
    i_h = i_nh % p.H;
    b = p.cu_seqlens ? 0 : i_n;
    bos = p.cu_seqlens ? p.cu_seqlens[i_n] : 0;
    eos = p.cu_seqlens ? p.cu_seqlens[i_n + 1] : p.T;
    c0 = p.cu_seqlens ? varlen_chunk_offset(p.cu_seqlens, i_n, p.chunk_size) : 0;
  }

  // Token row of (b, t, h) in [B·T·H].
  template <typename Params>
  NK_HOST_DEVICE int64_t row(const Params& p, int64_t t) const {
    return (b * p.T + t) * p.H + i_h;
  }

  // Offset of chunk c (of this sequence) in the chunk-start states [B, H, NC, K, V].
  template <typename Params>
  NK_HOST_DEVICE int64_t chunk(const Params& p, int64_t c) const {
    return ((b * p.H + i_h) * p.NC + c0 + c) * p.K * p.V;
  }
};

// The rows of ChunkWorkspace::gates.
template <typename acc_t>
struct ChunkGates {
  acc_t* eta;     // η_i
  acc_t* alpha;   // α_i
  acc_t* mu;      // μ_i (0 without momentum)
  acc_t* beta;    // β_i
  acc_t* fgate;   // f_i
  acc_t* g_last;  // G_{r,j}
  acc_t* n_last;  // n_{j,r}
  acc_t* e_last;  // E_{r,j}
  acc_t* last;    // β_r, f_r, m_r

  NK_HOST_DEVICE explicit ChunkGates(acc_t* gates, int BT)
      : eta(gates), alpha(gates + BT), mu(gates + 2 * BT), beta(gates + 3 * BT), fgate(gates + 4 * BT),
        g_last(gates + 5 * BT), n_last(gates + 6 * BT), e_last(gates + 7 * BT), last(gates + 8 * BT) {}
};

// Token rows of the chunk starting at token t0 of a (sequence, head): L real tokens, token row i
// at (row0 + i·H) of [B·T·H]. Loads its q, k (BT × BK), v (BT × BV, columns o_v..) and gates
// (padding: zeros, η = 0, α = μ = 1; μ = 0 everywhere without momentum). No sync.
NK_EXEC_CHECK_DISABLE
template <bool HAS_MOMENTUM, typename Policy, typename Params, typename op_t, typename acc_t>
NK_HOST_DEVICE inline void chunk_load(Policy& pol, const Params& p, const ChunkWorkspace<op_t, acc_t>& w,
                                      const ChunkTileShape& sh, int64_t row0, int L, int64_t o_v) {
  const int BT = sh.BT, BK = sh.BK, BV = sh.BV;
  const int64_t H = p.H, K = p.K, V = p.V;
  const op_t zero = static_cast<op_t>(acc_t(0));
  const ChunkGates<acc_t> gt(w.gates, BT);
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
    gt.eta[i] = i < L ? p.lr[at] : acc_t(0);
    gt.alpha[i] = i < L ? p.retention[at] : acc_t(1);
    gt.mu[i] = HAS_MOMENTUM && i < L ? p.momentum[at] : acc_t(HAS_MOMENTUM ? 1 : 0);
  });
}

// The chunk's gates from η, α, μ (after a sync), as running products: column j of G: n_{j,i} =
// μ_i n_{j,i−1} (n_{j,j} = η_j), G_ij = α_i G_{i−1,j} + n_{j,i}; of E: E_jj = η_j, E_ij = α_i
// E_{i−1,j}; rows β_i = α_i β_{i−1}, m_i = μ_i m_{i−1}, f_i = α_i f_{i−1} + m_i (β_{−1} = m_{−1} = 1,
// f_{−1} = 0); the last row r = L − 1's G_r, n_r, E_r, β_r, f_r, m_r. Also n and m where the
// workspace has them (backward). Ends with a sync.
NK_EXEC_CHECK_DISABLE
template <bool HAS_MOMENTUM, bool DGD, typename Policy, typename op_t, typename acc_t>
NK_HOST_DEVICE inline void chunk_gates(Policy& pol, const ChunkWorkspace<op_t, acc_t>& w, const ChunkTileShape& sh,
                                       int L) {
  const int BT = sh.BT;
  const ChunkGates<acc_t> gt(w.gates, BT);
  pol.for_each(BT, [&](int j) {
    acc_t n = gt.eta[j], g = gt.eta[j], e = gt.eta[j];
    for (int i = 0; i < j; ++i) {
      w.g[i * BT + j] = acc_t(0);
      if (DGD) w.e[i * BT + j] = acc_t(0);
      if (w.nmat) w.nmat[i * BT + j] = acc_t(0);
    }
    w.g[j * BT + j] = g;
    if (DGD) w.e[j * BT + j] = e;
    if (w.nmat) w.nmat[j * BT + j] = n;
    gt.g_last[j] = j == L - 1 ? g : acc_t(0);
    gt.n_last[j] = j == L - 1 ? n : acc_t(0);
    gt.e_last[j] = DGD && j == L - 1 ? e : acc_t(0);
    for (int i = j + 1; i < BT; ++i) {
      n = HAS_MOMENTUM ? gt.mu[i] * n : acc_t(0);
      g = gt.alpha[i] * g + n;
      w.g[i * BT + j] = g;
      if (w.nmat) w.nmat[i * BT + j] = n;
      if (DGD) {
        e = gt.alpha[i] * e;
        w.e[i * BT + j] = e;
      }
      if (i == L - 1) {
        gt.g_last[j] = g;
        gt.n_last[j] = n;
        if (DGD) gt.e_last[j] = e;
      }
    }
  });
  pol.single([&] {
    acc_t bt = 1, m = 1, f = 0;
    for (int i = 0; i < BT; ++i) {
      bt = gt.alpha[i] * bt;
      m = HAS_MOMENTUM ? gt.mu[i] * m : acc_t(0);
      f = gt.alpha[i] * f + m;
      gt.beta[i] = bt;
      gt.fgate[i] = f;
      if (w.mrow) w.mrow[i] = m;
      if (i == L - 1) {
        gt.last[0] = bt;
        gt.last[1] = f;
        gt.last[2] = m;
      }
    }
  });
  pol.sync();
}

// A = tril(Q Kᵀ) ⊙ G, R = K M^c − V and its row-scaled copies G_r ⊙ R, n_r ⊙ R; with dgd also
// tril(Q Kᵀ) ⊙ E, L, the shifted (K Kᵀ) ⊙ G, P, and W solving (I + L) W = P by forward
// substitution (one value column per thread), G_r ⊙ R + E_r ⊙ W. Q Kᵀ and K Kᵀ unmasked where
// the workspace has them (backward). After chunk_gates; ends with a sync.
NK_EXEC_CHECK_DISABLE
template <bool HAS_MOMENTUM, bool DGD, typename Policy, typename op_t, typename acc_t>
NK_HOST_DEVICE inline void chunk_residuals(Policy& pol, const ChunkWorkspace<op_t, acc_t>& w,
                                           const ChunkTileShape& sh) {
  const int BT = sh.BT, BK = sh.BK, BV = sh.BV;
  const op_t zero = static_cast<op_t>(acc_t(0));
  const ChunkGates<acc_t> gt(w.gates, BT);
  pol.template gemm<false, true>(BT, BT, BK, w.q, BK, w.k, BK, false, [&](int i, int j, acc_t x) {
    w.a[i * BT + j] = j <= i ? static_cast<op_t>(x * w.g[i * BT + j]) : zero;
    if (DGD) w.ae[i * BT + j] = j <= i ? static_cast<op_t>(x * w.e[i * BT + j]) : zero;
    if (w.qk) w.qk[i * BT + j] = x;
  });
  if (DGD) {
    pol.template gemm<false, true>(BT, BT, BK, w.k, BK, w.k, BK, false, [&](int i, int j, acc_t x) {
      const bool below = j < i;
      w.l[i * BT + j] = below ? x * w.e[(i - 1) * BT + j] : acc_t(0);
      w.ak[i * BT + j] = below ? static_cast<op_t>(x * w.g[(i - 1) * BT + j]) : zero;
      if (w.kk) w.kk[i * BT + j] = x;
    });
  }
  pol.template gemm<false, false>(BT, BV, BK, w.k, BK, w.mem, BV, false, [&](int i, int j, acc_t x) {
    const acc_t r = x - static_cast<acc_t>(w.v[i * BV + j]);
    w.r[i * BV + j] = static_cast<op_t>(r);
    if (!DGD) w.rg[i * BV + j] = static_cast<op_t>(gt.g_last[i] * r);
    if (HAS_MOMENTUM) w.rn[i * BV + j] = static_cast<op_t>(gt.n_last[i] * r);
    if (DGD) w.pw[i * BV + j] = (i > 0 ? gt.beta[i - 1] : acc_t(1)) * x;
  });
  if (DGD && HAS_MOMENTUM) {  // same m × n as the product above: the same thread owns w.pw[i, j]
    pol.template gemm<false, false>(BT, BV, BK, w.k, BK, w.mom, BV, false, [&](int i, int j, acc_t x) {
      if (i > 0) w.pw[i * BV + j] += gt.fgate[i - 1] * x;
    });
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
        w.wop[i * BV + j] = static_cast<op_t>(x);
        w.rg[i * BV + j] = static_cast<op_t>(gt.g_last[i] * static_cast<acc_t>(w.r[i * BV + j]) + gt.e_last[i] * x);
      }
    });
    pol.sync();
  }
}

}  // namespace linear_memory
}  // namespace nested_kernels
