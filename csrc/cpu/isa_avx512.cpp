// sketchprune CPU: the kernels of isa_kernels.inc compiled for avx512 (x86-64 only; chosen at
// run time by kernels() in isa_generic.cpp when the CPU supports it).  The build uses no
// -march flags: only the functions in the target region below use avx512 instructions.
#include "cpu/cpu_common.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>

#if !defined(__clang__)
// GCC 12's avx512fintrin.h trips -Wuninitialized on its own _mm512_undefined_* (PR105593).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#if defined(__clang__)
#pragma clang attribute push(__attribute__((target("avx512f"))), apply_to = function)
#else
#pragma GCC push_options
#pragma GCC target("avx512f")
#endif

namespace sketchprune {
namespace cpu {
namespace avx512 {

struct VF {
  using T = float;
  using V = __m512;
  static constexpr int W = 16;
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
};
struct VD {
  using T = double;
  using V = __m512d;
  static constexpr int W = 8;
  static V zero() { return _mm512_setzero_pd(); }
  static V load(const double* p) { return _mm512_loadu_pd(p); }
  static void store(double* p, V v) { _mm512_storeu_pd(p, v); }
  static V set1(double x) { return _mm512_set1_pd(x); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
};

// 16 x 16 fp32 transpose in registers: 16 loads, 64 shuffles, 16 stores.
inline void transpose16_block(const float* const* rows, int64_t i, float* blk) {
  __m512 u[16];
  for (int g = 0; g < 4; ++g) {
    const __m512 r0 = _mm512_loadu_ps(rows[4 * g] + i);
    const __m512 r1 = _mm512_loadu_ps(rows[4 * g + 1] + i);
    const __m512 r2 = _mm512_loadu_ps(rows[4 * g + 2] + i);
    const __m512 r3 = _mm512_loadu_ps(rows[4 * g + 3] + i);
    const __m512d l01 = _mm512_castps_pd(_mm512_unpacklo_ps(r0, r1));
    const __m512d h01 = _mm512_castps_pd(_mm512_unpackhi_ps(r0, r1));
    const __m512d l23 = _mm512_castps_pd(_mm512_unpacklo_ps(r2, r3));
    const __m512d h23 = _mm512_castps_pd(_mm512_unpackhi_ps(r2, r3));
    // u[4g+q], 128-bit lane L = rows 4g..4g+3 of column 4L+q
    u[4 * g + 0] = _mm512_castpd_ps(_mm512_unpacklo_pd(l01, l23));
    u[4 * g + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(l01, l23));
    u[4 * g + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(h01, h23));
    u[4 * g + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(h01, h23));
  }
  for (int q = 0; q < 4; ++q) {
    const __m512 a = _mm512_shuffle_f32x4(u[q], u[4 + q], 0x88);
    const __m512 b = _mm512_shuffle_f32x4(u[8 + q], u[12 + q], 0x88);
    const __m512 c = _mm512_shuffle_f32x4(u[q], u[4 + q], 0xdd);
    const __m512 e = _mm512_shuffle_f32x4(u[8 + q], u[12 + q], 0xdd);
    _mm512_store_ps(blk + (q)*16, _mm512_shuffle_f32x4(a, b, 0x88));
    _mm512_store_ps(blk + (8 + q) * 16, _mm512_shuffle_f32x4(a, b, 0xdd));
    _mm512_store_ps(blk + (4 + q) * 16, _mm512_shuffle_f32x4(c, e, 0x88));
    _mm512_store_ps(blk + (12 + q) * 16, _mm512_shuffle_f32x4(c, e, 0xdd));
  }
}

constexpr int kMrF = 12, kNvF = 2, kMrD = 12, kNvD = 2;
constexpr int kKcF = 384, kKcD = 256;
constexpr int kOutR = 4, kOutQ = 6;  // 24 of the 32 zmm registers hold G
#include "isa_kernels.inc"
#include "isa_entry.inc"

// ---------------------------------------------------------------------------------------
// Row hashing with the k nonzeros of a row in the 8 64-bit lanes (k > 8: several vectors,
// k % 8: masked).  Same integer arithmetic as RowHasher::fill_fast (sketch_hash of
// common/sketch_hash.h, then Lemire's modulo), with 64-bit products built from 32 x 32-bit
// vpmuludq (AVX-512F has no 64-bit multiply), so every entry is bit-identical.
// a * b mod 2^64
static inline __m512i mul64(__m512i a, __m512i b) {
  const __m512i lo = _mm512_mul_epu32(a, b);
  const __m512i c1 = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), b);
  const __m512i c2 = _mm512_mul_epu32(a, _mm512_srli_epi64(b, 32));
  return _mm512_add_epi64(lo, _mm512_slli_epi64(_mm512_add_epi64(c1, c2), 32));
}
static void hash_rows(const HashConsts& h, const uint64_t* rows, int64_t n, SketchEntry* out) {
  const int64_t k = h.k;
  const __m512i m1 = _mm512_set1_epi64(static_cast<long long>(kMixM1));
  const __m512i m2 = _mm512_set1_epi64(static_cast<long long>(kMixM2));
  const __m512i lo32 = _mm512_set1_epi64(0xFFFFFFFFll);
  const __m512i one = _mm512_set1_epi64(1);
  const __m512i scale = _mm512_set1_epi64(static_cast<long long>(h.scale_bits));
  for (int64_t t0 = 0; t0 < k; t0 += 8) {
    const int kt = static_cast<int>(k - t0 < 8 ? k - t0 : 8);
    const __mmask8 mask = static_cast<__mmask8>((1u << kt) - 1u);
    alignas(64) uint64_t tc[8] = {0}, mg[8] = {0}, wd[8] = {0}, st[8] = {0};
    for (int l = 0; l < kt; ++l) {
      tc[l] = h.seed_mixed + static_cast<uint64_t>(t0 + l) * kHashC2;
      mg[l] = h.magic[t0 + l];
      wd[l] = h.width[t0 + l];
      st[l] = static_cast<uint64_t>(static_cast<int64_t>(h.start[t0 + l]));
    }
    const __m512i vtc = _mm512_load_si512(tc), vmg = _mm512_load_si512(mg);
    const __m512i vwd = _mm512_load_si512(wd), vst = _mm512_load_si512(st);
    for (int64_t i = 0; i < n; ++i) {
      // z = seed_mixed + j * C1 + t * C2, then mix64
      __m512i z = _mm512_add_epi64(vtc, _mm512_set1_epi64(static_cast<long long>(rows[i] * kHashC1)));
      z = _mm512_xor_si512(z, _mm512_srli_epi64(z, 30));
      z = mul64(z, m1);
      z = _mm512_xor_si512(z, _mm512_srli_epi64(z, 27));
      z = mul64(z, m2);
      z = _mm512_xor_si512(z, _mm512_srli_epi64(z, 31));
      // rem = ((magic * (z >> 32)) mod 2^64 * width) >> 64, exactly (z >> 32) mod width
      const __m512i hi = _mm512_srli_epi64(z, 32);
      const __m512i low = _mm512_add_epi64(_mm512_mul_epu32(vmg, hi),
                                           _mm512_slli_epi64(_mm512_mul_epu32(_mm512_srli_epi64(vmg, 32), hi), 32));
      const __m512i p_lo = _mm512_mul_epu32(low, vwd);                        // lo32(low) * w
      const __m512i p_hi = _mm512_mul_epu32(_mm512_srli_epi64(low, 32), vwd);  // hi32(low) * w
      const __m512i rem = _mm512_srli_epi64(_mm512_add_epi64(p_hi, _mm512_srli_epi64(p_lo, 32)), 32);
      // entry: off = 16 * (start + rem) in the low half, value bits (sign from bit 0) high
      const __m512i off = _mm512_and_si512(_mm512_slli_epi64(_mm512_add_epi64(vst, rem), 4), lo32);
      const __m512i val = _mm512_xor_si512(scale, _mm512_slli_epi64(_mm512_and_si512(z, one), 31));
      _mm512_mask_storeu_epi64(out + i * k + t0, mask, _mm512_or_si512(off, _mm512_slli_epi64(val, 32)));
    }
  }
}


}  // namespace avx512
}  // namespace cpu
}  // namespace sketchprune

#if defined(__clang__)
#pragma clang attribute pop
#else
#pragma GCC pop_options
#endif

namespace sketchprune {
namespace cpu {

bool kernels_avx512(KernelTable* t) {
  __builtin_cpu_init();
  if (!(__builtin_cpu_supports("avx512f"))) return false;
  avx512::fill_table(t, "avx512");
  t->hash_rows = &avx512::hash_rows;
  return true;
}

}  // namespace cpu
}  // namespace sketchprune
#endif  // x86-64 && GNUC
