// sketchprune CPU: blocked GEMM driver (Goto/BLIS-style) for
//   cov_accumulate   sigma += alpha * x^T x   (upper-triangle tiles only, then mirrored)
//   cross_accumulate c     += alpha * x^T y
// and the single-threaded variant outer_sketch uses for per-sample gradient tiles.
//
// Loops: rows of x (the reduction dim) in blocks of KC -> pack every column of the block
// into MR-wide (A side, broadcast) and NR-wide (B side, vector) slivers, converting
// fp16/bf16/fp32 to the accumulator type and dropping masked rows -> OpenMP (dynamic) over
// BS x BS output tiles (only tiles touching i <= j for cov) -> per tile: MR-sliver of A (in
// L1) against every NR-sliver of B (in L2) with the register-blocked micro-kernel.
#include "cpu/cpu_common.h"

#include "cpu/cpu_ops.h"

namespace sketchprune {
namespace cpu {
namespace {

// Pack rows rows[0..kc) of column window [c0, c0+W) of `s` into dst (kc x W), zero-padding
// columns at or past s.ncols.
template <class T>
void pack_sliver(const Src& s, const int64_t* rows, int64_t kc, int64_t c0, int W, T* dst) {
  const int64_t nvalid = std::min<int64_t>(W, s.ncols - c0);
  const int64_t es = dtype_size(s.dtype);
  const char* base = static_cast<const char*>(s.base);
  for (int64_t p = 0; p < kc; ++p) {
    const int64_t row = rows ? rows[p] : p;
    const void* src = base + (row * s.ld + s.col0 + c0) * es;
    T* d = dst + p * W;
    if (std::is_same<T, float>::value && s.dtype == kFloat32 && nvalid == W) {
      std::memcpy(d, src, sizeof(float) * static_cast<size_t>(W));
    } else {
      convert_row<T>(src, s.dtype, nvalid, d);
      for (int64_t c = nvalid; c < W; ++c) d[c] = T(0);
    }
  }
}

// Multiply packed A slivers [ia, ib) x packed B slivers [ja, jb) (element offsets, multiples of
// MR / NR) into C, for the current kc block.  `tri`: only i <= j is written.
template <class T>
void compute_tile(const KernelTable& K, int64_t kc, const T* PA, const T* PB, int64_t na,
                  int64_t nb, int64_t ia, int64_t ib, int64_t ja, int64_t jb, bool tri, T* C,
                  int64_t ldc, T alpha) {
  const int MR = MicroOf<T>::mr(K), NR = MicroOf<T>::nr(K);
  const auto micro = MicroOf<T>::fn(K);
  alignas(64) T buf[16 * 64];
  for (int64_t i = ia; i < ib; i += MR) {
    const T* a = PA + (i / MR) * MR * kc;
    int64_t j = ja;
    if (tri && j + NR - 1 < i) j += ((i - (j + NR - 1)) + NR - 1) / NR * NR;  // skip below-diag
    for (; j < jb; j += NR) {
      const T* b = PB + (j / NR) * NR * kc;
      const bool full = i + MR <= na && j + NR <= nb && (!tri || i + MR - 1 <= j);
      if (full) {
        micro(kc, a, b, C + i * ldc + j, ldc, alpha, nullptr);
        continue;
      }
      micro(kc, a, b, nullptr, 0, alpha, buf);
      const int64_t rmax = std::min<int64_t>(MR, na - i), cmax = std::min<int64_t>(NR, nb - j);
      for (int64_t r = 0; r < rmax; ++r) {
        const int64_t c_lo = tri ? std::max<int64_t>(0, i + r - j) : 0;
        T* crow = C + (i + r) * ldc + j;
        for (int64_t c = c_lo; c < cmax; ++c) crow[c] += alpha * buf[r * NR + c];
      }
    }
  }
}

template <class T>
void gemm_parallel(const Src& a, const Src& b, const std::vector<int64_t>& rows, bool tri, T* C,
                   int64_t ldc, T alpha) {
  const KernelTable& K = kernels();
  const int MR = MicroOf<T>::mr(K), NR = MicroOf<T>::nr(K), KC = MicroOf<T>::kc(K);
  const int64_t na = a.ncols, nb = b.ncols, nrows = static_cast<int64_t>(rows.size());
  const int64_t npa = ceil_div(na, MR), npb = ceil_div(nb, NR);
  // Output tile edge: a multiple of lcm(MR, NR), as large as 256 allows while leaving
  // >= 6 tiles per thread for the dynamic schedule.
  int64_t unit = MR;
  while (unit % NR != 0) unit += MR;
  const int64_t nt = max_threads();
  auto count = [&](int64_t e) {
    const int64_t bi = ceil_div(na, e), bj = ceil_div(nb, e);
    return tri ? bi * (bi + 1) / 2 : bi * bj;
  };
  int64_t bs = unit * std::max<int64_t>(1, 256 / unit);
  while (bs > unit && count(bs) < 6 * nt) bs -= unit;
  const int64_t nbi = ceil_div(na, bs), nbj = ceil_div(nb, bs);
  std::vector<int64_t> tiles;  // (bi, bj) packed as bi * nbj + bj
  for (int64_t bi = 0; bi < nbi; ++bi)
    for (int64_t bj = 0; bj < nbj; ++bj)
      if (!tri || bi * bs <= bj * bs + bs - 1) tiles.push_back(bi * nbj + bj);
  const int64_t ntiles = static_cast<int64_t>(tiles.size());
  const int64_t kcmax = std::min<int64_t>(KC, nrows);
  Scratch<T> PA(npa * MR * kcmax), PB(npb * NR * kcmax);
  T* pa = PA.data();
  T* pb = PB.data();

#pragma omp parallel
  for (int64_t k0 = 0; k0 < nrows; k0 += KC) {
    const int64_t kc = std::min<int64_t>(KC, nrows - k0);
    const int64_t* rp = rows.data() + k0;
#pragma omp for schedule(static)
    for (int64_t p = 0; p < npa + npb; ++p) {
      if (p < npa)
        pack_sliver<T>(a, rp, kc, p * MR, MR, pa + p * MR * kc);
      else
        pack_sliver<T>(b, rp, kc, (p - npa) * NR, NR, pb + (p - npa) * NR * kc);
    }
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < ntiles; ++t) {
      const int64_t bi = tiles[t] / nbj, bj = tiles[t] % nbj;
      compute_tile<T>(K, kc, pa, pb, na, nb, bi * bs, std::min(na, bi * bs + bs), bj * bs,
                      std::min(nb, bj * bs + bs), tri, C, ldc, alpha);
    }
  }
}

// sigma[j][i] = sigma[i][j] for i < j, in 64 x 64 blocks.
template <class T>
void mirror_upper(T* S, int64_t d, int64_t ld) {
  constexpr int64_t B = 64;
  const int64_t nb = ceil_div(d, B);
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t bj = 0; bj < nb; ++bj)  // lower block row bj  <-  upper block column bj
    for (int64_t bi = 0; bi <= bj; ++bi)
      for (int64_t j = bj * B; j < std::min(d, bj * B + B); ++j)
        for (int64_t i = bi * B; i < std::min(j, bi * B + B); ++i) S[j * ld + i] = S[i * ld + j];
}

std::vector<int64_t> kept_rows(int64_t T, const uint8_t* mask) {
  std::vector<int64_t> rows;
  rows.reserve(static_cast<size_t>(T));
  for (int64_t t = 0; t < T; ++t)
    if (mask == nullptr || mask[t] != 0) rows.push_back(t);
  return rows;
}

}  // namespace

void gemm_pack_sizes(const KernelTable& K, int64_t na, int64_t nb, int64_t* pa_elems,
                     int64_t* pb_elems) {
  *pa_elems = ceil_div(na, K.mr_f) * K.mr_f * K.kc_f;
  *pb_elems = ceil_div(nb, K.nr_f) * K.nr_f * K.kc_f;
}

void gemm_serial_f32(const KernelTable& K, const Src& a, const Src& b, int64_t nrows, float* C,
                     int64_t ldc, float alpha, float* pa, float* pb) {
  const int MR = K.mr_f, NR = K.nr_f, KC = K.kc_f;
  const int64_t npa = ceil_div(a.ncols, MR), npb = ceil_div(b.ncols, NR);
  for (int64_t k0 = 0; k0 < nrows; k0 += KC) {
    const int64_t kc = std::min<int64_t>(KC, nrows - k0);
    Src a0 = a, b0 = b;  // shift the bases to row k0 (identity row list)
    a0.base = static_cast<const char*>(a.base) + k0 * a.ld * dtype_size(a.dtype);
    b0.base = static_cast<const char*>(b.base) + k0 * b.ld * dtype_size(b.dtype);
    for (int64_t p = 0; p < npa; ++p)
      pack_sliver<float>(a0, nullptr, kc, p * MR, MR, pa + p * MR * kc);
    for (int64_t p = 0; p < npb; ++p)
      pack_sliver<float>(b0, nullptr, kc, p * NR, NR, pb + p * NR * kc);
    compute_tile<float>(K, kc, pa, pb, a.ncols, b.ncols, 0, a.ncols, 0, b.ncols, false, C, ldc,
                        alpha);
  }
}

// ---------------------------------------------------------------------------------------
// cov_accumulate: sigma (d x d, fp32|fp64, row stride ld_sigma) += alpha * x^T x over rows
// with mask != 0; x is T x d (fp32|fp16|bf16, row stride ldx).  Upper triangle computed
// (d(d+1)/2 * T FMAs: d=4096, T=8192 -> 137 GFLOP), mirrored after (sigma exactly symmetric).
void cov_accumulate(void* sigma, int sigma_dtype, int64_t d, int64_t ld_sigma, const void* x,
                    int x_dtype, int64_t T, int64_t ldx, double alpha, const uint8_t* mask) {
  if (d == 0 || T == 0) return;
  const std::vector<int64_t> rows = kept_rows(T, mask);
  const Src s{x, x_dtype, ldx, 0, d};
  if (!rows.empty()) {
    if (sigma_dtype == kFloat32)
      gemm_parallel<float>(s, s, rows, true, static_cast<float*>(sigma), ld_sigma,
                           static_cast<float>(alpha));
    else
      gemm_parallel<double>(s, s, rows, true, static_cast<double*>(sigma), ld_sigma, alpha);
  }
  // Mirror even when every row is masked: the contract is "sigma exactly symmetric after".
  if (sigma_dtype == kFloat32)
    mirror_upper(static_cast<float*>(sigma), d, ld_sigma);
  else
    mirror_upper(static_cast<double*>(sigma), d, ld_sigma);
}

// cross_accumulate: c (d_in x d_out, fp32|fp64, row stride ldc) += alpha * x^T y over rows
// with mask != 0; x T x d_in, y T x d_out (same dtype).  d_in*d_out*T FMAs.
void cross_accumulate(void* c, int c_dtype, int64_t d_in, int64_t d_out, int64_t ldc,
                      const void* x, const void* y, int xy_dtype, int64_t T, int64_t ldx,
                      int64_t ldy, double alpha, const uint8_t* mask) {
  if (d_in == 0 || d_out == 0 || T == 0) return;
  const std::vector<int64_t> rows = kept_rows(T, mask);
  if (rows.empty()) return;
  const Src sa{x, xy_dtype, ldx, 0, d_in}, sb{y, xy_dtype, ldy, 0, d_out};
  if (c_dtype == kFloat32)
    gemm_parallel<float>(sa, sb, rows, false, static_cast<float*>(c), ldc,
                         static_cast<float>(alpha));
  else
    gemm_parallel<double>(sa, sb, rows, false, static_cast<double*>(c), ldc, alpha);
}

}  // namespace cpu
}  // namespace sketchprune
