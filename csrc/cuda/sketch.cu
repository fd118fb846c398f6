// sketchprune CUDA module: sparse_sign_sketch.
//
// Math: out[n][c] (+)= sum_i g[n][i] * S[offset + i][c],  S row j has k nonzeros
// +-1/sqrt(k) at the columns of sketch_entry(mix64(seed), j, t, m, k), t < k.
//
// Layout contract: g is N x r, row stride ldg (elements), column stride 1, fp32/fp16/bf16;
// out is N x m fp32 contiguous. accumulate=False overwrites every element.
//
// Paths (host chooses): fp16/bf16 g with 16-byte aligned rows, m <= 1024, k <= 32 ->
// sketch_mma_kernel (S generated as 0/+-1 in shared memory, dense mma.sync; see below);
// otherwise the shared-accumulator sketch_kernel; k > 256 or SAFE -> sketch_simple_kernel.
// Hashes in the fast paths come from fast_entry (sketch_common.cuh), proven equal to
// sketch_entry on the host by check_fast_entry() before the first launch.
//
// Shared-accumulator path (sketch_kernel): grid (ceil(N / BN), splits). A block owns BN samples (one
// THREAD per sample, BN = blockDim.x in {32, 64, 128}) and a contiguous range of
// coordinates i (its split). For each chunk of CH coordinates it
//   1. stages the k packed (column, sign) entries of every coordinate in shared memory
//      (hash evaluated once per S row per block, reused by all BN samples), then
//   2. each thread streams its own sample's row of g (16-byte loads, 4 in flight plus 4
//      prefetched) and adds +-g into ITS OWN row of a BN x MS fp32 shared accumulator
//      (MS = m rounded up to odd: the 32 lanes of a warp hit 32 distinct banks, and no two
//      threads ever write the same word, so no atomics are needed), then
//   3. at the end the block flushes its BN x m partial tile (times 1/sqrt(k)) to out:
//      plain store / add when there is one split, atomicAdd when there are several.
// When out must be overwritten and several blocks add into one element (splits > 1, or the
// global-atomic mode), out is zeroed first by cudaMemsetAsync on the same stream.
// BN is the largest of 128 / 64 / 32 whose accumulator lets 2 blocks share an SM; when not
// even BN = 32 fits the block limit (m above ~1700 on H100) the block adds straight into out
// with global atomics (same kernel, SMEM_ACC = false). k > 256 or SKETCHPRUNE_CUDA_SAFE=1:
// sketch_simple_kernel (one thread per (n, i), hash inline, global atomics).
//
// Roofline, N = 4096, r = 2.5e6, bf16 g, H100: g is 20.5 GB -> ~6.8 ms at ~3 TB/s.
// Shared-accumulator path: ~N r k / 32 warp-level read-modify-writes (+ a broadcast entry
// read) ~ 1e9 k wavefronts / 132 SMs -> ~4.4 k ms: memory-bound only for k <= ~1.5.
// Tensor-core path: 2 N r m flops = 2.6e15 at m = 128 -> ~8 ms at the ~300 TFLOP/s mma.sync
// reaches on H100 (measured at r = 1e6: m=128 1.3x (k=1) to 1.85x (k=8) one read of g;
// m=512, k=8: 8.4x, where a sparse path is still missing -- see README.md).
#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdlib>
#include <mutex>
#include <string>
#include <type_traits>

#include "gemm_tiles.cuh"
#include "launch.h"
#include "sketch_common.cuh"

namespace sketchprune {
namespace cuda {
namespace {

constexpr int kMaxStagedK = 256;
constexpr int kMaxBN = 128;

template <typename T>
struct Vec16;  // 16-byte vector: VW elements, get(v, e) as float
template <>
struct Vec16<float> {
  static constexpr int VW = 4;
  __device__ __forceinline__ static float get(const uint4& v, int e) {
    const uint32_t w = e == 0 ? v.x : e == 1 ? v.y : e == 2 ? v.z : v.w;
    return __uint_as_float(w);
  }
};
__device__ __forceinline__ uint32_t word_of(const uint4& v, int w) {
  return w == 0 ? v.x : w == 1 ? v.y : w == 2 ? v.z : v.w;
}
template <>
struct Vec16<__half> {
  static constexpr int VW = 8;
  __device__ __forceinline__ static float get(const uint4& v, int e) {
    const uint32_t w = word_of(v, e >> 1);
    const unsigned short h = static_cast<unsigned short>((e & 1) ? (w >> 16) : (w & 0xffffu));
    return __half2float(__ushort_as_half(h));
  }
};
template <>
struct Vec16<__nv_bfloat16> {
  static constexpr int VW = 8;
  __device__ __forceinline__ static float get(const uint4& v, int e) {
    const uint32_t w = word_of(v, e >> 1);
    return __uint_as_float((e & 1) ? (w & 0xffff0000u) : (w << 16));  // bf16 -> fp32 is exact
  }
};

__device__ __forceinline__ uint4 ldg16(const void* p) { return __ldg(reinterpret_cast<const uint4*>(p)); }

struct SketchArgs {
  float* out;
  const void* g;
  int64_t N, r, ldg, m;
  int k;
  uint64_t seed_mixed;
  uint64_t offset;
  float scale;
  int chunk;                 // coordinates per staged chunk (multiple of 32)
  int spec_bytes;            // bytes reserved for the NzSpec table (multiple of 16)
  int hash_bytes;            // bytes reserved for the staged entries (multiple of 16)
  int64_t coords_per_split;  // multiple of chunk
  int ms;                    // accumulator row stride (odd)
  int flush_mode;            // FlushMode (SMEM_ACC only)
};

template <typename T, bool VEC, bool SMEM_ACC>
__global__ void __launch_bounds__(kMaxBN) sketch_kernel(SketchArgs p) {
  extern __shared__ __align__(16) unsigned char smem[];
  NzSpec* spec = reinterpret_cast<NzSpec*>(smem);
  uint32_t* hs = reinterpret_cast<uint32_t*>(smem + p.spec_bytes);
  float* acc_s = reinterpret_cast<float*>(smem + p.spec_bytes + p.hash_bytes);
  const int tid = threadIdx.x, bn = blockDim.x;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x) * bn;
  const int64_t n = n0 + tid;
  const bool active = n < p.N;
  const int64_t i_begin = static_cast<int64_t>(blockIdx.y) * p.coords_per_split;
  const int64_t i_end = min(p.r, i_begin + p.coords_per_split);
  const int k = p.k;

  build_nzspecs(spec, p.m, k);  // visible after the first barrier of the chunk loop
  float* arow = acc_s + static_cast<int64_t>(tid) * p.ms;  // this thread's own accumulator row
  if (SMEM_ACC)
    for (int c = 0; c < p.ms; ++c) arow[c] = 0.f;
  const T* grow = static_cast<const T*>(p.g) + (active ? n : 0) * p.ldg;
  float* orow = p.out + (active ? n : 0) * p.m;

  auto add = [&](uint32_t e, float v) {
    if (SMEM_ACC)
      arow[entry_col(e)] += signed_value(e, v);
    else
      atomicAdd(orow + entry_col(e), signed_value(e, v) * p.scale);
  };

  for (int64_t c0 = i_begin; c0 < i_end; c0 += p.chunk) {
    const int cnt = static_cast<int>(min(static_cast<int64_t>(p.chunk), i_end - c0));
    __syncthreads();  // everyone is done reading the previous chunk's entries
    stage_entries(
        hs, cnt, k, spec, p.seed_mixed, [&](int e) { return p.offset + static_cast<uint64_t>(c0 + e); },
        [](int) { return true; });
    __syncthreads();
    if (!active) continue;
    const T* gp = grow + c0;
    int ii = 0;
    if constexpr (VEC) {
      // c0 is a multiple of 32 elements and rows are 16-byte aligned: gp + ii is aligned.
      constexpr int VW = Vec16<T>::VW, U = 4, STEP = U * VW;
      uint4 nxt[U];
      if (STEP <= cnt) {
#pragma unroll
        for (int u = 0; u < U; ++u) nxt[u] = ldg16(gp + u * VW);
      }
      for (; ii + STEP <= cnt; ii += STEP) {
        uint4 cur[U];
#pragma unroll
        for (int u = 0; u < U; ++u) cur[u] = nxt[u];
        if (ii + 2 * STEP <= cnt) {
#pragma unroll
          for (int u = 0; u < U; ++u) nxt[u] = ldg16(gp + ii + STEP + u * VW);
        }
#pragma unroll
        for (int u = 0; u < U; ++u)
#pragma unroll
          for (int e = 0; e < VW; ++e) {
            const float gv = Vec16<T>::get(cur[u], e);
            const uint32_t* he = hs + (ii + u * VW + e) * k;
            for (int t = 0; t < k; ++t) add(he[t], gv);
          }
      }
    }
#pragma unroll 4
    for (; ii < cnt; ++ii) {
      const float gv = to_float(ldg(gp + ii));
      const uint32_t* he = hs + ii * k;
      for (int t = 0; t < k; ++t) add(he[t], gv);
    }
  }

  if (SMEM_ACC) {
    __syncthreads();
    // Coalesced flush of the block's rows: element (rr, c) of the BN x m partial tile.
    const int rows = static_cast<int>(min(static_cast<int64_t>(bn), p.N - n0));
    const int m = static_cast<int>(p.m);
    const int total = rows * m;  // < 2^31: the tile fits in shared memory
    for (int e = tid; e < total; e += bn) {
      const int rr = e / m, c = e % m;
      flush_value(p.out + (n0 + rr) * p.m + c, acc_s[static_cast<int64_t>(rr) * p.ms + c] * p.scale, p.flush_mode);
    }
  }
}

// ---------------------------------------------------------------- tensor-core path
// out tile (128 samples x 128 sketch columns) = g tile (128 x coordinate range) @ S tile,
// with the S tile GENERATED in shared memory as exact 0 / +-1 fp16 / bf16 values (the
// 1/sqrt(k) scale is applied at the flush), so the sketch becomes a dense mma.sync GEMM whose
// B operand costs no memory traffic. Worth it while 2 N r m flops stay under the g read
// time (m <= 256); its cost does not grow with k. Pipeline per BK = 64 coordinates:
//   iteration kt: cp.async the g tile (A) of step kt+2, build the S tile (B) of step kt+2
//   from the packed entries of step kt+2 (E, double-buffered, hashed one step earlier),
//   hash the entries of step kt+3, then mma on step kt.
// Layouts: As[128 samples][64 + 8] (coordinates contiguous; ldmatrix, conflict-free),
// Bs[64 coordinates][128 + 8] (columns contiguous; ldmatrix.trans, as in MmaTile).
namespace skmma {
constexpr int BM = 128, BN = 128, BK = 64, WARPS_N = 4, STAGES = 3, THREADS = 256;
constexpr int WM = 64, WN = 32, MI = WM / 16, NI = WN / 8;
constexpr int LDA = BK + 8, LDB = BN + 8;
constexpr int A_STAGE = BM * LDA, B_STAGE = BK * LDB;  // elements
constexpr size_t PIPE_BYTES = size_t(STAGES) * (A_STAGE + B_STAGE) * sizeof(uint16_t);
constexpr int MAX_K = 32;
static_assert(BK * 4 == THREADS, "B generation: 4 threads per coordinate row");
static_assert(BM * BK / 8 == 4 * THREADS, "A loader: 4 chunks per thread");
}  // namespace skmma

template <typename T>
struct PlusMinusOne;
template <>
struct PlusMinusOne<__half> {
  static constexpr uint16_t plus = 0x3C00, minus = 0xBC00;
};
template <>
struct PlusMinusOne<__nv_bfloat16> {
  static constexpr uint16_t plus = 0x3F80, minus = 0xBF80;
};

template <typename T>
__global__ void __launch_bounds__(skmma::THREADS, 2) sketch_mma_kernel(SketchArgs p, int col_tiles) {
  using namespace skmma;
  extern __shared__ __align__(16) unsigned char smem[];
  uint16_t* As = reinterpret_cast<uint16_t*>(smem);
  uint16_t* Bs = As + STAGES * A_STAGE;
  uint32_t* E = reinterpret_cast<uint32_t*>(Bs + STAGES * B_STAGE);  // [2][BK * k]
  NzSpec* spec = reinterpret_cast<NzSpec*>(E + 2 * BK * p.k);        // [k]
  const int tid = threadIdx.x, lane = tid & 31, warp = tid >> 5;
  const int wm0 = (warp / WARPS_N) * WM, wn0 = (warp % WARPS_N) * WN;
  const int64_t n0 = static_cast<int64_t>(blockIdx.x / col_tiles) * BM;
  const int64_t c0 = static_cast<int64_t>(blockIdx.x % col_tiles) * BN;
  const int64_t i_begin = static_cast<int64_t>(blockIdx.y) * p.coords_per_split;
  const int64_t i_end = min(p.r, i_begin + p.coords_per_split);
  const int64_t nk = (i_end - i_begin + BK - 1) / BK;
  const int k = p.k;
  const T* g = static_cast<const T*>(p.g);

  auto load_a = [&](int s, int64_t kt) {
    const int64_t ic = i_begin + kt * BK;
#pragma unroll
    for (int it = 0; it < 4; ++it) {
      const int c = it * THREADS + tid;
      const int row = c >> 3, cc = c & 7;  // 8 chunks of 16 bytes per 64-coordinate row
      const int64_t n = n0 + row, i = ic + cc * 8;
      int bytes = 0;
      if (n < p.N && i < i_end) bytes = static_cast<int>(min(int64_t(16), (i_end - i) * int64_t(sizeof(T))));
      const T* src = bytes > 0 ? g + n * p.ldg + i : g;
      cp_async16_bytes(As + s * A_STAGE + row * LDA + cc * 8, src, bytes);
    }
  };
  auto hash_step = [&](int buf, int64_t kt) {
    const int64_t ic = i_begin + kt * BK;
    uint32_t* e_out = E + buf * BK * k;
    for (int e = tid; e < BK * k; e += THREADS) {
      const int kk = e / k, t = e - kk * k;
      const int64_t i = ic + kk;
      e_out[e] = i < i_end ? fast_entry(p.seed_mixed, p.offset + static_cast<uint64_t>(i), static_cast<uint32_t>(t),
                                        spec[t])
                           : 0xFFFFFFFFu;
    }
  };
  auto build_b = [&](int s, int buf) {
    const int kk = tid >> 2, seg = tid & 3;  // coordinate row kk, columns seg*32 .. +32
    uint16_t* row = Bs + s * B_STAGE + kk * LDB + seg * 32;
    uint4* row4 = reinterpret_cast<uint4*>(row);
#pragma unroll
    for (int q = 0; q < 4; ++q) row4[q] = make_uint4(0u, 0u, 0u, 0u);
    const uint32_t* e_in = E + buf * BK * k + kk * k;
    for (int t = 0; t < k; ++t) {
      const uint32_t e = e_in[t];
      const int64_t c = static_cast<int64_t>(entry_col(e)) - c0 - seg * 32;
      if (c >= 0 && c < 32) row[c] = (e & kSignBit) ? PlusMinusOne<T>::minus : PlusMinusOne<T>::plus;
    }
  };

  float acc[MI][NI][4];
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int ni = 0; ni < NI; ++ni)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.f;

  build_nzspecs(spec, p.m, k);
  __syncthreads();
  if (nk > 0) hash_step(0, 0);
#pragma unroll
  for (int s = 0; s < STAGES - 1; ++s) {
    __syncthreads();  // entries of step s visible; buffer (s+1)%2 free
    if (s < nk) {
      load_a(s, s);
      build_b(s, s % 2);
    }
    cp_async_commit();
    if (s + 1 < nk) hash_step((s + 1) % 2, s + 1);
  }
  for (int64_t kt = 0; kt < nk; ++kt) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();  // A of step kt landed; B of step kt built; stage (kt-1)%STAGES free
    const int64_t nxt = kt + STAGES - 1;
    if (nxt < nk) {
      load_a(static_cast<int>(nxt % STAGES), nxt);
      build_b(static_cast<int>(nxt % STAGES), static_cast<int>(nxt % 2));
    }
    cp_async_commit();
    if (nxt + 1 < nk) hash_step(static_cast<int>((nxt + 1) % 2), nxt + 1);
    const int s = static_cast<int>(kt % STAGES);
    const uint16_t* as = As + s * A_STAGE;
    const uint16_t* bs = Bs + s * B_STAGE;
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      uint32_t af[MI][4], bfr[NI][2];
#pragma unroll
      for (int mi = 0; mi < MI; ++mi) {
        const int row = wm0 + mi * 16 + (lane & 7) + ((lane >> 3) & 1) * 8;
        const int col = kk + ((lane >> 4) & 1) * 8;
        ldmatrix_x4(af[mi], as + row * LDA + col);
      }
#pragma unroll
      for (int ni = 0; ni < NI; ni += 2) {
        const int kr = kk + (lane & 7) + ((lane >> 3) & 1) * 8;
        const int n = wn0 + ni * 8 + (lane >> 4) * 8;
        uint32_t r[4];
        ldmatrix_x4_trans(r, bs + kr * LDB + n);
        bfr[ni][0] = r[0];
        bfr[ni][1] = r[1];
        bfr[ni + 1][0] = r[2];
        bfr[ni + 1][1] = r[3];
      }
#pragma unroll
      for (int mi = 0; mi < MI; ++mi)
#pragma unroll
        for (int ni = 0; ni < NI; ++ni) mma_16816<T>(acc[mi][ni], af[mi], bfr[ni][0], bfr[ni][1]);
    }
  }
  cp_async_wait<0>();

  const int gq = lane >> 2, t4 = lane & 3;
#pragma unroll
  for (int mi = 0; mi < MI; ++mi)
#pragma unroll
    for (int ni = 0; ni < NI; ++ni)
#pragma unroll
      for (int h = 0; h < 2; ++h)
#pragma unroll
        for (int q = 0; q < 2; ++q) {
          const int64_t n = n0 + wm0 + mi * 16 + gq + 8 * h;
          const int64_t c = c0 + wn0 + ni * 8 + 2 * t4 + q;
          if (n < p.N && c < p.m) flush_value(p.out + n * p.m + c, acc[mi][ni][2 * h + q] * p.scale, p.flush_mode);
        }
}

// SAFE / fallback path: one thread per (n, i), hash inline, global atomics into a
// pre-zeroed (or accumulated) out.
template <typename T>
__global__ void sketch_simple_kernel(float* out, const T* g, int64_t N, int64_t r, int64_t ld_g, int64_t m, int64_t k,
                                     uint64_t seed_mixed, uint64_t offset, float scale) {
  const int64_t total = N * r;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = e / r, i = e % r;
    const float v = to_float(ldg(g + n * ld_g + i));
    if (v == 0.f) continue;
    for (int64_t t = 0; t < k; ++t) {
      int64_t col;
      float sign;
      sketch_entry(seed_mixed, offset + static_cast<uint64_t>(i), t, m, k, &col, &sign);
      atomicAdd(out + n * m + col, sign * v * scale);
    }
  }
}

// SKETCHPRUNE_CUDA_SKETCH_SMEM=1: skip the tensor-core path (A/B comparisons on a GPU).
bool force_smem_path() {
  static const bool on = [] {
    const char* s = std::getenv("SKETCHPRUNE_CUDA_SKETCH_SMEM");
    return s != nullptr && s[0] != '\0' && s[0] != '0';
  }();
  return on;
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

void zero_out(float* out, int64_t count, cudaStream_t stream, const char* op) {
  check_cuda(cudaMemsetAsync(out, 0, static_cast<size_t>(count) * sizeof(float), stream), op);
}

template <typename T, bool VEC, bool SMEM_ACC>
void launch_fast(SketchArgs a, int bn, size_t smem, bool accumulate, int device, cudaStream_t stream,
                 const char* op) {
  auto kernel = sketch_kernel<T, VEC, SMEM_ACC>;
  const DeviceAttrs attrs = device_attrs(device, op);
  if (smem > 48 * 1024) allow_max_smem(kernel, device, op);
  int per_sm = 0;
  check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, bn, smem), op);
  per_sm = std::max(per_sm, 1);
  const int64_t blocks_x = ceil_div(a.N, bn);
  check(blocks_x <= 0x7fffffff, op, "N too large for the grid");
  // ~4 waves of equal blocks: enough to fill every SM, little tail.
  const int64_t target = 4 * int64_t(per_sm) * attrs.sm_count;
  int64_t splits = std::max<int64_t>(1, ceil_div(target, blocks_x));
  splits = std::min<int64_t>({splits, ceil_div(a.r, a.chunk), 65535});
  a.coords_per_split = ceil_div(ceil_div(a.r, splits), a.chunk) * a.chunk;
  splits = ceil_div(a.r, a.coords_per_split);
  a.flush_mode = splits == 1 ? (accumulate ? kFlushAdd : kFlushStore) : kFlushAtomic;
  if (!accumulate && (!SMEM_ACC || splits > 1)) zero_out(a.out, a.N * a.m, stream, op);
  kernel<<<dim3(static_cast<unsigned>(blocks_x), static_cast<unsigned>(splits), 1), bn, smem, stream>>>(a);
  check_launch(op);
}

// Shared memory of the tensor-core kernel: its operand pipeline plus the hash buffers and the k
// nonzero descriptors (~108-112 KB: more than GPUs with a 99 KB per-block limit, such as sm_86 /
// sm_89, can give; those take the shared-accumulator path).
inline size_t mma_smem_bytes(int64_t k) {
  using namespace skmma;
  return PIPE_BYTES + size_t(2) * BK * size_t(k) * sizeof(uint32_t) + size_t(k) * sizeof(NzSpec);
}

template <typename T>
void launch_mma(SketchArgs a, bool accumulate, int device, cudaStream_t stream, const char* op) {
  using namespace skmma;
  auto kernel = sketch_mma_kernel<T>;
  const DeviceAttrs attrs = device_attrs(device, op);
  const size_t smem = mma_smem_bytes(a.k);
  allow_max_smem(kernel, device, op);
  int per_sm = 0;
  check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, THREADS, smem), op);
  per_sm = std::max(per_sm, 1);
  const int col_tiles = static_cast<int>(ceil_div(a.m, BN));
  const int64_t blocks_x = ceil_div(a.N, BM) * col_tiles;
  check(blocks_x <= 0x7fffffff, op, "N too large for the grid");
  const int64_t target = 4 * int64_t(per_sm) * attrs.sm_count;  // ~4 equal waves
  int64_t splits = std::max<int64_t>(1, ceil_div(target, blocks_x));
  splits = std::min<int64_t>({splits, ceil_div(a.r, 4 * BK), 65535});
  splits = std::max<int64_t>(splits, 1);
  a.coords_per_split = ceil_div(ceil_div(a.r, splits), BK) * BK;
  splits = ceil_div(a.r, a.coords_per_split);
  a.flush_mode = splits == 1 ? (accumulate ? kFlushAdd : kFlushStore) : kFlushAtomic;
  if (!accumulate && splits > 1) zero_out(a.out, a.N * a.m, stream, op);
  kernel<<<dim3(static_cast<unsigned>(blocks_x), static_cast<unsigned>(splits), 1), THREADS, smem, stream>>>(a,
                                                                                                         col_tiles);
  check_launch(op);
}

}  // namespace

void check_fast_entry(const char* op) {
  static std::once_flag once;
  static std::string problem;
  std::call_once(once, [] {
    const int64_t ms[] = {1, 2, 3, 7, 8, 64, 100, 128, 513, 4096, 65537, 1000003, 0x7fffffffLL};
    const int64_t seeds[] = {0, -1, 12345, INT64_MIN};
    uint64_t x = 0x9E3779B97F4A7C15ull;
    for (const int64_t m : ms) {
      const int64_t ks[] = {1, 2, 3, 8, 32, 256, m};
      for (const int64_t k : ks) {
        if (k > m || k > 4096) continue;
        const int64_t ts[] = {0, 1, k / 2, k - 1};
        for (const int64_t t : ts) {
          if (t >= k) continue;
          const NzSpec spec = make_nzspec(t, m, k);
          for (int r = 0; r < 24; ++r) {
            x = mix64(x + 1);
            const uint64_t row = r == 0 ? 0ull : r == 1 ? ~0ull : r == 2 ? (1ull << 63) : x;
            for (const int64_t seed : seeds) {
              const uint64_t sm = mix64(static_cast<uint64_t>(seed));
              int64_t col;
              float sign;
              sketch_entry(sm, row, t, m, k, &col, &sign);
              const uint32_t f = fast_entry(sm, row, static_cast<uint32_t>(t), spec);
              const uint32_t want = make_entry(sm, row, t, m, k);
              if (f != want || static_cast<int64_t>(f & ~kSignBit) != col || ((f & kSignBit) != 0) != (sign < 0.f)) {
                problem = "internal self-check failed: fast_entry (csrc/cuda/sketch_common.cuh) disagrees with "
                          "sketch_entry (csrc/common/sketch_hash.h) at m=" + std::to_string(m) +
                          " k=" + std::to_string(k) + " t=" + std::to_string(t);
                return;
              }
            }
          }
        }
      }
    }
  });
  if (!problem.empty()) fail(op, problem);
}

void sparse_sign_sketch_launch(const SketchParams& p, cudaStream_t stream) {
  const char* op = "sparse_sign_sketch";
  if (p.N == 0) return;
  if (p.r == 0) {
    if (!p.accumulate) zero_out(p.out, p.N * p.m, stream, op);
    return;
  }
  const uint64_t seed_mixed = mix64(static_cast<uint64_t>(p.seed));
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(p.k)));
  const bool simple = safe_mode() || p.k > kMaxStagedK || p.m >= 0x7fffffffLL;
  if (!simple) check_fast_entry(op);
  dispatch_input(p.g_dtype, op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* g = static_cast<const T*>(p.g);
    if (simple) {
      if (!p.accumulate) zero_out(p.out, p.N * p.m, stream, op);
      const DeviceAttrs attrs = device_attrs(p.device, op);
      const int64_t blocks = std::min<int64_t>(ceil_div(p.N * p.r, 256), int64_t(attrs.sm_count) * 32);
      sketch_simple_kernel<T><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(
          p.out, g, p.N, p.r, p.ldg, p.m, p.k, seed_mixed, static_cast<uint64_t>(p.offset), scale);
      check_launch(op);
      return;
    }
    const DeviceAttrs attrs = device_attrs(p.device, op);
    const bool vec = aligned16(g) && (p.N == 1 || (p.ldg * int64_t(sizeof(T))) % 16 == 0);
    SketchArgs a{};
    a.out = p.out;
    a.g = g;
    a.N = p.N;
    a.r = p.r;
    a.ldg = p.ldg;
    a.m = p.m;
    a.k = static_cast<int>(p.k);
    a.seed_mixed = seed_mixed;
    a.offset = static_cast<uint64_t>(p.offset);
    a.scale = scale;
    if constexpr (!std::is_same<T, float>::value) {
      // Tensor-core path: fp16 / bf16 g, 16-byte aligned rows, m <= 1024, k <= 32, and a device
      // that can give the kernel its shared memory.
      if (vec && p.m <= 8 * skmma::BN && p.k <= skmma::MAX_K && !force_smem_path() &&
          mma_smem_bytes(p.k) <= size_t(attrs.smem_optin)) {
        launch_mma<T>(a, p.accumulate, p.device, stream, op);
        return;
      }
    }
    // Chunk: <= 8192 staged entries (32 KiB), between 32 and 1024 coordinates.
    int chunk = 1024;
    while (chunk > 32 && int64_t(chunk) * p.k > 8192) chunk /= 2;
    a.chunk = chunk;
    a.spec_bytes = static_cast<int>(ceil_div(p.k * int64_t(sizeof(NzSpec)), 16) * 16);
    a.hash_bytes = static_cast<int>(ceil_div(int64_t(chunk) * p.k * 4, 16) * 16);
    const int64_t ms = p.m | 1;  // odd row stride
    a.ms = static_cast<int>(std::min<int64_t>(ms, 0x7fffffff));
    const int64_t bn_cap = std::min<int64_t>(kMaxBN, ceil_div(p.N, 32) * 32);
    const int64_t reserve = 2048;  // per-block runtime reservation and slack
    int bn = 0;
    size_t smem = 0;
    for (int cand = kMaxBN; cand >= 32; cand /= 2) {
      if (cand > bn_cap) continue;
      const int64_t bytes = a.spec_bytes + a.hash_bytes + int64_t(cand) * ms * 4;
      if (2 * (bytes + reserve) <= attrs.smem_per_sm) {
        bn = cand;
        smem = static_cast<size_t>(bytes);
        break;
      }
    }
    if (bn == 0) {
      const int64_t bytes = a.spec_bytes + a.hash_bytes + int64_t(32) * ms * 4;
      if (bytes <= attrs.smem_optin) {
        bn = 32;
        smem = static_cast<size_t>(bytes);
      }
    }
    if (bn != 0) {
      if (vec)
        launch_fast<T, true, true>(a, bn, smem, p.accumulate, p.device, stream, op);
      else
        launch_fast<T, false, true>(a, bn, smem, p.accumulate, p.device, stream, op);
    } else {
      // Accumulator does not fit: add straight into out with global atomics.
      bn = static_cast<int>(bn_cap);
      smem = static_cast<size_t>(a.spec_bytes + a.hash_bytes);
      if (vec)
        launch_fast<T, true, false>(a, bn, smem, p.accumulate, p.device, stream, op);
      else
        launch_fast<T, false, false>(a, bn, smem, p.accumulate, p.device, stream, op);
    }
  });
}

}  // namespace cuda
}  // namespace sketchprune
