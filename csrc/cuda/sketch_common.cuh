// sketchprune CUDA module: pieces shared by sparse_sign_sketch and outer_sketch.
//
// S (r x m) row j has k nonzeros sign/sqrt(k) at columns given by sketchprune::sketch_entry
// (csrc/common/sketch_hash.h, the definition: never re-implemented here). Blocks evaluate
// the hash once per (S row, nonzero) and stage the result in shared memory as one packed
// 32-bit entry, reused for every sample the block handles:
//   entry = column (bits 0..30) | 0x80000000 if the sign is negative   (needs m < 2^31).
// The 1/sqrt(k) scale is applied once, when a block's partial sums leave it (flush).
#pragma once

#include "common/sketch_hash.h"
#include "cuda_common.cuh"

namespace sketchprune {
namespace cuda {

constexpr uint32_t kSignBit = 0x80000000u;

SP_HOST_DEVICE uint32_t make_entry(uint64_t seed_mixed, uint64_t row, int64_t t, int64_t m, int64_t k) {
  int64_t col;
  float sign;
  sketch_entry(seed_mixed, row, t, m, k, &col, &sign);
  return static_cast<uint32_t>(col) | (sign < 0.f ? kSignBit : 0u);
}

__device__ __forceinline__ int entry_col(uint32_t e) { return static_cast<int>(e & ~kSignBit); }

// +v or -v as the entry's sign says (flips the IEEE sign bit: exact).
__device__ __forceinline__ float signed_value(uint32_t e, float v) {
  return __uint_as_float(__float_as_uint(v) ^ (e & kSignBit));
}

// ---- Fast evaluation (hot paths). sketch_entry recomputes block_start(t, m, k) (two 64-bit
// divisions) and reduces modulo the block width with a 64-bit remainder on every call. The
// fast form takes the per-nonzero constants from a small table built once per block
// (NzSpec, from the header's block_start) and reduces with a 32-bit multiply-shift
// (widths are < 2^31). The hash itself is the header's sketch_hash. check_fast_entry()
// (host, once per process, before the first launch) proves fast_entry == sketch_entry on
// a few thousand (seed, row, t, m, k) cases including the edges, so a change of the
// definition in sketch_hash.h that this file does not follow fails loudly instead of
// silently producing a different sketch.
struct NzSpec {
  uint32_t start, width, mul, shift;  // column block of nonzero t; n / width = (umulhi(n,mul)+n) >> shift
};

SP_HOST_DEVICE NzSpec make_nzspec(int64_t t, int64_t m, int64_t k) {
  NzSpec s;
  const int64_t start = block_start(t, m, k);
  const uint64_t width = static_cast<uint64_t>(block_start(t + 1, m, k) - start);  // 1 <= width < 2^31
  uint32_t shift = 0;
  while ((uint64_t(1) << shift) < width) ++shift;
  s.start = static_cast<uint32_t>(start);
  s.width = static_cast<uint32_t>(width);
  s.mul = static_cast<uint32_t>(((uint64_t(1) << 32) * ((uint64_t(1) << shift) - width)) / width + 1);
  s.shift = shift;
  return s;
}

SP_HOST_DEVICE uint32_t umulhi32(uint32_t a, uint32_t b) {
#if defined(__CUDA_ARCH__)
  return __umulhi(a, b);
#else
  return static_cast<uint32_t>((static_cast<uint64_t>(a) * b) >> 32);
#endif
}

// Same value as make_entry(seed_mixed, row, t, m, k) given spec = make_nzspec(t, m, k).
SP_HOST_DEVICE uint32_t fast_entry(uint64_t seed_mixed, uint64_t row, uint32_t t, const NzSpec& spec) {
  const uint64_t h = sketch_hash(seed_mixed, row, t);
  const uint32_t n = static_cast<uint32_t>(h >> 32);
  const uint32_t q = static_cast<uint32_t>((static_cast<uint64_t>(umulhi32(n, spec.mul)) + n) >> spec.shift);
  return (spec.start + (n - q * spec.width)) | ((h & 1ull) ? kSignBit : 0u);
}

// Block-cooperative: spec[t] for t < k (call before a barrier).
__device__ __forceinline__ void build_nzspecs(NzSpec* spec, int64_t m, int64_t k) {
  for (int t = threadIdx.x; t < k; t += blockDim.x) spec[t] = make_nzspec(t, m, k);
}

// dst[e * k + t] = entry of S row row_of(e), nonzero t, for e in [0, count) with valid(e);
// block-cooperative (call between barriers; spec built and visible).
template <class RowOf, class Valid>
__device__ __forceinline__ void stage_entries(uint32_t* dst, int count, int k, const NzSpec* spec,
                                              uint64_t seed_mixed, RowOf row_of, Valid valid) {
  for (int e = threadIdx.x; e < count; e += blockDim.x) {
    if (!valid(e)) continue;
    const uint64_t row = row_of(e);
    for (int t = 0; t < k; ++t) dst[e * k + t] = fast_entry(seed_mixed, row, static_cast<uint32_t>(t), spec[t]);
  }
}

// Host: throws unless fast_entry agrees with the definition (sketch_entry) everywhere tested.
void check_fast_entry(const char* op);

// How a block's partial result reaches global memory.
enum FlushMode : int {
  kFlushStore = 0,   // sole writer, overwrite
  kFlushAdd = 1,     // sole writer, accumulate
  kFlushAtomic = 2,  // several writers (out pre-zeroed on the stream when overwriting)
};

__device__ __forceinline__ void flush_value(float* dst, float v, int mode) {
  if (mode == kFlushAtomic)
    atomicAdd(dst, v);
  else if (mode == kFlushAdd)
    *dst += v;
  else
    *dst = v;
}

}  // namespace cuda
}  // namespace sketchprune
