// The inputs every `linear_memory` kernel reads (SPEC §2): the token-by-token recurrence, the
// chunked forward and the chunked backward extend this struct with their own outputs. Raw pointers
// and sizes, no ATen, so nvcc device code can take it; the host fills it with
// `fill_linear_memory_inputs` (linear_memory_ops.h).
#pragma once

#include "common/memory_input_pointers.h"

#include <cstdint>

namespace nested_kernels {
namespace linear_memory {

// q, k, v and the gates (memory_input_pointers.h), the sequences and the sizes.
template <typename scalar_t, typename acc_t>
struct LinearMemoryInputs : MemoryInputPointers<scalar_t, acc_t> {
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
