// Argument checks and host-side preparation of `linear_memory_chunked_bwd`, shared by its CPU and
// CUDA entry points (the forward's arguments are checked as the forward checks them).
#include "common/checks.h"
#include "common/memory_inputs.h"
#include "linear_memory/linear_memory_chunk_steps.h"
#include "linear_memory/linear_memory_ops.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

namespace nested_kernels {
namespace linear_memory {

using namespace checks;

RecurrentSizes check_linear_memory_chunked_bwd_args(
    const char* op, const at::Tensor& d_o, const std::optional<at::Tensor>& d_final_memory,
    const std::optional<at::Tensor>& d_final_momentum, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& lr, const at::Tensor& retention, const std::optional<at::Tensor>& momentum,
    const at::Tensor& chunk_memory, const std::optional<at::Tensor>& chunk_momentum,
    const std::optional<at::Tensor>& cu_seqlens, int64_t chunk_size, c10::DeviceType device_type,
    bool check_cu_seqlens_values) {
  const RecurrentSizes s = check_linear_memory_args(op, q, k, v, lr, retention, momentum, std::nullopt, std::nullopt,
                                                     cu_seqlens, chunk_size, device_type, check_cu_seqlens_values);
  const c10::Device device = q.device();
  check_device(op, d_o, "do", device);
  check_float(op, d_o, "do");
  check_shape(op, d_o, "do", {s.B, s.T, s.H, s.V}, "[B, T, H, V]");
  TORCH_CHECK(momentum.has_value() || !d_final_momentum.has_value(), op,
              "d_final_momentum was given but momentum is None (a call without momentum has no momentum state)");
  const auto check_adjoint = [&](const std::optional<at::Tensor>& t, const char* name) {
    if (!t.has_value()) return;
    check_device(op, *t, name, device);
    check_float(op, *t, name);
    check_shape(op, *t, name, {s.N, s.H, s.K, s.V}, "[N, H, K, V]");
  };
  check_adjoint(d_final_memory, "d_final_memory");
  check_adjoint(d_final_momentum, "d_final_momentum");
  const at::ScalarType acc_type = q.scalar_type() == at::kDouble ? at::kDouble : at::kFloat;
  const int64_t NC = chunk_slots(s.T, s.N, chunk_size, cu_seqlens.has_value());
  const auto check_chunks = [&](const at::Tensor& t, const char* name) {
    check_device(op, t, name, device);
    check_shape(op, t, name, {s.B, s.H, NC, s.K, s.V}, "[B, H, NC, K, V] (the forward's chunk-start states)");
    TORCH_CHECK(t.scalar_type() == acc_type, op, name, " must be ", acc_type, " (the forward's state type), got ",
                t.scalar_type());
  };
  check_chunks(chunk_memory, "chunk_memory");
  if (momentum.has_value()) {
    TORCH_CHECK(chunk_momentum.has_value(), op, "chunk_momentum is required with momentum (the forward returns it)");
    check_chunks(*chunk_momentum, "chunk_momentum");
  }
  return s;
}

ChunkedBwdTensors prepare_linear_memory_chunked_bwd(
    const at::Tensor& d_o, const std::optional<at::Tensor>& d_final_memory,
    const std::optional<at::Tensor>& d_final_momentum, const at::Tensor& q, const at::Tensor& k,
    const at::Tensor& v, const at::Tensor& lr, const at::Tensor& retention, const std::optional<at::Tensor>& momentum,
    const at::Tensor& chunk_memory, const std::optional<at::Tensor>& chunk_momentum,
    const std::optional<at::Tensor>& cu_seqlens, int64_t chunk_size, const RecurrentSizes& s, int granule) {
  const bool has_momentum = momentum.has_value();
  const at::TensorOptions acc_opts = chunk_memory.options();
  ChunkedBwdTensors t;
  static_cast<MemoryInputs&>(t) = prepare_memory_inputs(q, k, v, lr, retention, momentum, s.B, s.T, s.H, s.V);
  if (cu_seqlens.has_value()) {
    t.cu_seqlens = cu_seqlens->to(at::kLong).contiguous();
  }
  t.d_o = d_o.to(v.scalar_type()).contiguous();
  const auto adjoint = [&](const std::optional<at::Tensor>& a) {
    return a.has_value() ? a->to(acc_opts.dtype()).contiguous() : at::Tensor();
  };
  t.d_final_memory = adjoint(d_final_memory);
  t.d_final_momentum = has_momentum ? adjoint(d_final_momentum) : at::Tensor();
  t.chunk_memory = chunk_memory.contiguous();
  t.chunk_momentum = has_momentum ? chunk_momentum->contiguous() : at::Tensor();
  t.NC = chunk_slots(s.T, s.N, chunk_size, cu_seqlens.has_value());
  const ChunkTileShape shape = chunk_tile_shape(chunk_size, s.K, granule);
  t.NVT = (s.V + shape.BV - 1) / shape.BV;
  // Every element the kernels own is written; zeros keep the rest (no value tile, no token) defined.
  t.dq = at::zeros({t.NVT, s.B, s.T, s.H, s.K}, acc_opts);
  t.dk = at::zeros({t.NVT, s.B, s.T, s.H, s.K}, acc_opts);
  t.dlr = at::zeros({t.NVT, s.B, s.T, s.H}, acc_opts);
  t.dretention = at::zeros({t.NVT, s.B, s.T, s.H}, acc_opts);
  t.dmomentum = has_momentum ? at::zeros({t.NVT, s.B, s.T, s.H}, acc_opts) : at::empty({0}, acc_opts);
  t.o.zero_();  // dv
  const auto initial = [&](const at::Tensor& final) {  // no chunk (T = 0): the final state's adjoint
    return final.defined() ? final.clone() : at::zeros({s.N, s.H, s.K, s.V}, acc_opts);
  };
  t.d_initial_memory = initial(t.d_final_memory);
  t.d_initial_momentum = has_momentum ? initial(t.d_final_momentum) : at::empty({0}, acc_opts);
  return t;
}

ChunkedBwdResult finish_linear_memory_chunked_bwd(const ChunkedBwdTensors& t) {
  const auto total = [](const at::Tensor& part) { return part.sum(0); };
  return std::make_tuple(total(t.dq).to(t.q.scalar_type()), total(t.dk).to(t.q.scalar_type()), t.o, total(t.dlr),
                         total(t.dretention), t.momentum.defined() ? total(t.dmomentum) : t.dmomentum,
                         t.d_initial_memory, t.d_initial_momentum);
}

}  // namespace linear_memory
}  // namespace nested_kernels
