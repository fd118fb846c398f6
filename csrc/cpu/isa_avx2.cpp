// sketchprune CPU: the kernels of isa_kernels.inc compiled for avx2 (x86-64 only; chosen at
// run time by kernels() in isa_generic.cpp when the CPU supports it).  The build uses no
// -march flags: only the functions in the target region below use avx2 instructions.
#include "cpu/cpu_common.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx2,fma"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx2,fma")
#endif

namespace sketchprune {
namespace cpu {
namespace avx2 {

struct VF {
  using T = float;
  using V = __m256;
  static constexpr int W = 8;
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
};
struct VD {
  using T = double;
  using V = __m256d;
  static constexpr int W = 4;
  static V zero() { return _mm256_setzero_pd(); }
  static V load(const double* p) { return _mm256_loadu_pd(p); }
  static void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  static V set1(double x) { return _mm256_set1_pd(x); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
};

// 16 x 16 fp32 transpose as four 8 x 8 register transposes (24 shuffles each).
inline void transpose16_block(const float* const* rows, int64_t i, float* blk) {
  for (int s0 = 0; s0 < 16; s0 += 8)
    for (int c0 = 0; c0 < 16; c0 += 8) {
      __m256 t[8], tt[8];
      for (int p = 0; p < 8; p += 2) {
        const __m256 r0 = _mm256_loadu_ps(rows[s0 + p] + i + c0);
        const __m256 r1 = _mm256_loadu_ps(rows[s0 + p + 1] + i + c0);
        t[p] = _mm256_unpacklo_ps(r0, r1);
        t[p + 1] = _mm256_unpackhi_ps(r0, r1);
      }
      for (int p = 0; p < 8; p += 4) {
        tt[p] = _mm256_shuffle_ps(t[p], t[p + 2], 0x44);
        tt[p + 1] = _mm256_shuffle_ps(t[p], t[p + 2], 0xEE);
        tt[p + 2] = _mm256_shuffle_ps(t[p + 1], t[p + 3], 0x44);
        tt[p + 3] = _mm256_shuffle_ps(t[p + 1], t[p + 3], 0xEE);
      }
      for (int q = 0; q < 4; ++q) {
        const __m256 lo = _mm256_permute2f128_ps(tt[q], tt[4 + q], 0x20);
        const __m256 hi = _mm256_permute2f128_ps(tt[q], tt[4 + q], 0x31);
        _mm256_store_ps(blk + (c0 + q) * 16 + s0, lo);
        _mm256_store_ps(blk + (c0 + 4 + q) * 16 + s0, hi);
      }
    }
}

constexpr int kMrF = 6, kNvF = 2, kMrD = 6, kNvD = 2;
constexpr int kKcF = 256, kKcD = 256;
constexpr int kOutR = 2, kOutQ = 2;  // 8 of the 16 ymm registers hold G (16 lanes = 2 ymm)
#include "isa_kernels.inc"
#include "isa_entry.inc"


}  // namespace avx2
}  // namespace cpu
}  // namespace sketchprune

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

namespace sketchprune {
namespace cpu {

bool kernels_avx2(KernelTable* t) {
  __builtin_cpu_init();
  if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"))) return false;
  avx2::fill_table(t, "avx2");
  return true;
}

}  // namespace cpu
}  // namespace sketchprune
#endif  // x86-64 && GNUC
