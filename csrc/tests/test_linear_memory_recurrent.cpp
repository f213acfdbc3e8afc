// ctest: the CPU kernel of `linear_memory_recurrent` (SPEC §2) against naive loops written here.
//   (a) chunk_size 1, no momentum, no dgd == the gated delta rule
//   (b) momentum / dgd / chunks / initial state == a naive double loop of the definition
//   (c) varlen == one dense call per sequence
//   (d) bad arguments raise errors naming the argument
//   (e) the chunked kernel (linear_memory_chunked_fwd_cpu, linear_memory_chunk.h) == the definition,
//       its chunk-start states == the final states of the recurrence on the tokens before each chunk
// Exit status non-zero on the first failure.
#include "linear_memory/linear_memory_ops.h"

#include <ATen/ATen.h>

#include <cmath>
#include <cstdlib>
#include <functional>
#include <iostream>
#include <optional>
#include <string>
#include <vector>

using nested_kernels::linear_memory::linear_memory_chunked_fwd_cpu;
using nested_kernels::linear_memory::linear_memory_recurrent_cpu;

namespace {

int g_checks = 0;

void fail(const std::string& what) {
  std::cerr << "FAIL: " << what << std::endl;
  std::exit(1);
}

void expect(bool ok, const std::string& what) {
  ++g_checks;
  if (!ok) fail(what);
}

void expect_close(const at::Tensor& got, const at::Tensor& want, double tol, const std::string& what) {
  ++g_checks;
  if (got.sizes() != want.sizes()) {
    std::cerr << what << ": shape " << got.sizes() << " != " << want.sizes() << std::endl;
    fail(what);
  }
  const at::Tensor g = got.to(at::kDouble), w = want.to(at::kDouble);
  if (!g.isfinite().all().item<bool>()) fail(what + ": non-finite values");
  const double err = g.numel() ? (g - w).abs().max().item<double>() : 0.0;
  const double ref = w.numel() ? w.abs().max().item<double>() : 0.0;
  if (!(err <= tol * std::max(1.0, ref))) {
    std::cerr << what << ": max |error| " << err << " > " << tol << " * max(1, " << ref << ")" << std::endl;
    fail(what);
  }
}

struct Inputs {
  at::Tensor q, k, v, lr, retention, momentum, m0, s0;
};

// Random inputs with keys normalised (as HOPE does) so the recurrences stay bounded.
Inputs make_inputs(int64_t B, int64_t T, int64_t H, int64_t K, int64_t V, int64_t N, at::ScalarType dtype) {
  const auto opts = at::TensorOptions().dtype(at::kDouble);
  Inputs in;
  in.q = at::randn({B, T, H, K}, opts).to(dtype);
  const at::Tensor k = at::randn({B, T, H, K}, opts);
  in.k = (k / k.norm(2, {-1}, /*keepdim=*/true)).to(dtype);
  in.v = at::randn({B, T, H, V}, opts).to(dtype);
  in.lr = at::rand({B, T, H}, opts) * 0.9;
  in.retention = 0.8 + 0.2 * at::rand({B, T, H}, opts);
  in.momentum = 0.9 * at::rand({B, T, H}, opts);
  in.m0 = 0.1 * at::randn({N, H, K, V}, opts);
  in.s0 = 0.1 * at::randn({N, H, K, V}, opts);
  return in;
}

}  // namespace

// (b) The definition of SPEC §2, element by element in double. `cu` empty: dense.
std::vector<at::Tensor> naive_definition(const Inputs& in, bool has_momentum, bool dgd, int64_t C, double scale,
                                         bool use_initial, const std::vector<int64_t>& cu) {
  const int64_t B = in.q.size(0), T = in.q.size(1), H = in.q.size(2), K = in.q.size(3), V = in.v.size(3);
  const int64_t N = cu.empty() ? B : static_cast<int64_t>(cu.size()) - 1;
  const at::Tensor qd = in.q.to(at::kDouble), kd = in.k.to(at::kDouble), vd = in.v.to(at::kDouble);
  auto q = qd.accessor<double, 4>();
  auto k = kd.accessor<double, 4>();
  auto v = vd.accessor<double, 4>();
  auto eta = in.lr.accessor<double, 3>();
  auto alpha = in.retention.accessor<double, 3>();
  auto mu = in.momentum.accessor<double, 3>();
  auto m0 = in.m0.accessor<double, 4>();
  auto s0 = in.s0.accessor<double, 4>();
  at::Tensor o = at::zeros({B, T, H, V}, at::kDouble);
  at::Tensor mem = at::zeros({N, H, K, V}, at::kDouble), mom = at::zeros({N, H, K, V}, at::kDouble);
  auto oa = o.accessor<double, 4>();
  auto ma = mem.accessor<double, 4>();
  auto sa = mom.accessor<double, 4>();
  for (int64_t n = 0; n < N; ++n) {
    const int64_t b = cu.empty() ? n : 0, start = cu.empty() ? 0 : cu[n], stop = cu.empty() ? T : cu[n + 1];
    for (int64_t h = 0; h < H; ++h) {
      std::vector<std::vector<double>> M(K, std::vector<double>(V, 0.0)), S = M, Mc = M, Mn = M;
      for (int64_t i = 0; i < K; ++i)
        for (int64_t j = 0; j < V; ++j) {
          M[i][j] = use_initial ? m0[n][h][i][j] : 0.0;
          S[i][j] = use_initial && has_momentum ? s0[n][h][i][j] : 0.0;
        }
      for (int64_t t = start; t < stop; ++t) {
        if ((t - start) % C == 0) Mc = M;
        std::vector<double> r(V, 0.0), p(V, 0.0);
        for (int64_t j = 0; j < V; ++j) {
          for (int64_t i = 0; i < K; ++i) {
            r[j] += k[b][t][h][i] * Mc[i][j];
            p[j] += k[b][t][h][i] * M[i][j];
          }
          r[j] -= v[b][t][h][j];
        }
        const double e = eta[b][t][h], a = alpha[b][t][h], m = has_momentum ? mu[b][t][h] : 0.0;
        for (int64_t i = 0; i < K; ++i)
          for (int64_t j = 0; j < V; ++j) {
            S[i][j] = m * S[i][j] - e * k[b][t][h][i] * r[j];
            Mn[i][j] = a * M[i][j] + S[i][j] - (dgd ? e * k[b][t][h][i] * p[j] : 0.0);
          }
        M = Mn;
        for (int64_t j = 0; j < V; ++j) {
          double acc = 0.0;
          for (int64_t i = 0; i < K; ++i) acc += q[b][t][h][i] * M[i][j];
          oa[b][t][h][j] = scale * acc;
        }
      }
      for (int64_t i = 0; i < K; ++i)
        for (int64_t j = 0; j < V; ++j) {
          ma[n][h][i][j] = M[i][j];
          sa[n][h][i][j] = S[i][j];
        }
    }
  }
  return {o, mem, mom};
}

std::optional<at::Tensor> opt(bool on, const at::Tensor& t) {
  return on ? std::optional<at::Tensor>(t) : std::nullopt;
}

void test_gated_delta_rule() {
  const int64_t B = 2, T = 37, H = 3, K = 8, V = 5;
  const Inputs in = make_inputs(B, T, H, K, V, B, at::kDouble);
  const auto out = linear_memory_recurrent_cpu(in.q, in.k, in.v, in.lr, in.retention, std::nullopt, in.m0,
                                               std::nullopt, std::nullopt, /*chunk_size=*/1, /*scale=*/0.5,
                                               /*dgd=*/false);
  // M_t = (α_t I − η_t k_tᵀk_t) M_{t−1} + η_t k_tᵀ v_t, o_t = scale · q_t M_t
  at::Tensor o = at::zeros_like(in.v), M = in.m0.clone();
  const at::Tensor I = at::eye(K, at::kDouble);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t h = 0; h < H; ++h) {
      at::Tensor Mbh = M[b][h];
      for (int64_t t = 0; t < T; ++t) {
        const at::Tensor kt = in.k[b][t][h].unsqueeze(0);  // 1×K
        const double e = in.lr[b][t][h].item<double>(), a = in.retention[b][t][h].item<double>();
        Mbh = at::matmul(a * I - e * at::matmul(kt.t(), kt), Mbh) + e * at::matmul(kt.t(), in.v[b][t][h].unsqueeze(0));
        o[b][t][h].copy_(0.5 * at::matmul(in.q[b][t][h].unsqueeze(0), Mbh).squeeze(0));
      }
      M[b][h].copy_(Mbh);
    }
  expect_close(std::get<0>(out), o, 1e-12, "(a) gated delta rule: o");
  expect_close(std::get<1>(out), M, 1e-12, "(a) gated delta rule: final memory");
  expect(std::get<2>(out).numel() == 0 && std::get<2>(out).dim() == 1,
         "(a) final momentum is an empty [0] tensor without momentum");
}

void test_definition() {
  const int64_t B = 2, T = 45, H = 2, K = 12, V = 7;
  for (at::ScalarType dtype : {at::kDouble, at::kFloat}) {
    const double tol = dtype == at::kDouble ? 1e-12 : 1e-4;
    const Inputs in = make_inputs(B, T, H, K, V, B, dtype);
    for (int64_t C : {1, 4, 16, 64})
      for (bool has_momentum : {false, true})
        for (bool dgd : {false, true})
          for (bool use_initial : {false, true}) {
            const std::string name = std::string("(b) ") + c10::toString(dtype) + " C=" + std::to_string(C) +
                                     (has_momentum ? " momentum" : "") + (dgd ? " dgd" : "") +
                                     (use_initial ? " initial" : "");
            const auto out = linear_memory_recurrent_cpu(
                in.q, in.k, in.v, in.lr, in.retention, opt(has_momentum, in.momentum), opt(use_initial, in.m0),
                opt(use_initial && has_momentum, in.s0), std::nullopt, C, 0.7, dgd);
            const auto want = naive_definition(in, has_momentum, dgd, C, 0.7, use_initial, {});
            expect(std::get<0>(out).scalar_type() == dtype, name + ": o has v's dtype");
            expect(std::get<1>(out).scalar_type() == dtype, name + ": state dtype");
            expect_close(std::get<0>(out), want[0], tol, name + ": o");
            expect_close(std::get<1>(out), want[1], tol, name + ": final memory");
            if (has_momentum) expect_close(std::get<2>(out), want[2], tol, name + ": final momentum");
          }
  }
}

void test_varlen() {
  const int64_t H = 2, K = 6, V = 9, C = 8;
  const std::vector<int64_t> cu{0, 3, 3, 20, 41};  // a sequence shorter than a chunk, an empty one
  const int64_t T = cu.back(), N = static_cast<int64_t>(cu.size()) - 1;
  const Inputs in = make_inputs(1, T, H, K, V, N, at::kDouble);
  for (bool has_momentum : {false, true})
    for (bool dgd : {false, true})
      for (at::ScalarType cu_dtype : {at::kInt, at::kLong}) {
        const std::string name = std::string("(c) varlen") + (has_momentum ? " momentum" : "") + (dgd ? " dgd" : "") +
                                 " cu_seqlens " + c10::toString(cu_dtype);
        const at::Tensor cu_t = at::tensor(cu, at::kLong).to(cu_dtype);
        const auto out = linear_memory_recurrent_cpu(in.q, in.k, in.v, in.lr, in.retention,
                                                     opt(has_momentum, in.momentum), in.m0,
                                                     opt(has_momentum, in.s0), cu_t, C, 1.0, dgd);
        for (int64_t n = 0; n < N; ++n) {
          const int64_t s = cu[n], e = cu[n + 1];
          auto slice = [&](const at::Tensor& x) { return x.slice(1, s, e); };
          auto seq = [&](const at::Tensor& x) { return x.slice(0, n, n + 1); };
          const auto one = linear_memory_recurrent_cpu(
              slice(in.q), slice(in.k), slice(in.v), slice(in.lr), slice(in.retention),
              opt(has_momentum, slice(in.momentum)), seq(in.m0), opt(has_momentum, seq(in.s0)), std::nullopt, C,
              1.0, dgd);
          const std::string seq_name = name + " sequence " + std::to_string(n);
          expect_close(slice(std::get<0>(out)), std::get<0>(one), 1e-13, seq_name + ": o");
          expect_close(seq(std::get<1>(out)), std::get<1>(one), 1e-13, seq_name + ": final memory");
          if (has_momentum) expect_close(seq(std::get<2>(out)), std::get<2>(one), 1e-13, seq_name + ": final momentum");
        }
        const auto want = naive_definition(in, has_momentum, dgd, C, 1.0, true, cu);
        expect_close(std::get<0>(out), want[0], 1e-12, name + ": o against the definition");
      }
}

void expect_error(const std::string& name, const std::string& needle, const std::function<void()>& call) {
  ++g_checks;
  try {
    call();
  } catch (const c10::Error& e) {
    const std::string msg = e.what_without_backtrace();
    if (msg.find(needle) == std::string::npos) fail("(d) " + name + ": message does not name " + needle + ": " + msg);
    return;
  }
  fail("(d) " + name + ": no error raised");
}

void test_errors() {
  const int64_t B = 1, T = 5, H = 2, K = 4, V = 3;
  const Inputs in = make_inputs(B, T, H, K, V, B, at::kFloat);
  auto call = [&](const at::Tensor& q, const at::Tensor& lr, const std::optional<at::Tensor>& m0,
                  const std::optional<at::Tensor>& cu, int64_t C) {
    linear_memory_recurrent_cpu(q, in.k, in.v, lr, in.retention, std::nullopt, m0, std::nullopt, cu, C, 1.0, false);
  };
  expect_error("q shape", "q", [&] { call(in.q[0], in.lr, std::nullopt, std::nullopt, 1); });
  expect_error("lr shape", "lr", [&] { call(in.q, in.lr[0], std::nullopt, std::nullopt, 1); });
  expect_error("chunk_size", "chunk_size", [&] { call(in.q, in.lr, std::nullopt, std::nullopt, 0); });
  expect_error("initial_memory shape", "initial_memory",
               [&] { call(in.q, in.lr, at::zeros({B, H, V, K}), std::nullopt, 1); });
  expect_error("cu_seqlens dtype", "cu_seqlens",
               [&] { call(in.q, in.lr, std::nullopt, at::zeros({2}, at::kFloat), 1); });
  expect_error("cu_seqlens end", "cu_seqlens",
               [&] { call(in.q, in.lr, std::nullopt, at::tensor(std::vector<int64_t>{0, 4}), 1); });
}

void test_chunked() {
  const int64_t B = 2, T = 45, H = 2, K = 12, V = 40;  // V: a full value tile of 32 and a partial one
  const Inputs in = make_inputs(B, T, H, K, V, B, at::kDouble);
  for (int64_t C : {1, 4, 16, 64})
    for (bool has_momentum : {false, true})
      for (bool dgd : {false, true}) {
        const std::string name = std::string("(e) chunked C=") + std::to_string(C) + (has_momentum ? " momentum" : "") +
                                 (dgd ? " dgd" : "");
        const auto out = linear_memory_chunked_fwd_cpu(in.q, in.k, in.v, in.lr, in.retention,
                                                       opt(has_momentum, in.momentum), in.m0,
                                                       opt(has_momentum, in.s0), std::nullopt, C, 0.7, dgd);
        const auto want = naive_definition(in, has_momentum, dgd, C, 0.7, true, {});
        expect_close(std::get<0>(out), want[0], 1e-12, name + ": o");
        expect_close(std::get<1>(out), want[1], 1e-12, name + ": final memory");
        if (has_momentum) expect_close(std::get<2>(out), want[2], 1e-12, name + ": final momentum");
        const at::Tensor& chunk_memory = std::get<3>(out);
        expect(chunk_memory.sizes() == at::IntArrayRef({B, H, (T + C - 1) / C, K, V}), name + ": chunk_memory shape");
        for (int64_t c = 0; c * C < T; ++c) {
          const auto prefix = [&](const at::Tensor& x) { return x.slice(1, 0, c * C); };
          const auto before = linear_memory_recurrent_cpu(
              prefix(in.q), prefix(in.k), prefix(in.v), prefix(in.lr), prefix(in.retention),
              opt(has_momentum, prefix(in.momentum)), in.m0, opt(has_momentum, in.s0), std::nullopt, C, 0.7, dgd);
          const std::string chunk = name + " chunk " + std::to_string(c);
          expect_close(chunk_memory.select(2, c), std::get<1>(before), 1e-12, chunk + ": start memory");
          if (has_momentum) {
            expect_close(std::get<4>(out).select(2, c), std::get<2>(before), 1e-12, chunk + ": start momentum");
          }
        }
      }
}

int main() {
  at::manual_seed(42);
  test_gated_delta_rule();
  test_definition();
  test_varlen();
  test_errors();
  test_chunked();
  std::cout << "test_linear_memory_recurrent: all " << g_checks << " checks passed" << std::endl;
  return 0;
}
