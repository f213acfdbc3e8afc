// The chunked backward of `linear_memory` (SPEC §2), written once for the CPU kernel and the CUDA
// kernel like the forward (linear_memory_chunk.h, whose notation this uses; the shared steps are in
// linear_memory_chunk_steps.h). One call handles one (sequence, head) and one tile of BV value
// columns, running the chunks in reverse with the adjoints dX of M^c and dS of S^c (fp32 tiles),
// starting from those of the final state. Per chunk, from the stored chunk-start states X, S and
// Ō = scale·dO (triton_kernels/linear_memory/README.md gives the same formulas in rows 1..C):
//   dR = −Aᵀ Ō − G_r ⊙ K dX' − n_r ⊙ K dS' [− Akᵀ dP],   dV = −dR
//   dW = −Aeᵀ Ō − E_r ⊙ K dX',   (I + L)ᵀ dP = dW (back substitution),   dL = −dP Wᵀ   (dgd)
//   dX = β_r dX' + Qᵀ (β ⊙ Ō) + Kᵀ (dR + β_{i−1} ⊙ dP)
//   dS = f_r dX' + m_r dS' + Qᵀ (f ⊙ Ō) + Kᵀ (f_{i−1} ⊙ dP)
//   dQ = diag(β) Ō Xᵀ + diag(f) Ō Sᵀ + dQ̃ K,   dQ̃ = tril(−(Ō Rᵀ) ⊙ G − (Ō Wᵀ) ⊙ E)
//   dK = dQ̃ᵀ Q + (dR + β_{i−1} dP) Xᵀ + f_{i−1} dP Sᵀ − (G_r ⊙ R + E_r ⊙ W) dX'ᵀ − (n_r ⊙ R) dS'ᵀ
//        + (dKK + dKKᵀ) K,   dKK_ij = −G_{i−1,j} (dP_i·r_j) + dL_ij E_{i−1,j}   (j < i)
// (Ak = the shifted (K Kᵀ) ⊙ G of P.) Then the adjoints of the gate quantities — β_i, f_i, G_ij, E_ij
// from the reads and P, and β_r, f_r, m_r, G_r, n_r, E_r from the chunk end — go back through the
// forward's running products (n_{j,i} = μ_i n_{j,i−1}, G_ij = α_i G_{i−1,j} + n_{j,i}, E_ij = α_i
// E_{i−1,j}, β_i = α_i β_{i−1}, m_i = μ_i m_{i−1}, f_i = α_i f_{i−1} + m_i) to dη, dα, dμ: no division
// by α, so retention 0 stays exact. Everything that sums over V (dq, dk, the gate gradients) is a
// partial sum of this value tile, written to its own slice [i_vt] of a buffer the host sums.
#pragma once

#include "linear_memory/linear_memory_chunk_steps.h"

#include <cstdint>

namespace nested_kernels {
namespace linear_memory {

// Inputs (ChunkedInputs: those of the forward call) and outputs of one `linear_memory_chunked_bwd` call.
template <typename scalar_t, typename acc_t>
struct ChunkedBwdParams : ChunkedInputs<scalar_t, acc_t> {
  const scalar_t* d_o;              // [B, T, H, V] dO
  const acc_t* d_final_memory;      // [N, H, K, V], null: zero
  const acc_t* d_final_momentum;    // [N, H, K, V], null: zero (or without momentum)
  const acc_t* chunk_memory;        // [B, H, NC, K, V] M^c of every chunk (the forward's output)
  const acc_t* chunk_momentum;      // [B, H, NC, K, V] S^c, null without momentum
  acc_t* dq;                        // [NVT, B, T, H, K] per value tile
  acc_t* dk;                        // [NVT, B, T, H, K] per value tile
  scalar_t* dv;                     // [B, T, H, V]
  acc_t* dlr;                       // [NVT, B, T, H] per value tile
  acc_t* dretention;                // [NVT, B, T, H] per value tile
  acc_t* dmomentum;                 // [NVT, B, T, H] per value tile, null without momentum
  acc_t* d_initial_memory;          // [N, H, K, V]
  acc_t* d_initial_momentum;        // [N, H, K, V], null without momentum
};

// Scratch of one backward call: the forward's tiles (with Q Kᵀ, K Kᵀ, n and m kept) and the
// adjoints'.
template <typename op_t, typename acc_t>
struct ChunkBwdWorkspace {
  ChunkWorkspace<op_t, acc_t> f;
  op_t* d;       // [BT, BV] Ō = scale · dO
  op_t* db;      // [BT, BV] β ⊙ Ō
  op_t* dfo;     // [BT, BV] f ⊙ Ō (momentum)
  op_t* drp;     // [BT, BV] dR + β_{i−1} ⊙ dP
  op_t* dpf;     // [BT, BV] f_{i−1} ⊙ dP (momentum and dgd)
  op_t* dpop;    // [BT, BV] dP (dgd)
  op_t* dqk;     // [BT, BT] dQ̃ (in A's storage)
  op_t* dkk;     // [BT, BT] dKK (dgd; in Ae's storage)
  acc_t* dmem;   // [BK, BV] dX
  acc_t* dmom;   // [BK, BV] dS (momentum)
  acc_t* kdx;    // [BT, BV] K dX'
  acc_t* kds;    // [BT, BV] K dS' (momentum)
  acc_t* dr;     // [BT, BV] dR
  acc_t* dpw;    // [BT, BV] dW, then dP (dgd)
  acc_t* rqx;    // [BT, BV] Ō ⊙ Q X
  acc_t* rqs;    // [BT, BV] Ō ⊙ Q S (momentum)
  acc_t* rkx;    // [BT, BV] dP ⊙ K X (dgd)
  acc_t* rks;    // [BT, BV] dP ⊙ K S (momentum and dgd)
  acc_t* tq;     // [BT, BK] dq, then dk, as its products accumulate
  acc_t* dg;     // [BT, BT] adjoint of G from the reads, then the total adjoint of G
  acc_t* de;     // [BT, BT] the same for E (dgd)
  acc_t* dg2;    // [BT, BT] at (i, j): adjoint of G_{i−1,j} from P_i (dgd; in Q Kᵀ's storage)
  acc_t* de2;    // [BT, BT] at (i, j): adjoint of E_{i−1,j} from L_i (dgd; in K Kᵀ's storage)
  acc_t* nb;     // [BT, BT] total adjoint of n_{j,i} at (i, j) (momentum; in L's storage with dgd)
  acc_t* tmp;    // [BT, BT] a product's first term (dgd; in L's storage)
  acc_t* vec;    // [8, BT] adjoints of β, f, G_r, n_r, E_r, and the running β̄, f̄, m̄
  acc_t* scal;   // [3, BK] row sums of dX' ⊙ X, dX' ⊙ S, dS' ⊙ S
};

template <typename op_t, typename acc_t>
NK_HOST_DEVICE inline ChunkBwdWorkspace<op_t, acc_t> carve_chunk_bwd_workspace(WorkspaceCarver& c,
                                                                               const ChunkTileShape& s,
                                                                               bool has_momentum, bool dgd) {
  const int64_t BT = s.BT, BK = s.BK, BV = s.BV;
  const bool mom_dgd = has_momentum && dgd;
  ChunkBwdWorkspace<op_t, acc_t> w;
  w.f = carve_chunk_workspace<op_t, acc_t>(c, s, has_momentum, dgd, /*forward=*/false);
  w.f.qk = c.take<acc_t>(BT * BT);
  w.f.kk = c.take<acc_t>(BT * BT, dgd);
  w.f.nmat = c.take<acc_t>(BT * BT, has_momentum);
  w.f.mrow = c.take<acc_t>(BT, has_momentum);
  w.d = c.take<op_t>(BT * BV);
  w.db = c.take<op_t>(BT * BV);
  w.dfo = c.take<op_t>(BT * BV, has_momentum);
  w.drp = c.take<op_t>(BT * BV);
  w.dpf = c.take<op_t>(BT * BV, mom_dgd);
  w.dpop = c.take<op_t>(BT * BV, dgd);
  // Buffers whose lives do not overlap share storage (each phase ends with a sync; where a
  // product's epilogue reads one and writes the other it is at the same (i, j), by the same thread):
  // A, Ae (read last by Aᵀ Ō, Aeᵀ Ō) hold dQ̃, dKK (written after); L (read last by the back
  // substitution) holds the tmp term, then n's adjoint; Q Kᵀ, K Kᵀ (read last in the epilogues that
  // write them) hold the adjoints of G_{i−1}, E_{i−1}.
  w.dqk = w.f.a;
  w.dkk = w.f.ae;
  w.dmem = c.take<acc_t>(BK * BV);
  w.dmom = c.take<acc_t>(BK * BV, has_momentum);
  // The BT × BV adjoints are read last before the dq, dk products, whose accumulator tq shares
  // their region.
  const auto carve_adjoints = [&](WorkspaceCarver& r) {
    w.kdx = r.take<acc_t>(BT * BV);
    w.kds = r.take<acc_t>(BT * BV, has_momentum);
    w.dr = r.take<acc_t>(BT * BV);
    w.dpw = r.take<acc_t>(BT * BV, dgd);
    w.rqx = r.take<acc_t>(BT * BV);
    w.rqs = r.take<acc_t>(BT * BV, has_momentum);
    w.rkx = r.take<acc_t>(BT * BV, dgd);
    w.rks = r.take<acc_t>(BT * BV, mom_dgd);
  };
  WorkspaceCarver count{nullptr};
  carve_adjoints(count);
  const int64_t tq_bytes = BT * BK * static_cast<int64_t>(sizeof(acc_t));
  WorkspaceCarver region{c.take<char>(count.used > tq_bytes ? count.used : tq_bytes)};
  carve_adjoints(region);
  w.tq = reinterpret_cast<acc_t*>(region.base);
  w.dg = c.take<acc_t>(BT * BT);
  w.de = c.take<acc_t>(BT * BT, dgd);
  w.dg2 = w.f.qk;
  w.de2 = w.f.kk;
  w.tmp = w.f.l;
  w.nb = dgd ? w.f.l : c.take<acc_t>(BT * BT, has_momentum);
  w.vec = c.take<acc_t>(8 * BT);
  w.scal = c.take<acc_t>(3 * BK);
  return w;
}

template <typename op_t, typename acc_t>
NK_HOST_DEVICE inline ChunkBwdWorkspace<op_t, acc_t> carve_chunk_bwd_workspace(char* base, char* spill,
                                                                               int64_t budget,
                                                                               const ChunkTileShape& s,
                                                                               bool has_momentum, bool dgd) {
  WorkspaceCarver c{base, spill, budget};
  return carve_chunk_bwd_workspace<op_t, acc_t>(c, s, has_momentum, dgd);
}

// Bytes of the backward's workspace on each level with `budget` bytes of the first.
template <typename op_t, typename acc_t>
NK_HOST_DEVICE inline WorkspaceSplit chunk_bwd_workspace_split(const ChunkTileShape& s, bool has_momentum, bool dgd,
                                                               int64_t budget) {
  WorkspaceCarver c{nullptr, nullptr, budget};
  carve_chunk_bwd_workspace<op_t, acc_t>(c, s, has_momentum, dgd);
  return WorkspaceSplit{c.used, c.spilled};
}

// The chunked backward of one (sequence, head) `i_nh` and value tile `i_vt`; every thread of the
// policy's group calls it (policy contract: linear_memory_chunk.h).
NK_EXEC_CHECK_DISABLE
template <bool HAS_MOMENTUM, bool DGD, typename Policy, typename scalar_t, typename acc_t>
NK_HOST_DEVICE inline void linear_memory_chunked_bwd_tile(Policy& pol, const ChunkedBwdParams<scalar_t, acc_t>& p,
                                                          const ChunkBwdWorkspace<scalar_t, acc_t>& bw,
                                                          const ChunkTileShape& sh, int64_t i_nh, int64_t i_vt) {
  using op_t = scalar_t;
  const ChunkWorkspace<scalar_t, acc_t>& w = bw.f;
  const int BT = sh.BT, BK = sh.BK, BV = sh.BV;
  const int64_t H = p.H, K = p.K, V = p.V, C = p.chunk_size;
  const ChunkSequence seq(p, i_nh);
  const int64_t o_v = i_vt * BV;  // first column of the tile
  const op_t zero = static_cast<op_t>(acc_t(0));
  const ChunkGates<acc_t> gt(w.gates, BT);
  acc_t* dbeta = bw.vec;          // adjoint of β_i (reads and P), without the chunk end's
  acc_t* dfg = bw.vec + BT;       // adjoint of f_i, likewise
  acc_t* dg_last = bw.vec + 2 * BT;  // adjoint of G_{r,j} from the chunk end
  acc_t* dn_last = bw.vec + 3 * BT;  // adjoint of n_{j,r}
  acc_t* de_last = bw.vec + 4 * BT;  // adjoint of E_{r,j}
  acc_t* bbar = bw.vec + 5 * BT;     // total adjoints of β_i, f_i, m_i
  acc_t* fbar = bw.vec + 6 * BT;
  acc_t* mbar = bw.vec + 7 * BT;
  acc_t* dq = p.dq + i_vt * p.B * p.T * H * K;
  acc_t* dk = p.dk + i_vt * p.B * p.T * H * K;
  const int64_t o_gate = i_vt * p.B * p.T * H;

  // The adjoint tiles of the final state, zero past K and V (and where absent).
  const int64_t o_state = i_nh * K * V;
  pol.for_each(BK * BV, [&](int idx) {
    const int i = idx / BV, j = idx % BV;
    const bool in = i < K && o_v + j < V;
    bw.dmem[idx] = in && p.d_final_memory ? p.d_final_memory[o_state + i * V + o_v + j] : acc_t(0);
    if (HAS_MOMENTUM) {
      bw.dmom[idx] = in && p.d_final_momentum ? p.d_final_momentum[o_state + i * V + o_v + j] : acc_t(0);
    }
  });
  pol.sync();

  const int64_t n_chunks = (seq.eos - seq.bos + C - 1) / C;
  for (int64_t c = n_chunks - 1; c >= 0; --c) {
    const int64_t t0 = seq.bos + c * C;
    const int L = static_cast<int>(seq.eos - t0 < C ? seq.eos - t0 : C);  // real tokens of the chunk
    const int64_t row0 = seq.row(p, t0);
    const int64_t o_chunk = seq.chunk(p, c);

    // X, S from the forward; the chunk's q, k, v, gates and Ō; gates, R [, P, W] as the forward.
    pol.for_each(BK * BV, [&](int idx) {
      const int i = idx / BV, j = idx % BV;
      const bool in = i < K && o_v + j < V;
      w.mem[idx] = in ? p.chunk_memory[o_chunk + i * V + o_v + j] : acc_t(0);
      if (HAS_MOMENTUM) w.mom[idx] = in ? p.chunk_momentum[o_chunk + i * V + o_v + j] : acc_t(0);
    });
    chunk_load<HAS_MOMENTUM>(pol, p, w, sh, row0, L, o_v);
    pol.for_each(BT * BV, [&](int idx) {
      const int i = idx / BV, j = idx % BV;
      const int64_t at = (row0 + static_cast<int64_t>(i) * H) * V + o_v + j;
      bw.d[idx] = i < L && o_v + j < V ? static_cast<op_t>(p.scale * static_cast<acc_t>(p.d_o[at])) : zero;
    });
    pol.sync();
    chunk_gates<HAS_MOMENTUM, DGD>(pol, w, sh, L);
    chunk_residuals<HAS_MOMENTUM, DGD>(pol, w, sh);

    // BT × BV products: K dX', K dS', dR and dW without the dP term, Ō ⊙ Q X, Ō ⊙ Q S.
    pol.template gemm<false, false>(BT, BV, BK, w.k, BK, bw.dmem, BV, false,
                                    [&](int i, int j, acc_t x) { bw.kdx[i * BV + j] = x; });
    if (HAS_MOMENTUM) {
      pol.template gemm<false, false>(BT, BV, BK, w.k, BK, bw.dmom, BV, false,
                                      [&](int i, int j, acc_t x) { bw.kds[i * BV + j] = x; });
    }
    pol.template gemm<true, false>(BT, BV, BT, w.a, BT, bw.d, BV, false, [&](int i, int j, acc_t x) {
      const int idx = i * BV + j;
      bw.dr[idx] = -x - gt.g_last[i] * bw.kdx[idx] - (HAS_MOMENTUM ? gt.n_last[i] * bw.kds[idx] : acc_t(0));
    });
    if (DGD) {
      pol.template gemm<true, false>(BT, BV, BT, w.ae, BT, bw.d, BV, false, [&](int i, int j, acc_t x) {
        const int idx = i * BV + j;
        bw.dpw[idx] = -x - gt.e_last[i] * bw.kdx[idx];
      });
    }
    pol.template gemm<false, false>(BT, BV, BK, w.q, BK, w.mem, BV, false, [&](int i, int j, acc_t x) {
      const int idx = i * BV + j;
      const acc_t d = static_cast<acc_t>(bw.d[idx]);
      bw.rqx[idx] = d * x;
      bw.db[idx] = static_cast<op_t>(gt.beta[i] * d);
    });
    if (HAS_MOMENTUM) {
      pol.template gemm<false, false>(BT, BV, BK, w.q, BK, w.mom, BV, false, [&](int i, int j, acc_t x) {
        const int idx = i * BV + j;
        const acc_t d = static_cast<acc_t>(bw.d[idx]);
        bw.rqs[idx] = d * x;
        bw.dfo[idx] = static_cast<op_t>(gt.fgate[i] * d);
      });
    }
    pol.sync();

    if (DGD) {
      // (I + L)ᵀ dP = dW by back substitution, one column per thread; dR −= Akᵀ dP; dP ⊙ K X, dP ⊙ K S.
      pol.for_each(BV, [&](int j) {
        for (int i = BT - 1; i >= 0; --i) {
          acc_t x = bw.dpw[i * BV + j];
          for (int l = i + 1; l < BT; ++l) x -= w.l[l * BT + i] * bw.dpw[l * BV + j];
          bw.dpw[i * BV + j] = x;
          bw.dpop[i * BV + j] = static_cast<op_t>(x);
        }
      });
      pol.sync();
      pol.template gemm<true, false>(BT, BV, BT, w.ak, BT, bw.dpop, BV, false,
                                     [&](int i, int j, acc_t x) { bw.dr[i * BV + j] -= x; });
      pol.template gemm<false, false>(BT, BV, BK, w.k, BK, w.mem, BV, false,
                                      [&](int i, int j, acc_t x) { bw.rkx[i * BV + j] = bw.dpw[i * BV + j] * x; });
      if (HAS_MOMENTUM) {
        pol.template gemm<false, false>(BT, BV, BK, w.k, BK, w.mom, BV, false,
                                        [&](int i, int j, acc_t x) { bw.rks[i * BV + j] = bw.dpw[i * BV + j] * x; });
      }
      pol.sync();
    }

    // dV = −dR (stored), the operands dR + β_{i−1} dP, f_{i−1} dP; the row sums over the tile.
    pol.for_each(BT * BV, [&](int idx) {
      const int i = idx / BV, j = idx % BV;
      const acc_t dr = bw.dr[idx];
      const acc_t dp = DGD ? bw.dpw[idx] : acc_t(0);
      bw.drp[idx] = static_cast<op_t>(dr + (i > 0 ? gt.beta[i - 1] : acc_t(1)) * dp);
      if (DGD && HAS_MOMENTUM) bw.dpf[idx] = static_cast<op_t>(i > 0 ? gt.fgate[i - 1] * dp : acc_t(0));
      if (i < L && o_v + j < V) p.dv[(row0 + static_cast<int64_t>(i) * H) * V + o_v + j] = static_cast<op_t>(-dr);
    });
    pol.for_each(BT, [&](int i) {
      acc_t sb = 0, sf = 0, sg = 0, sn = 0, se = 0;
      for (int j = 0; j < BV; ++j) {
        const int idx = i * BV + j;
        const acc_t r = static_cast<acc_t>(w.r[idx]);
        sb += bw.rqx[idx];
        if (HAS_MOMENTUM) sf += bw.rqs[idx];
        if (DGD && i + 1 < BT) {  // P_{i+1} reads β_i, f_i
          sb += bw.rkx[idx + BV];
          if (HAS_MOMENTUM) sf += bw.rks[idx + BV];
        }
        sg -= bw.kdx[idx] * r;
        if (HAS_MOMENTUM) sn -= bw.kds[idx] * r;
        if (DGD) se -= bw.kdx[idx] * w.pw[idx];
      }
      dbeta[i] = sb;
      dfg[i] = sf;
      dg_last[i] = sg;
      dn_last[i] = sn;
      de_last[i] = se;
    });
    pol.for_each(BK, [&](int i) {
      acc_t sx = 0, sxs = 0, ss = 0;
      for (int j = 0; j < BV; ++j) {
        const int idx = i * BV + j;
        sx += bw.dmem[idx] * w.mem[idx];
        if (HAS_MOMENTUM) {
          sxs += bw.dmem[idx] * w.mom[idx];
          ss += bw.dmom[idx] * w.mom[idx];
        }
      }
      bw.scal[i] = sx;
      bw.scal[BK + i] = sxs;
      bw.scal[2 * BK + i] = ss;
    });

    // BT × BT products: adjoints of G, E (reads), dQ̃; with dgd those of G_{i−1}, E_{i−1} (P, L), dKK.
    pol.template gemm<false, true>(BT, BT, BV, bw.d, BV, w.r, BV, false, [&](int i, int j, acc_t x) {
      const int idx = i * BT + j;
      const bool on = j <= i;
      bw.dg[idx] = on ? -w.qk[idx] * x : acc_t(0);
      const acc_t t = on ? -w.g[idx] * x : acc_t(0);
      if (DGD) {
        bw.tmp[idx] = t;
      } else {
        bw.dqk[idx] = static_cast<op_t>(t);
      }
    });
    if (DGD) {
      pol.template gemm<false, true>(BT, BT, BV, bw.d, BV, w.wop, BV, false, [&](int i, int j, acc_t x) {
        const int idx = i * BT + j;
        const bool on = j <= i;
        bw.de[idx] = on ? -w.qk[idx] * x : acc_t(0);
        bw.dqk[idx] = static_cast<op_t>(bw.tmp[idx] - (on ? w.e[idx] * x : acc_t(0)));
      });
      pol.template gemm<false, true>(BT, BT, BV, bw.dpop, BV, w.r, BV, false, [&](int i, int j, acc_t x) {
        const int idx = i * BT + j;
        const bool below = j < i;
        bw.dg2[idx] = below ? -w.kk[idx] * x : acc_t(0);
        bw.tmp[idx] = below ? -w.g[(i - 1) * BT + j] * x : acc_t(0);
      });
      pol.template gemm<false, true>(BT, BT, BV, bw.dpop, BV, w.wop, BV, false, [&](int i, int j, acc_t x) {
        const int idx = i * BT + j;
        const bool below = j < i;
        const acc_t dl = below ? -x : acc_t(0);
        bw.de2[idx] = dl * w.kk[idx];
        bw.dkk[idx] = static_cast<op_t>(bw.tmp[idx] + (below ? dl * w.e[(i - 1) * BT + j] : acc_t(0)));
      });
    }
    pol.sync();

    // dq and dk of the chunk's tokens (this value tile's part), accumulated in tq.
    const auto store = [&](acc_t* out, int i, int j, acc_t x) {
      if (i < L && j < K) out[(row0 + static_cast<int64_t>(i) * H) * K + j] = x;
    };
    pol.template gemm<false, true>(BT, BK, BV, bw.d, BV, w.mem, BV, false,
                                   [&](int i, int j, acc_t x) { bw.tq[i * BK + j] = gt.beta[i] * x; });
    if (HAS_MOMENTUM) {
      pol.template gemm<false, true>(BT, BK, BV, bw.d, BV, w.mom, BV, false,
                                     [&](int i, int j, acc_t x) { bw.tq[i * BK + j] += gt.fgate[i] * x; });
    }
    pol.template gemm<false, false>(BT, BK, BT, bw.dqk, BT, w.k, BK, true,
                                    [&](int i, int j, acc_t x) { store(dq, i, j, bw.tq[i * BK + j] + x); });
    pol.template gemm<true, false>(BT, BK, BT, bw.dqk, BT, w.q, BK, false,
                                   [&](int i, int j, acc_t x) { bw.tq[i * BK + j] = x; });
    pol.template gemm<false, true>(BT, BK, BV, bw.drp, BV, w.mem, BV, false,
                                   [&](int i, int j, acc_t x) { bw.tq[i * BK + j] += x; });
    if (DGD) {
      if (HAS_MOMENTUM) {
        pol.template gemm<false, true>(BT, BK, BV, bw.dpf, BV, w.mom, BV, false,
                                       [&](int i, int j, acc_t x) { bw.tq[i * BK + j] += x; });
      }
      pol.template gemm<false, false>(BT, BK, BT, bw.dkk, BT, w.k, BK, true,
                                      [&](int i, int j, acc_t x) { bw.tq[i * BK + j] += x; });
      pol.template gemm<true, false>(BT, BK, BT, bw.dkk, BT, w.k, BK, false,
                                     [&](int i, int j, acc_t x) { bw.tq[i * BK + j] += x; });
    }
    if (HAS_MOMENTUM) {
      pol.template gemm<false, true>(BT, BK, BV, w.rn, BV, bw.dmom, BV, false,
                                     [&](int i, int j, acc_t x) { bw.tq[i * BK + j] -= x; });
    }
    pol.template gemm<false, true>(BT, BK, BV, w.rg, BV, bw.dmem, BV, false,
                                   [&](int i, int j, acc_t x) { store(dk, i, j, bw.tq[i * BK + j] - x); });
    pol.sync();

    // dS = f_r dX' + m_r dS' + Qᵀ (f ⊙ Ō) + Kᵀ (f_{i−1} ⊙ dP);
    // dX = β_r dX' + Qᵀ (β ⊙ Ō) + Kᵀ (dR + β_{i−1} ⊙ dP).
    const acc_t beta_r = gt.last[0], f_r = gt.last[1], m_r = gt.last[2];
    if (HAS_MOMENTUM) {
      pol.template gemm<true, false>(BK, BV, BT, w.q, BK, bw.dfo, BV, false, [&](int i, int j, acc_t x) {
        const int idx = i * BV + j;
        bw.dmom[idx] = f_r * bw.dmem[idx] + m_r * bw.dmom[idx] + x;
      });
      if (DGD) {
        pol.template gemm<true, false>(BK, BV, BT, w.k, BK, bw.dpf, BV, false,
                                       [&](int i, int j, acc_t x) { bw.dmom[i * BV + j] += x; });
      }
    }
    pol.template gemm<true, false>(BK, BV, BT, w.q, BK, bw.db, BV, false, [&](int i, int j, acc_t x) {
      const int idx = i * BV + j;
      bw.dmem[idx] = beta_r * bw.dmem[idx] + x;
    });
    pol.template gemm<true, false>(BK, BV, BT, w.k, BK, bw.drp, BV, false,
                                   [&](int i, int j, acc_t x) { bw.dmem[i * BV + j] += x; });

    // The gates: total adjoints of β, f, m (rows, last to first) and of G, E, n (columns, bottom
    // to top) through the running products; then dα, dμ, dη of the chunk's real tokens.
    pol.single([&] {
      acc_t sx = 0, sxs = 0, ss = 0;
      for (int i = 0; i < BK; ++i) {
        sx += bw.scal[i];
        sxs += bw.scal[BK + i];
        ss += bw.scal[2 * BK + i];
      }
      acc_t bb = 0, fb = 0, mb = 0;
      for (int i = L - 1; i >= 0; --i) {
        const bool r = i == L - 1;
        const acc_t a1 = r ? acc_t(0) : gt.alpha[i + 1], m1 = r ? acc_t(0) : gt.mu[i + 1];
        bb = dbeta[i] + (r ? sx : acc_t(0)) + a1 * bb;
        fb = dfg[i] + (r ? sxs : acc_t(0)) + a1 * fb;
        mb = (r ? ss : acc_t(0)) + fb + m1 * mb;
        bbar[i] = bb;
        fbar[i] = fb;
        mbar[i] = mb;
      }
    });
    pol.for_each(L, [&](int j) {
      acc_t gb = 0, eb = 0, nbv = 0;
      for (int i = L - 1; i >= j; --i) {
        const int idx = i * BT + j;
        const bool r = i == L - 1;
        const acc_t a1 = r ? acc_t(0) : gt.alpha[i + 1], m1 = r ? acc_t(0) : gt.mu[i + 1];
        gb = bw.dg[idx] + (DGD && !r ? bw.dg2[idx + BT] : acc_t(0)) + (r ? dg_last[j] : acc_t(0)) + a1 * gb;
        bw.dg[idx] = gb;
        if (DGD) {
          eb = bw.de[idx] + (!r ? bw.de2[idx + BT] : acc_t(0)) + (r ? de_last[j] : acc_t(0)) + a1 * eb;
          bw.de[idx] = eb;
        }
        if (HAS_MOMENTUM) {
          nbv = (r ? dn_last[j] : acc_t(0)) + (i > j ? gb : acc_t(0)) + m1 * nbv;
          bw.nb[idx] = nbv;
        }
      }
    });
    pol.sync();
    pol.for_each(L, [&](int i) {
      acc_t da = bbar[i] * (i > 0 ? gt.beta[i - 1] : acc_t(1)) + (i > 0 ? fbar[i] * gt.fgate[i - 1] : acc_t(0));
      acc_t dm = HAS_MOMENTUM ? mbar[i] * (i > 0 ? w.mrow[i - 1] : acc_t(1)) : acc_t(0);
      for (int j = 0; j < i; ++j) {
        da += bw.dg[i * BT + j] * w.g[(i - 1) * BT + j];
        if (DGD) da += bw.de[i * BT + j] * w.e[(i - 1) * BT + j];
        if (HAS_MOMENTUM) dm += bw.nb[i * BT + j] * w.nmat[(i - 1) * BT + j];
      }
      const int idx = i * BT + i;
      const acc_t deta = bw.dg[idx] + (HAS_MOMENTUM ? bw.nb[idx] : acc_t(0)) + (DGD ? bw.de[idx] : acc_t(0));
      const int64_t at = o_gate + row0 + static_cast<int64_t>(i) * H;
      p.dlr[at] = deta;
      p.dretention[at] = da;
      if (HAS_MOMENTUM) p.dmomentum[at] = dm;
    });
    pol.sync();
  }

  pol.for_each(BK * BV, [&](int idx) {
    const int i = idx / BV, j = idx % BV;
    if (i < K && o_v + j < V) {
      p.d_initial_memory[o_state + i * V + o_v + j] = bw.dmem[idx];
      if (HAS_MOMENTUM) p.d_initial_momentum[o_state + i * V + o_v + j] = bw.dmom[idx];
    }
  });
}

}  // namespace linear_memory
}  // namespace nested_kernels
