// sketchprune: the counter-based hash that *defines* the sparse-sign sketch.
//
// S is an r x m matrix (r = rows of the gradient space, m = sketch size).  Row j
// (j = offset + i, a 64-bit global row index) has exactly k nonzeros, one in
// each of k contiguous column blocks:
//
//   block t (0 <= t < k):  start_t = floor(t * m / k),
//                          width_t = floor((t + 1) * m / k) - start_t   (>= 1 since m >= k)
//   H      = mix64(mix64(seed) + j * C1 + t * C2)          (all arithmetic mod 2^64)
//   column = start_t + ((H >> 32) mod width_t)
//   value  = (H & 1 ? -1 : +1) / sqrt(k)
//
// mix64 is the splitmix64 finaliser (Steele, Lea & Flood 2014).  seed is an
// int64 reinterpreted as uint64.  The Triton twin lives in kernels/_hash.py and
// the torch twin in python/sketchprune/ref/hash.py; tests prove all three equal.
#pragma once
#include <cstdint>

#if defined(__CUDACC__)
#define SP_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define SP_HOST_DEVICE inline
#endif

namespace sketchprune {

constexpr uint64_t kHashC1 = 0x9E3779B97F4A7C15ull;
constexpr uint64_t kHashC2 = 0xD1B54A32D192ED03ull;
constexpr uint64_t kMixM1 = 0xBF58476D1CE4E5B9ull;
constexpr uint64_t kMixM2 = 0x94D049BB133111EBull;

SP_HOST_DEVICE uint64_t mix64(uint64_t z) {
  z ^= z >> 30;
  z *= kMixM1;
  z ^= z >> 27;
  z *= kMixM2;
  z ^= z >> 31;
  return z;
}

// Hash of (seed, row j, nonzero t).  seed_mixed = mix64(seed), hoisted by callers.
SP_HOST_DEVICE uint64_t sketch_hash(uint64_t seed_mixed, uint64_t j, uint64_t t) {
  return mix64(seed_mixed + j * kHashC1 + t * kHashC2);
}

SP_HOST_DEVICE int64_t block_start(int64_t t, int64_t m, int64_t k) { return (t * m) / k; }

// Column of nonzero t of row j, and its sign (+1 or -1; the 1/sqrt(k) scale is
// applied by the caller).
SP_HOST_DEVICE void sketch_entry(uint64_t seed_mixed, uint64_t j, int64_t t, int64_t m, int64_t k,
                                 int64_t* col, float* sign) {
  const int64_t start = block_start(t, m, k);
  const int64_t width = block_start(t + 1, m, k) - start;
  const uint64_t h = sketch_hash(seed_mixed, j, static_cast<uint64_t>(t));
  *col = start + static_cast<int64_t>((h >> 32) % static_cast<uint64_t>(width));
  *sign = (h & 1ull) ? -1.0f : 1.0f;
}

}  // namespace sketchprune
