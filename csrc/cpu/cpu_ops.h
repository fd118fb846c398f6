// sketchprune CPU: the operations behind the _C_cpu bindings (arguments already validated;
// see docs/native_abi.md for the contracts).
#pragma once
#include <cstdint>
#include <vector>

namespace sketchprune {
namespace cpu {

void cov_accumulate(void* sigma, int sigma_dtype, int64_t d, int64_t ld_sigma, const void* x,
                    int x_dtype, int64_t T, int64_t ldx, double alpha, const uint8_t* mask);

void cross_accumulate(void* c, int c_dtype, int64_t d_in, int64_t d_out, int64_t ldc,
                      const void* x, const void* y, int xy_dtype, int64_t T, int64_t ldx,
                      int64_t ldy, double alpha, const uint8_t* mask);

void sparse_sign_sketch(float* out, const void* g, int g_dtype, int64_t N, int64_t r, int64_t ldg,
                        int64_t m, int64_t k, int64_t seed, int64_t offset, bool accumulate);

// The largest m the sketch kernels take (INT32_MAX / 16: their tables hold 16 * column as
// int32), and the check for it: std::invalid_argument (Python ValueError) naming the backends
// that take a larger m.
int64_t max_sketch_m();
void check_sketch_m(const char* op, int64_t m);

// Heap bytes sparse_sign_sketch / outer_sketch allocate besides out for these sizes when run
// with a team of `threads` OpenMP threads (they run with max_threads()): computed from the
// plan the kernels allocate by (sketch.cpp), so the two always agree.  Arguments as validated
// for the kernels (sizes >= 0, m >= k >= 1, m <= max_sketch_m(), threads >= 1).
int64_t sparse_sign_sketch_workspace_bytes(int64_t N, int64_t r, int64_t m, int64_t k,
                                           int g_dtype, int64_t threads);
int64_t outer_sketch_workspace_bytes(int64_t N, int64_t T, int64_t d_in, int64_t d_out, int64_t m,
                                     int64_t k, int dtype, int64_t threads);

// Which path hashes the rows of S for (seed, m, k): "vector" (the kernel table's hash_rows,
// verified against sketch_entry() at construction), "fast" (scalar, Lemire modulo) or "exact".
const char* row_hash_path(int64_t seed, int64_t m, int64_t k);

void outer_sketch(float* out, const void* a, const void* d, int dtype, int64_t N, int64_t T,
                  int64_t d_in, int64_t d_out, int64_t lda_n, int64_t lda_t, int64_t ldd_n,
                  int64_t ldd_t, int64_t m, int64_t k, int64_t seed, int64_t offset,
                  bool accumulate);

struct GatherDesc {
  const char* src;
  char* dst;
  int64_t elem_bytes, outer, L, inner;
  const int64_t* idx;
  int64_t n_keep, block;
};
void gather_slices(const std::vector<GatherDesc>& descs);

}  // namespace cpu
}  // namespace sketchprune
