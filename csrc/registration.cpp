// The `torch.ops.nested_kernels` library: every op schema, defined once, and the CPU kernels.
// CUDA kernels register themselves in their .cu files (only compiled in CUDA builds).
// Built as the Python extension `nested_kernels._C` (TORCH_EXTENSION_NAME defined), this file
// also holds the pybind11 module; the C++ tests link it without Python.
#include <torch/library.h>

#include "linear_memory/linear_memory_ops.h"
#include "mlp_memory/mlp_memory_ops.h"

TORCH_LIBRARY(nested_kernels, m) {
  // SPEC §2, forward only. Returns (o, final_memory, final_momentum); final_momentum is an
  // empty [0] tensor when momentum is None.
  m.def(
      "linear_memory_recurrent(Tensor q, Tensor k, Tensor v, Tensor lr, Tensor retention, Tensor? momentum, "
      "Tensor? initial_memory, Tensor? initial_momentum, Tensor? cu_seqlens, int chunk_size, float scale, "
      "bool dgd) -> (Tensor, Tensor, Tensor)");
  // SPEC §2 chunked (csrc/linear_memory/linear_memory_chunk.h), forward only.
  // Returns (o, final_memory, final_momentum, chunk_memory, chunk_momentum): the chunk-start
  // states [B, H, NC, K, V] a backward reads; without momentum final_momentum and chunk_momentum
  // are empty [0] tensors.
  m.def(
      "linear_memory_chunked_fwd(Tensor q, Tensor k, Tensor v, Tensor lr, Tensor retention, Tensor? momentum, "
      "Tensor? initial_memory, Tensor? initial_momentum, Tensor? cu_seqlens, int chunk_size, float scale, "
      "bool dgd) -> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  // The backward of linear_memory_chunked_fwd (csrc/linear_memory/linear_memory_chunk_bwd.h), from
  // its inputs, its chunk-start states and the adjoints d_o of o and of the final states (absent: zero).
  // Returns (dq, dk, dv, dlr, dretention, dmomentum, d_initial_memory, d_initial_momentum); gate
  // gradients [B, T, H] and state adjoints in the state type; without momentum dmomentum and
  // d_initial_momentum are empty [0] tensors.
  m.def(
      "linear_memory_chunked_bwd(Tensor d_o, Tensor? d_final_memory, Tensor? d_final_momentum, Tensor q, Tensor k, "
      "Tensor v, Tensor lr, Tensor retention, Tensor? momentum, Tensor chunk_memory, Tensor? chunk_momentum, "
      "Tensor? cu_seqlens, int chunk_size, float scale, bool dgd) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor)");
  // SPEC §2 decode step, forward only: T new tokens per sequence from the decode state (memory
  // M_t, chunk_memory M^c, momentum_state S_t, position in the chunk), all updated in place.
  // Returns o.
  m.def(
      "linear_memory_step(Tensor q, Tensor k, Tensor v, Tensor lr, Tensor retention, Tensor? momentum, "
      "Tensor(a!) memory, Tensor(b!) chunk_memory, Tensor(c!)? momentum_state, Tensor(d!) position, "
      "int chunk_size, float scale, bool dgd) -> Tensor");
  // SPEC §3 decode step, forward only: T new tokens per sequence from the decode state (running
  // weights w1, w2, chunk-start weights chunk_w1, chunk_w2, momenta s1, s2, position in the
  // chunk), all updated in place. activation: "silu" | "gelu"; read: "current" | "chunk_start".
  // Returns o.
  m.def(
      "mlp_memory_step(Tensor q, Tensor k, Tensor v, Tensor lr, Tensor retention, Tensor? momentum, "
      "Tensor(a!) w1, Tensor(b!) w2, Tensor(c!) chunk_w1, Tensor(d!) chunk_w2, Tensor(e!)? s1, Tensor(f!)? s2, "
      "Tensor(g!) position, int chunk_size, str activation, bool residual, bool dgd, bool self_target, "
      "str read) -> Tensor");
}

TORCH_LIBRARY_IMPL(nested_kernels, CPU, m) {
  m.impl("linear_memory_recurrent", &nested_kernels::linear_memory::linear_memory_recurrent_cpu);
  m.impl("linear_memory_chunked_fwd", &nested_kernels::linear_memory::linear_memory_chunked_fwd_cpu);
  m.impl("linear_memory_chunked_bwd", &nested_kernels::linear_memory::linear_memory_chunked_bwd_cpu);
  m.impl("linear_memory_step", &nested_kernels::linear_memory::linear_memory_step_cpu);
  m.impl("mlp_memory_step", &nested_kernels::mlp_memory::mlp_memory_step_cpu);
}

#ifdef TORCH_EXTENSION_NAME
#include <pybind11/pybind11.h>

#ifndef NK_WITH_CUDA
#define NK_WITH_CUDA 0
#endif
#ifndef NK_CUDA_ARCHS
#define NK_CUDA_ARCHS ""
#endif
#ifndef NK_TORCH_VERSION
#define NK_TORCH_VERSION "unknown"
#endif

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Compiled kernels of nested_kernels; the ops live in torch.ops.nested_kernels.";
  m.def(
      "build_info",
      [] {
        pybind11::dict info;
        info["built"] = true;
        info["cuda"] = static_cast<bool>(NK_WITH_CUDA);
        info["cuda_archs"] = std::string(NK_CUDA_ARCHS);
#ifdef _OPENMP
        info["openmp"] = true;
#else
        info["openmp"] = false;
#endif
        info["torch_version"] = std::string(NK_TORCH_VERSION);
        return info;
      },
      "How this extension was built: cuda (bool), cuda_archs (str), openmp (bool), torch_version (str).");
}
#endif  // TORCH_EXTENSION_NAME
