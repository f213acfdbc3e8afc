// MmaTilePolicy: the tile policy of common/tile_policy.h for a CUDA block of NWARPS warps, whose
// products run on tensor cores: mma.sync.m16n8k16 with bf16 or fp16 operands (op_t: c10::BFloat16
// or c10::Half) and fp32 accumulators, sm_80+. Operands of another type (the fp32 state) are
// rounded to op_t as their fragments are loaded. The m × n output is cut into 16 × 8 tiles dealt
// to the warps round-robin, so the owner of (i, j) depends only on (m, n); m and kd must be
// multiples of 16 and n a multiple of 8. Fragments are loaded from shared memory element by
// element (no ldmatrix): any operand layout and type works, at some cost in load instructions.
#pragma once

#include <c10/util/BFloat16.h>
#include <c10/util/Half.h>

#include <cstdint>
#include <type_traits>

namespace nested_kernels {

template <typename op_t, int NWARPS>
struct MmaTilePolicy {
  static_assert(std::is_same_v<op_t, c10::BFloat16> || std::is_same_v<op_t, c10::Half>,
                "mma.sync operands are bf16 or fp16");
  static constexpr int kThreads = NWARPS * 32;

  template <typename F>
  __device__ __forceinline__ void for_each(int n, F&& f) const {
    for (int i = threadIdx.x; i < n; i += kThreads) f(i);
  }

  template <typename F>
  __device__ __forceinline__ void single(F&& f) const {
    if (threadIdx.x == 0) f();
  }

  __device__ __forceinline__ void sync() const { __syncthreads(); }

  // The 16 bits of x rounded to op_t.
  template <typename T>
  static __device__ __forceinline__ uint32_t bits(T x) {
    if constexpr (std::is_same_v<T, op_t>) {
      return x.x;
    } else {
      return op_t(static_cast<float>(x)).x;
    }
  }

  // Two op_t in one register, `lo` in the low half (the lower column / k index).
  template <typename T>
  static __device__ __forceinline__ uint32_t pack(T lo, T hi) {
    return bits(lo) | (bits(hi) << 16);
  }

  static __device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
    if constexpr (std::is_same_v<op_t, c10::BFloat16>) {
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
          "{%0, %1, %2, %3};\n"
          : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    } else {
      asm volatile(
          "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
          "{%0, %1, %2, %3};\n"
          : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
          : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
    }
  }

  template <bool TRANS_A, bool TRANS_B, typename a_t, typename b_t, typename Epi>
  __device__ __forceinline__ void gemm(int m, int n, int kd, const a_t* a, int lda, const b_t* b, int ldb,
                                       bool lower_a, Epi&& epi) const {
    const auto A = [&](int i, int l) { return TRANS_A ? a[l * lda + i] : a[i * lda + l]; };
    const auto B = [&](int l, int j) { return TRANS_B ? b[j * ldb + l] : b[l * ldb + j]; };
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int g = lane / 4, t2 = (lane % 4) * 2;  // fragment row group, column pair (PTX m16n8k16 layout)
    const int tiles_n = n / 8, tiles = (m / 16) * tiles_n;
    for (int tile = warp; tile < tiles; tile += NWARPS) {
      const int i0 = (tile / tiles_n) * 16, j0 = (tile % tiles_n) * 8;
      const int l_end = lower_a && i0 + 16 < kd ? i0 + 16 : kd;  // A is zero past the tile's last row
      float c[4] = {0.f, 0.f, 0.f, 0.f};
      for (int l0 = 0; l0 < l_end; l0 += 16) {
        const uint32_t fa[4] = {
            pack(A(i0 + g, l0 + t2), A(i0 + g, l0 + t2 + 1)),
            pack(A(i0 + g + 8, l0 + t2), A(i0 + g + 8, l0 + t2 + 1)),
            pack(A(i0 + g, l0 + t2 + 8), A(i0 + g, l0 + t2 + 9)),
            pack(A(i0 + g + 8, l0 + t2 + 8), A(i0 + g + 8, l0 + t2 + 9)),
        };
        const uint32_t fb[2] = {
            pack(B(l0 + t2, j0 + g), B(l0 + t2 + 1, j0 + g)),
            pack(B(l0 + t2 + 8, j0 + g), B(l0 + t2 + 9, j0 + g)),
        };
        mma(c, fa, fb);
      }
      epi(i0 + g, j0 + t2, c[0]);
      epi(i0 + g, j0 + t2 + 1, c[1]);
      epi(i0 + g + 8, j0 + t2, c[2]);
      epi(i0 + g + 8, j0 + t2 + 1, c[3]);
    }
  }
};

}  // namespace nested_kernels
