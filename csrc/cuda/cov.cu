// sketchprune CUDA module: cov_accumulate and cross_accumulate.
//
// cov_accumulate   sigma (d x d) += alpha * x^T x   (x: T x d, masked rows skipped)
// cross_accumulate c (d_in x d_out) += alpha * x^T y
//
// Both are the "A^T B" GEMM of gemm_tiles.cuh with a reduction over the T rows.
//
// Layout contract: x / y row-major with row strides ldx / ldy (elements), column stride 1;
// sigma / c row-major with row stride ld_sigma / ldc; mask = T bytes or null.
//
// Code paths (chosen on the host in the launch functions below):
//   fp16 / bf16 inputs, fp32 output  -> MmaTile 128 x 128 x 32, 8 warps (64 x 32 each),
//                                       4-stage cp.async pipeline (VEC when 16-byte aligned)
//   fp32 inputs, fp32 output         -> SimtTile<float, float> (exact fp32 FMAs, no TF32)
//   any input, fp64 output           -> SimtTile<T, double> (fp64 products and sums)
//   SKETCHPRUNE_CUDA_SAFE=1          -> one thread per output element (cov_simple_kernel)
// cov launches a 1-D grid over the upper-triangle tile pairs (bi <= bj) only.
//
// Roofline, d = 4096, T = 8192, bf16 x, fp32 sigma, H100 SXM: counted flops
// T*d*(d+1) = 1.37e11 (the triangle); with 128-tiles the kernel executes 528 of 1024 tiles =
// 1.42e11 flops -> 0.18 ms at the ~790 TFLOP/s dense bf16 peak (mma.sync realistically
// reaches 60-70% of it); bytes: x read 64 MiB from HBM (tiles re-read it from L2) + sigma
// read + written 2 x 64 MiB -> ~0.06 ms at ~3 TB/s. Compute-bound. Measured (H100):
// 0.53 ms = 260 TFLOP/s counted; the 474 TFLOP/s target needs a wgmma engine (sm_90a).
//
// Split-T: when there are fewer tiles than SMs and T is long, grid.y splits the rows;
// blocks then atomicAdd into the upper triangle and mirror_lower_kernel writes the lower
// triangle afterwards on the same stream (result still exactly symmetric; the summation
// order, hence the last bits, then depends on scheduling).
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <type_traits>

#include "gemm_tiles.cuh"
#include "launch.h"

namespace sketchprune {
namespace cuda {
namespace {

// Upper-triangle tile pair p -> (bi, bj), bi <= bj, enumerated column by column:
// p = bj*(bj+1)/2 + bi.
__device__ __forceinline__ void upper_pair(int64_t p, int64_t* bi, int64_t* bj) {
  int64_t j = static_cast<int64_t>((sqrt(8.0 * static_cast<double>(p) + 1.0) - 1.0) * 0.5);
  while ((j + 1) * (j + 2) / 2 <= p) ++j;
  while (j * (j + 1) / 2 > p) --j;
  *bj = j;
  *bi = p - j * (j + 1) / 2;
}

template <typename T>
struct GemmArgs {
  void* out;  // float* or double*
  int64_t ldo;
  const T* a;
  const T* b;
  int64_t lda, ldb;
  int64_t M, N;  // output rows (a columns) and output columns (b columns)
  const uint8_t* mask;
  int64_t T_;  // rows reduced over
  int64_t rows_per_split;  // multiple of the tile's BK
  double alpha;
  int64_t tiles_n;  // rect grid only
};

// cov: one block per upper tile pair (blockIdx.x) and T-split (blockIdx.y).
template <class Tile, typename T>
__global__ void __launch_bounds__(Tile::THREADS, Tile::MIN_BLOCKS) cov_tile_kernel(GemmArgs<T> p) {
  using Acc = typename Tile::Acc;
  extern __shared__ __align__(16) unsigned char smem[];
  int64_t bi, bj;
  upper_pair(static_cast<int64_t>(blockIdx.x), &bi, &bj);
  const int64_t t0 = static_cast<int64_t>(blockIdx.y) * p.rows_per_split;
  const int64_t t1 = min(p.T_, t0 + p.rows_per_split);
  const int64_t i0 = bi * Tile::BM, j0 = bj * Tile::BN;
  Tile tile;
  tile.run(p.a, p.lda, p.M, p.a, p.lda, p.M, p.mask, t0, t1, i0, j0, smem);
  Acc* Cs = reinterpret_cast<Acc*>(smem);
  tile.stage(Cs);
  __syncthreads();
  Acc* S = static_cast<Acc*>(p.out);
  if (gridDim.y == 1)
    epilogue_sym<Tile::BM, Tile::BN, Tile::LDC, Tile::THREADS>(S, p.ldo, p.M, i0, j0, Cs, Acc(p.alpha));
  else
    epilogue_sym_atomic<Tile::BM, Tile::BN, Tile::LDC, Tile::THREADS>(S, p.ldo, p.M, i0, j0, Cs, Acc(p.alpha));
}

// cross: one block per output tile (blockIdx.x = bi * tiles_n + bj) and T-split.
template <class Tile, typename T>
__global__ void __launch_bounds__(Tile::THREADS, Tile::MIN_BLOCKS) cross_tile_kernel(GemmArgs<T> p) {
  using Acc = typename Tile::Acc;
  extern __shared__ __align__(16) unsigned char smem[];
  const int64_t bi = static_cast<int64_t>(blockIdx.x) / p.tiles_n;
  const int64_t bj = static_cast<int64_t>(blockIdx.x) % p.tiles_n;
  const int64_t t0 = static_cast<int64_t>(blockIdx.y) * p.rows_per_split;
  const int64_t t1 = min(p.T_, t0 + p.rows_per_split);
  const int64_t i0 = bi * Tile::BM, j0 = bj * Tile::BN;
  Tile tile;
  tile.run(p.a, p.lda, p.M, p.b, p.ldb, p.N, p.mask, t0, t1, i0, j0, smem);
  Acc* Cs = reinterpret_cast<Acc*>(smem);
  tile.stage(Cs);
  __syncthreads();
  epilogue_rect<Tile::BM, Tile::BN, Tile::LDC, Tile::THREADS>(static_cast<Acc*>(p.out), p.ldo, p.M, p.N, i0, j0,
                                                               Cs, Acc(p.alpha), gridDim.y > 1);
}

// After a split-T cov: S[i][j] = S[j][i] for i > j, through a 32 x 32 shared transpose
// (reads coalesced along the upper row, writes coalesced along the lower row).
// Grid (ceil(d/32), ceil(d/32)), block (32, 8); tiles above the diagonal exit at once.
template <typename Acc>
__global__ void mirror_lower_kernel(Acc* S, int64_t lds, int64_t d) {
  __shared__ Acc tile[32][33];
  const int64_t ti = blockIdx.y, tj = blockIdx.x;  // destination tile: rows ti, cols tj
  if (tj > ti) return;
  // Source: rows tj*32 + y (= destination columns j), columns ti*32 + x (= destination rows i).
  for (int y = threadIdx.y; y < 32; y += blockDim.y) {
    const int64_t j = tj * 32 + y, i = ti * 32 + threadIdx.x;
    if (i < d && j < d && i > j) tile[y][threadIdx.x] = S[j * lds + i];
  }
  __syncthreads();
  for (int y = threadIdx.y; y < 32; y += blockDim.y) {
    const int64_t i = ti * 32 + y, j = tj * 32 + threadIdx.x;
    if (i < d && j < d && i > j) S[i * lds + j] = tile[threadIdx.x][y];
  }
}

// SAFE path: one thread per (i, j), i <= j: v = S[i][j] + alpha * sum_t x[t,i] x[t,j];
// S[i][j] = S[j][i] = v. Grid-stride over a 2-D grid.
template <typename T, typename Acc>
__global__ void cov_simple_kernel(Acc* S, int64_t lds, const T* x, int64_t ldx, int64_t d, int64_t T_,
                                  const uint8_t* mask, Acc alpha) {
  for (int64_t i = blockIdx.y * int64_t(blockDim.y) + threadIdx.y; i < d; i += int64_t(gridDim.y) * blockDim.y)
    for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < d; j += int64_t(gridDim.x) * blockDim.x) {
      if (j < i) continue;
      Acc s = 0;
      for (int64_t t = 0; t < T_; ++t) {
        if (mask != nullptr && mask[t] == 0) continue;
        s += to_acc<Acc>(ldg(x + t * ldx + i)) * to_acc<Acc>(ldg(x + t * ldx + j));
      }
      const Acc v = S[i * lds + j] + alpha * s;
      S[i * lds + j] = v;
      S[j * lds + i] = v;
    }
}

template <typename T, typename Acc>
__global__ void cross_simple_kernel(Acc* C, int64_t ldc, const T* x, int64_t ldx, const T* y, int64_t ldy,
                                    int64_t d_in, int64_t d_out, int64_t T_, const uint8_t* mask, Acc alpha) {
  for (int64_t i = blockIdx.y * int64_t(blockDim.y) + threadIdx.y; i < d_in; i += int64_t(gridDim.y) * blockDim.y)
    for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < d_out;
         j += int64_t(gridDim.x) * blockDim.x) {
      Acc s = 0;
      for (int64_t t = 0; t < T_; ++t) {
        if (mask != nullptr && mask[t] == 0) continue;
        s += to_acc<Acc>(ldg(x + t * ldx + i)) * to_acc<Acc>(ldg(y + t * ldy + j));
      }
      C[i * ldc + j] += alpha * s;
    }
}

dim3 simple_grid(int64_t rows, int64_t cols) {
  const int64_t gx = std::min<int64_t>(ceil_div(cols, 32), 65535);
  const int64_t gy = std::min<int64_t>(ceil_div(rows, 8), 65535);
  return dim3(static_cast<unsigned>(gx), static_cast<unsigned>(gy), 1);
}

// Rows per T-split: split only when the tiles cannot fill the GPU, keeping >= 16 k-steps
// of work per split. Returns a multiple of bk (or T itself when not splitting).
int64_t rows_per_split(int64_t tiles, int64_t T, int bk, int sm_count, int64_t* splits) {
  int64_t s = 1;
  if (tiles < sm_count) {
    const int64_t want = ceil_div(2 * int64_t(sm_count), tiles);
    const int64_t by_t = T / (int64_t(bk) * 16);
    s = std::max<int64_t>(1, std::min<int64_t>({want, by_t, 65535}));
  }
  if (s == 1) {
    *splits = 1;
    return std::max<int64_t>(T, 1);
  }
  const int64_t rows = ceil_div(ceil_div(T, s), bk) * bk;
  *splits = ceil_div(T, rows);
  return rows;
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

template <class Tile, bool SYM, typename T>
void launch_tiles(GemmArgs<T> a, int device, cudaStream_t stream, const char* op) {
  const DeviceAttrs attrs = device_attrs(device, op);
  const int64_t tm = ceil_div(a.M, Tile::BM), tn = ceil_div(a.N, Tile::BN);
  const int64_t tiles = SYM ? tm * (tm + 1) / 2 : tm * tn;
  check(tiles <= 0x7fffffff, op, "matrix too large for the tile grid");
  int64_t splits = 1;
  a.rows_per_split = rows_per_split(tiles, a.T_, Tile::BK, attrs.sm_count, &splits);
  a.tiles_n = tn;
  const size_t smem = Tile::SMEM_BYTES;
  check(smem <= size_t(attrs.smem_optin), op, "tile needs more shared memory than the device has");
  void (*kernel)(GemmArgs<T>) = nullptr;
  if constexpr (SYM)
    kernel = cov_tile_kernel<Tile, T>;
  else
    kernel = cross_tile_kernel<Tile, T>;
  if (smem > 48 * 1024) allow_max_smem(kernel, device, op);
  kernel<<<dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(splits), 1), Tile::THREADS, smem, stream>>>(a);
  check_launch(op);
  if (SYM && splits > 1) {
    using Acc = typename Tile::Acc;
    const int64_t nt = ceil_div(a.M, 32);
    check(nt <= 65535, op, "matrix too large for the mirror grid");
    mirror_lower_kernel<Acc><<<dim3(static_cast<unsigned>(nt), static_cast<unsigned>(nt), 1), dim3(32, 8, 1), 0,
                               stream>>>(static_cast<Acc*>(a.out), a.ldo, a.M);
    check_launch(op);
  }
}

// Tensor-core configurations (BM, BN, BK, warps M x N, stages, min blocks per SM).
// Cfg0: 128 x 128 x 32, 2 x 4 warps (64 x 32 warp tiles), 4 stages, 69.6 KB, 2 blocks/SM.
using MmaCfg0 = MmaCfg<128, 128, 32, 2, 4, 4, 2>;
// Cfg2: 128 x 128 x 64, 2 x 4 warps, 3 stages (104 KB, 2 blocks/SM). Measured on H100
// (d=4096, T=8192): within 5% of Cfg0 (slightly faster masked / for cross, slower plain).
// 64 x 64 warp tiles (2 x 2 warps) were 10-20% slower and were dropped.
using MmaCfg2 = MmaCfg<128, 128, 64, 2, 4, 3, 2>;

// SKETCHPRUNE_CUDA_MMA_CFG=2 picks Cfg2 (benchmarking knob; default Cfg0).
int mma_cfg() {
  static const int cfg = [] {
    const char* s = std::getenv("SKETCHPRUNE_CUDA_MMA_CFG");
    return (s != nullptr && std::atoi(s) == 2) ? 2 : 0;
  }();
  return cfg;
}

template <bool SYM, typename T>
void launch_gemm(GemmArgs<T> a, bool out_fp64, bool vec_ok, int device, cudaStream_t stream, const char* op) {
  if (out_fp64) {
    launch_tiles<SimtTile<T, double>, SYM>(a, device, stream, op);
  } else if constexpr (std::is_same<T, float>::value) {
    launch_tiles<SimtTile<float, float>, SYM>(a, device, stream, op);
  } else {
    if (!vec_ok) {
      launch_tiles<MmaTile<MmaCfg0, T, false>, SYM>(a, device, stream, op);
      return;
    }
    if (mma_cfg() == 2)
      launch_tiles<MmaTile<MmaCfg2, T, true>, SYM>(a, device, stream, op);
    else
      launch_tiles<MmaTile<MmaCfg0, T, true>, SYM>(a, device, stream, op);
  }
}

}  // namespace

void cov_accumulate_launch(const CovParams& p, cudaStream_t stream) {
  const char* op = "cov_accumulate";
  if (p.T == 0 || p.d == 0) return;
  const bool fp64 = p.sigma_dtype == kFloat64;
  dispatch_input(p.x_dtype, op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* x = static_cast<const T*>(p.x);
    if (safe_mode()) {
      const dim3 grid = simple_grid(p.d, p.d), block(32, 8, 1);
      if (fp64)
        cov_simple_kernel<T, double><<<grid, block, 0, stream>>>(static_cast<double*>(p.sigma), p.ld_sigma, x, p.ldx,
                                                                 p.d, p.T, p.mask, p.alpha);
      else
        cov_simple_kernel<T, float><<<grid, block, 0, stream>>>(static_cast<float*>(p.sigma), p.ld_sigma, x, p.ldx,
                                                                p.d, p.T, p.mask, static_cast<float>(p.alpha));
      check_launch(op);
      return;
    }
    GemmArgs<T> a{};
    a.out = p.sigma;
    a.ldo = p.ld_sigma;
    a.a = x;
    a.b = x;
    a.lda = a.ldb = p.ldx;
    a.M = a.N = p.d;
    a.mask = p.mask;
    a.T_ = p.T;
    a.alpha = p.alpha;
    const bool vec_ok = aligned16(x) && p.ldx % 8 == 0 && p.d % 8 == 0;
    launch_gemm<true, T>(a, fp64, vec_ok, p.device, stream, op);
  });
}

void cross_accumulate_launch(const CrossParams& p, cudaStream_t stream) {
  const char* op = "cross_accumulate";
  if (p.T == 0 || p.d_in == 0 || p.d_out == 0) return;
  const bool fp64 = p.c_dtype == kFloat64;
  dispatch_input(p.xy_dtype, op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* x = static_cast<const T*>(p.x);
    const T* y = static_cast<const T*>(p.y);
    if (safe_mode()) {
      const dim3 grid = simple_grid(p.d_in, p.d_out), block(32, 8, 1);
      if (fp64)
        cross_simple_kernel<T, double><<<grid, block, 0, stream>>>(static_cast<double*>(p.c), p.ldc, x, p.ldx, y,
                                                                   p.ldy, p.d_in, p.d_out, p.T, p.mask, p.alpha);
      else
        cross_simple_kernel<T, float><<<grid, block, 0, stream>>>(static_cast<float*>(p.c), p.ldc, x, p.ldx, y, p.ldy,
                                                                  p.d_in, p.d_out, p.T, p.mask,
                                                                  static_cast<float>(p.alpha));
      check_launch(op);
      return;
    }
    GemmArgs<T> a{};
    a.out = p.c;
    a.ldo = p.ldc;
    a.a = x;
    a.b = y;
    a.lda = p.ldx;
    a.ldb = p.ldy;
    a.M = p.d_in;
    a.N = p.d_out;
    a.mask = p.mask;
    a.T_ = p.T;
    a.alpha = p.alpha;
    const bool vec_ok = aligned16(x) && aligned16(y) && p.ldx % 8 == 0 && p.ldy % 8 == 0 && p.d_in % 8 == 0 &&
                        p.d_out % 8 == 0;
    launch_gemm<false, T>(a, fp64, vec_ok, p.device, stream, op);
  });
}

}  // namespace cuda
}  // namespace sketchprune
