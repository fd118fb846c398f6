// sketchprune CUDA module: parameter structs and host launch functions.
//
// Plain C++ (included by bindings_cuda.cpp, compiled by the host compiler). All sizes and
// strides are in ELEMENTS. Pointers are raw device pointers; the launch functions validate
// nothing beyond what they need to choose a code path (bindings_cuda.cpp validates the
// arguments), allocate nothing, never synchronise, and throw std::runtime_error
// ("sketchprune::<op>: ...") on a launch error.
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

namespace sketchprune {
namespace cuda {

// sigma (d x d, row stride ld_sigma) += alpha * x^T x over unmasked rows, upper triangle
// computed, mirrored so sigma ends exactly symmetric. x is T x d, row stride ldx.
struct CovParams {
  void* sigma;
  int sigma_dtype;  // kFloat32 or kFloat64
  int64_t d;
  int64_t ld_sigma;
  const void* x;
  int x_dtype;  // kFloat32, kFloat16, kBFloat16
  int64_t T;
  int64_t ldx;
  double alpha;
  const uint8_t* mask;  // T bytes or nullptr
  int device;
};

// c (d_in x d_out, row stride ldc) += alpha * x^T y over unmasked rows.
struct CrossParams {
  void* c;
  int c_dtype;  // kFloat32 or kFloat64
  int64_t d_in;
  int64_t d_out;
  int64_t ldc;
  const void* x;  // T x d_in, row stride ldx
  const void* y;  // T x d_out, row stride ldy
  int xy_dtype;
  int64_t T;
  int64_t ldx;
  int64_t ldy;
  double alpha;
  const uint8_t* mask;
  int device;
};

// out (N x m fp32, contiguous) (+)= g @ S, g N x r with row stride ldg, S rows offset + i.
struct SketchParams {
  float* out;
  const void* g;
  int g_dtype;
  int64_t N;
  int64_t r;
  int64_t ldg;
  int64_t m;
  int64_t k;
  int64_t seed;
  int64_t offset;
  bool accumulate;
  int device;
};

// out[n] (+)= sketch(G_n), G_n[o, q] = sum_t d[n,t,o] a[n,t,q], S row offset + o*d_in + q.
struct OuterParams {
  float* out;
  const void* a;  // (N, T, d_in), strides (lda_n, lda_t, 1)
  const void* d;  // (N, T, d_out), strides (ldd_n, ldd_t, 1)
  int dtype;
  int64_t N;
  int64_t T;
  int64_t d_in;
  int64_t d_out;
  int64_t lda_n;
  int64_t lda_t;
  int64_t ldd_n;
  int64_t ldd_t;
  int64_t m;
  int64_t k;
  int64_t seed;
  int64_t offset;
  bool accumulate;
  int device;
};

constexpr int MAX_GATHER_DESCS = 16;

// One slicing job: dst[o, b*block + e, q] = src[o, idx[b]*block + e, q] (elem_bytes-byte
// elements; src viewed as (outer, L*block, inner), dst as (outer, n_keep*block, inner)).
struct GatherDesc {
  const void* src;
  void* dst;
  int64_t elem_bytes;
  int64_t outer;
  int64_t L;
  int64_t inner;
  const int64_t* idx;
  int64_t n_keep;
  int64_t block;
};

struct GatherParams {
  GatherDesc descs[MAX_GATHER_DESCS];
  int num_descs;
  int device;
};

void cov_accumulate_launch(const CovParams& p, cudaStream_t stream);
void cross_accumulate_launch(const CrossParams& p, cudaStream_t stream);
void sparse_sign_sketch_launch(const SketchParams& p, cudaStream_t stream);
void outer_sketch_launch(const OuterParams& p, cudaStream_t stream);
void gather_slices_launch(const GatherParams& p, cudaStream_t stream);

}  // namespace cuda
}  // namespace sketchprune
