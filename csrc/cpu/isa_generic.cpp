// sketchprune CPU: the portable kernels (any architecture, baseline compiler flags) and the
// runtime ISA dispatch.  See isa_kernels.inc for the kernels themselves.
#include <cstdlib>
#include <cstring>

#include "cpu/cpu_common.h"

namespace sketchprune {
namespace cpu {
namespace generic {

#if defined(__GNUC__)
// GCC/Clang vector extensions: SSE2 on x86-64, NEON on aarch64, scalarised elsewhere.
struct VF {
  using T = float;
  typedef float V __attribute__((vector_size(16)));
  static constexpr int W = 4;
  static V zero() { return V{0.f, 0.f, 0.f, 0.f}; }
  static V load(const float* p) { V v; std::memcpy(&v, p, sizeof v); return v; }
  static void store(float* p, V v) { std::memcpy(p, &v, sizeof v); }
  static V set1(float x) { return V{x, x, x, x}; }
  static V fma(V a, V b, V c) { return a * b + c; }
};
struct VD {
  using T = double;
  typedef double V __attribute__((vector_size(16)));
  static constexpr int W = 2;
  static V zero() { return V{0.0, 0.0}; }
  static V load(const double* p) { V v; std::memcpy(&v, p, sizeof v); return v; }
  static void store(double* p, V v) { std::memcpy(p, &v, sizeof v); }
  static V set1(double x) { return V{x, x}; }
  static V fma(V a, V b, V c) { return a * b + c; }
};
#else
template <class S>
struct VScalar {
  using T = S;
  using V = S;
  static constexpr int W = 1;
  static V zero() { return S(0); }
  static V load(const S* p) { return *p; }
  static void store(S* p, V v) { *p = v; }
  static V set1(S x) { return x; }
  static V fma(V a, V b, V c) { return a * b + c; }
};
using VF = VScalar<float>;
using VD = VScalar<double>;
#endif

inline void transpose16_block(const float* const* rows, int64_t i, float* blk) {
  for (int s = 0; s < 16; ++s) {
    const float* src = rows[s] + i;
    for (int ii = 0; ii < 16; ++ii) blk[ii * 16 + s] = src[ii];
  }
}

// G tile of outer_scatter16: 1 x 2 rows x columns = 8 accumulators of 4 lanes (SSE2/NEON).
constexpr int kOutR = 1, kOutQ = 2;
#include "isa_kernels.inc"

}  // namespace generic

void kernels_generic(KernelTable* t) {
  constexpr int NVF = 8 / generic::VF::W, NVD = 4 / generic::VD::W;
  t->isa = "generic";
  t->mr_f = 4; t->nr_f = NVF * generic::VF::W; t->kc_f = 256;
  t->micro_f = &generic::micro_kernel<generic::VF, 4, NVF>;
  t->mr_d = 4; t->nr_d = NVD * generic::VD::W; t->kc_d = 256;
  t->micro_d = &generic::micro_kernel<generic::VD, 4, NVD>;
  t->scatter16 = &generic::scatter16;
  t->outer_scatter16 = &generic::outer_scatter16;
  t->transpose16 = &generic::transpose16;
  t->out_r = generic::kOutR; t->out_q = generic::kOutQ;
  t->hash_rows = nullptr;
}

#if !defined(__x86_64__) || !defined(__GNUC__)
bool kernels_avx2(KernelTable*) { return false; }
bool kernels_avx512(KernelTable*) { return false; }
#endif

namespace {
KernelTable select_kernels() {
  // SKETCHPRUNE_CPU_ISA caps the choice (generic | avx2 | avx512), e.g. to test the fallbacks.
  const char* cap = std::getenv("SKETCHPRUNE_CPU_ISA");
  const int level = (cap == nullptr) ? 2
                    : std::strcmp(cap, "generic") == 0 ? 0
                    : std::strcmp(cap, "avx2") == 0    ? 1
                                                       : 2;
  KernelTable t;
  if (level >= 2 && kernels_avx512(&t)) return t;
  if (level >= 1 && kernels_avx2(&t)) return t;
  kernels_generic(&t);
  return t;
}
}  // namespace

const KernelTable& kernels() {
  static const KernelTable table = select_kernels();
  return table;
}

}  // namespace cpu
}  // namespace sketchprune
