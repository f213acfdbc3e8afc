// The inputs every `linear_memory` kernel reads (SPEC §2): the token-by-token recurrence, the
// chunked forward and the chunked backward extend this struct with their own outputs. Raw pointers
// and sizes, no ATen, so nvcc device code can take it; the host fills it with
// `fill_linear_memory_inputs` (linear_memory_ops.h).
#pragma once

#include <cstdint>

namespace nested_kernels {
namespace linear_memory {

// Contiguous (the host makes them so), gates in acc_t.
template <typename scalar_t, typename acc_t>
struct LinearMemoryInputs {
  const scalar_t* q;          // [B, T, H, K]
  const scalar_t* k;          // [B, T, H, K]
  const scalar_t* v;          // [B, T, H, V]
  const acc_t* lr;            // [B, T, H] η
  const acc_t* retention;     // [B, T, H] α
  const acc_t* momentum;      // [B, T, H] μ, null without momentum
  const int64_t* cu_seqlens;  // [N + 1] token offsets into batch row 0, null when dense
  int64_t B;                  // batch rows
  int64_t T;                  // tokens per batch row
  int64_t H;                  // heads
  int64_t K;                  // rows of M
  int64_t V;                  // columns of M
  int64_t chunk_size;         // tokens per chunk C ≥ 1
  acc_t scale;                // read scale
};

}  // namespace linear_memory
}  // namespace nested_kernels
