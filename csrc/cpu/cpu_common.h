// sketchprune CPU backend: shared declarations (threads, dtype conversion, the
// per-ISA kernel table, the GEMM core used by cov/cross/outer_sketch).
#pragma once
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <type_traits>
#include <vector>

#if defined(SKETCHPRUNE_OPENMP)
#include <omp.h>
#endif

#include "common/dtype.h"
#include "common/sketch_hash.h"

namespace sketchprune {
namespace cpu {

// ------------------------------------------------------------------ threads
inline int max_threads() {
#if defined(SKETCHPRUNE_OPENMP)
  return omp_get_max_threads();
#else
  return 1;
#endif
}
inline int thread_num() {
#if defined(SKETCHPRUNE_OPENMP)
  return omp_get_thread_num();
#else
  return 0;
#endif
}
inline int num_threads_in_team() {
#if defined(SKETCHPRUNE_OPENMP)
  return omp_get_num_threads();
#else
  return 1;
#endif
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Uninitialised scratch memory (std::vector would zero-fill megabytes on every call), aligned
// to a cache line: the kernels' 64-byte vector loads and stores at multiples of 16 floats from
// the start would otherwise each straddle two lines (plain new[] only aligns to 16 bytes).
template <class T>
class Scratch {
  static_assert(std::is_trivially_destructible<T>::value, "Scratch holds plain data only");

 public:
  static constexpr std::size_t kAlign = 64;
  explicit Scratch(int64_t n)
      : p_(n > 0 ? static_cast<T*>(::operator new[](static_cast<std::size_t>(n) * sizeof(T),
                                                    std::align_val_t(kAlign)))
                 : nullptr) {}
  T* data() { return p_.get(); }
  const T* data() const { return p_.get(); }

 private:
  struct Free {
    void operator()(T* p) const { ::operator delete[](p, std::align_val_t(kAlign)); }
  };
  std::unique_ptr<T, Free> p_;
};

// ------------------------------------------------------------------ dtypes
inline float bits_to_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// IEEE binary16 -> binary32, exact for every input (normals, subnormals, +-0, inf, nan).
inline float half_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1Fu;
  const uint32_t mant = h & 0x3FFu;
  uint32_t bits;
  if (exp == 0x1Fu) {
    bits = sign | 0x7F800000u | (mant << 13);  // inf / nan (payload kept)
  } else if (exp != 0) {
    bits = sign | ((exp + 112u) << 23) | (mant << 13);  // normal: rebias 15 -> 127
  } else if (mant == 0) {
    bits = sign;  // +-0
  } else {
    // subnormal: mant * 2^-24, exact in binary32
    const float v = static_cast<float>(mant) * 5.9604644775390625e-8f;
    uint32_t vb;
    std::memcpy(&vb, &v, sizeof vb);
    bits = sign | vb;
  }
  return bits_to_float(bits);
}

// bfloat16 is the upper half of a binary32.
inline float bf16_to_float(uint16_t b) { return bits_to_float(static_cast<uint32_t>(b) << 16); }

inline int64_t dtype_size(int code) { return code == kFloat64 ? 8 : (code == kFloat32 ? 4 : 2); }

// dst[c] = (T) src[c], c < n; src holds elements of dtype `code` (fp32/fp16/bf16).
template <class T>
inline void convert_row(const void* src, int code, int64_t n, T* dst) {
  if (code == kFloat32) {
    const float* s = static_cast<const float*>(src);
    for (int64_t c = 0; c < n; ++c) dst[c] = static_cast<T>(s[c]);
  } else if (code == kFloat16) {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    for (int64_t c = 0; c < n; ++c) dst[c] = static_cast<T>(half_to_float(s[c]));
  } else {
    const uint16_t* s = static_cast<const uint16_t*>(src);
    for (int64_t c = 0; c < n; ++c) dst[c] = static_cast<T>(bf16_to_float(s[c]));
  }
}

// ------------------------------------------------------------------ kernel table
// One nonzero of a sketch row: its column as the offset of that column's row in a lane-minor
// m x 16 accumulator (off = 16 * column, so consumers need no shift), and its value
// (+-1/sqrt(k)).
struct SketchEntry {
  int32_t off;
  float val;
};
static_assert(sizeof(SketchEntry) == 8, "SketchEntry is read as one 64-bit word {off, val bits}");

// GEMM micro-kernel: acc[r][c] = sum_{p<kc} A[p*MR + r] * B[p*NR + c]  (packed slivers).
// If C != nullptr: C[r*ldc + c] += alpha * acc[r][c] for the full MR x NR tile;
// else buf[r*NR + c] = acc[r][c] (unscaled) and the caller applies edge/triangle masks.
using MicroF32 = void (*)(int64_t kc, const float* A, const float* B, float* C, int64_t ldc,
                          float alpha, float* buf);
using MicroF64 = void (*)(int64_t kc, const double* A, const double* B, double* C, int64_t ldc,
                          double alpha, double* buf);
// Sketch scatter over 16 lanes (samples): for i < len, lane s:
//   acc[tab[i*k+t].off + s] += tab[i*k+t].val * rows[s][i]   for t < k.
using Scatter16 = void (*)(const float* const* rows, int64_t len, const SketchEntry* tab,
                           int64_t k, float* acc);

// Per-sample outer products in the lanes: for o < no, q < nq (tab row i = o*ldo + q*ldq):
//   v[0:16] = sum_{t<T} D(t, o)[0:16] * A(t, q)[0:16];
//   acc[tab[i*k+t].off + :] += tab[i*k+t].val * v   for t < k,
// D packed in groups of out_r rows (group g at dp + g*T*out_r*16, width w = min(out_r, no -
// g*out_r), D(t, o) at + (t*w + o % out_r)*16), A likewise in groups of out_q columns.
using OuterScatter16 = void (*)(const float* dt, const float* at, int64_t T, int64_t no,
                                int64_t nq, int64_t ldo, int64_t ldq, const SketchEntry* tab, int64_t k,
                                float* acc);
// Lane-minor transpose: dst[i*16 + s] = rows[s][i] for i < len, s < 16.
using Transpose16 = void (*)(const float* const* rows, int64_t len, float* dst);

// The constants of one sparse-sign S (seed, m, k) for hashing rows in bulk (RowHasher in
// sketch.cpp): block t of the m columns starts at start[t] and is width[t] wide; magic[t] =
// 2^64 / width[t] rounded up (Lemire's exact 32-bit modulo); scale_bits: the bits of
// +1/sqrt(k).
struct HashConsts {
  uint64_t seed_mixed;
  int64_t k;
  const int32_t* start;
  const uint32_t* width;
  const uint64_t* magic;
  uint32_t scale_bits;
};
// out[i*k + t] = nonzero t of S row rows[i] (SketchEntry: off = 16 * column), for i < n.
using HashRows = void (*)(const HashConsts& h, const uint64_t* rows, int64_t n, SketchEntry* out);

struct KernelTable {
  const char* isa;
  int mr_f, nr_f, kc_f;
  MicroF32 micro_f;
  int mr_d, nr_d, kc_d;
  MicroF64 micro_d;
  Scatter16 scatter16;
  OuterScatter16 outer_scatter16;
  Transpose16 transpose16;
  int out_r, out_q;  // register tile of outer_scatter16 (its packing groups)
  HashRows hash_rows;  // vectorised row hashing, or nullptr (RowHasher's scalar path)
};

// Per-ISA tables (isa_*.cpp); the x86 ones return false when not compiled in.
void kernels_generic(KernelTable* t);
bool kernels_avx2(KernelTable* t);
bool kernels_avx512(KernelTable* t);
// Runtime-selected table (best ISA the CPU supports; env SKETCHPRUNE_CPU_ISA=generic|avx2|avx512
// caps it, for testing).
const KernelTable& kernels();

// ------------------------------------------------------------------ GEMM core (gemm.cpp)
// A column window of a row-major matrix: element (row, c) at base + (row*ld + col0 + c).
struct Src {
  const void* base;
  int dtype;
  int64_t ld;
  int64_t col0;
  int64_t ncols;
};

template <class T>
struct MicroOf;
template <>
struct MicroOf<float> {
  static MicroF32 fn(const KernelTable& K) { return K.micro_f; }
  static int mr(const KernelTable& K) { return K.mr_f; }
  static int nr(const KernelTable& K) { return K.nr_f; }
  static int kc(const KernelTable& K) { return K.kc_f; }
};
template <>
struct MicroOf<double> {
  static MicroF64 fn(const KernelTable& K) { return K.micro_d; }
  static int mr(const KernelTable& K) { return K.mr_d; }
  static int nr(const KernelTable& K) { return K.nr_d; }
  static int kc(const KernelTable& K) { return K.kc_d; }
};

// Single-threaded C (a.ncols x b.ncols, row stride ldc) += alpha * A^T B over source rows
// 0..nrows-1, with caller-provided pack buffers (see gemm_pack_sizes).
void gemm_pack_sizes(const KernelTable& K, int64_t na, int64_t nb, int64_t* pa_elems,
                     int64_t* pb_elems);
void gemm_serial_f32(const KernelTable& K, const Src& a, const Src& b, int64_t nrows, float* C,
                     int64_t ldc, float alpha, float* pa, float* pb);

}  // namespace cpu
}  // namespace sketchprune
