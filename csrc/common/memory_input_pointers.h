// The inputs every compiled memory op's kernel reads (q, k, v and the gates), as raw pointers: the
// base of each kernel's parameters (linear_memory: linear_memory_inputs.h, linear_memory_step.h;
// mlp_memory: mlp_memory_step.h). No ATen, so nvcc device code can take it; the host fills it with
// `fill_memory_input_pointers` (memory_inputs.h).
#pragma once

namespace nested_kernels {

// Contiguous (the host makes them so), gates in acc_t; [B or N, T, H, ·].
template <typename scalar_t, typename acc_t>
struct MemoryInputPointers {
  const scalar_t* q;          // [B, T, H, K]
  const scalar_t* k;          // [B, T, H, K]
  const scalar_t* v;          // [B, T, H, V]
  const acc_t* lr;            // [B, T, H] η
  const acc_t* retention;     // [B, T, H] α
  const acc_t* momentum;      // [B, T, H] μ, null without momentum
};

}  // namespace nested_kernels
