// Host side of `linear_memory_chunked_fwd` and `_bwd` shared by its CPU and CUDA entry points: the kernel
// parameters from the prepared tensors (linear_memory_ops.h: prepare_linear_memory_chunked).
#pragma once

#include "linear_memory/linear_memory_chunk.h"
#include "linear_memory/linear_memory_chunk_bwd.h"
#include "linear_memory/linear_memory_ops.h"

#include <ATen/ATen.h>

namespace nested_kernels {
namespace linear_memory {

// Pointers and sizes of one call; momentum and cu_seqlens are null where the tensors are absent.
template <typename scalar_t, typename acc_t>
ChunkedParams<scalar_t, acc_t> chunked_params(const ChunkedTensors& t, const RecurrentSizes& s, int64_t chunk_size,
                                              double scale) {
  const bool has_momentum = t.momentum.defined();
  ChunkedParams<scalar_t, acc_t> p;
  p.q = t.q.const_data_ptr<scalar_t>();
  p.k = t.k.const_data_ptr<scalar_t>();
  p.v = t.v.const_data_ptr<scalar_t>();
  p.lr = t.lr.const_data_ptr<acc_t>();
  p.retention = t.retention.const_data_ptr<acc_t>();
  p.momentum = has_momentum ? t.momentum.const_data_ptr<acc_t>() : nullptr;
  p.cu_seqlens = t.cu_seqlens.defined() ? t.cu_seqlens.const_data_ptr<int64_t>() : nullptr;
  p.o = t.o.mutable_data_ptr<scalar_t>();
  p.memory = t.final_memory.mutable_data_ptr<acc_t>();
  p.mom_state = has_momentum ? t.final_momentum.mutable_data_ptr<acc_t>() : nullptr;
  p.chunk_memory = t.chunk_memory.mutable_data_ptr<acc_t>();
  p.chunk_momentum = has_momentum ? t.chunk_momentum.mutable_data_ptr<acc_t>() : nullptr;
  p.T = s.T;
  p.H = s.H;
  p.K = s.K;
  p.V = s.V;
  p.NC = t.NC;
  p.chunk_size = chunk_size;
  p.scale = static_cast<acc_t>(scale);
  return p;
}

// Pointers and sizes of one backward call.
template <typename scalar_t, typename acc_t>
ChunkedBwdParams<scalar_t, acc_t> chunked_bwd_params(const ChunkedBwdTensors& t, const RecurrentSizes& s,
                                                     int64_t chunk_size, double scale) {
  const bool has_momentum = t.momentum.defined();
  const auto maybe = [](const at::Tensor& x) { return x.defined() ? x.const_data_ptr<acc_t>() : nullptr; };
  ChunkedBwdParams<scalar_t, acc_t> p;
  p.q = t.q.const_data_ptr<scalar_t>();
  p.k = t.k.const_data_ptr<scalar_t>();
  p.v = t.v.const_data_ptr<scalar_t>();
  p.lr = t.lr.const_data_ptr<acc_t>();
  p.retention = t.retention.const_data_ptr<acc_t>();
  p.momentum = maybe(t.momentum);
  p.cu_seqlens = t.cu_seqlens.defined() ? t.cu_seqlens.const_data_ptr<int64_t>() : nullptr;
  p.d_o = t.d_o.const_data_ptr<scalar_t>();
  p.d_final_memory = maybe(t.d_final_memory);
  p.d_final_momentum = maybe(t.d_final_momentum);
  p.chunk_memory = t.chunk_memory.const_data_ptr<acc_t>();
  p.chunk_momentum = maybe(t.chunk_momentum);
  p.dq = t.dq.mutable_data_ptr<acc_t>();
  p.dk = t.dk.mutable_data_ptr<acc_t>();
  p.dv = t.o.mutable_data_ptr<scalar_t>();
  p.dlr = t.dlr.mutable_data_ptr<acc_t>();
  p.dretention = t.dretention.mutable_data_ptr<acc_t>();
  p.dmomentum = has_momentum ? t.dmomentum.mutable_data_ptr<acc_t>() : nullptr;
  p.d_initial_memory = t.d_initial_memory.mutable_data_ptr<acc_t>();
  p.d_initial_momentum = has_momentum ? t.d_initial_momentum.mutable_data_ptr<acc_t>() : nullptr;
  p.B = s.B;
  p.T = s.T;
  p.H = s.H;
  p.K = s.K;
  p.V = s.V;
  p.NC = t.NC;
  p.chunk_size = chunk_size;
  p.scale = static_cast<acc_t>(scale);
  return p;
}

}  // namespace linear_memory
}  // namespace nested_kernels
