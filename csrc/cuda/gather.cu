// sketchprune CUDA module: gather_slices.
//
// Math (per descriptor): src viewed as (outer, L*block, inner), dst as (outer, n_keep*block,
// inner), elements of elem_bytes bytes:  dst[o, b*block + e, q] = src[o, idx[b]*block + e, q].
// A bitwise copy. Each kept block is one contiguous run of R = block*inner*elem_bytes bytes
// in both tensors, and every dst row o (n_keep runs) is contiguous, so dst is written as one
// flat array of V-byte vectors:
//   vector e of dst:  o = e / W, p = e % W   (W = n_keep * R / V vectors per dst row)
//                     b = p / RV, w = p % RV (RV = R / V vectors per run)
//                     src vector = (o * L + idx[b]) * RV + w
// V is the widest of 16 / 8 / 4 / 2 / 1 bytes dividing R and both base addresses (then every
// run start is V-aligned). Divisions use precomputed 32-bit magic multipliers (FastDivU32)
// when the descriptor has < 2^32 vectors, plain 64-bit division otherwise.
// Blocks: 256 threads x 8 items, loads before stores (plain mode).
//
// Launch: ONE grid for up to MAX_GATHER_DESCS descriptors passed by value; descriptor j owns
// blocks [first_block[j], first_block[j+1]) (host prefix sum of sizes, no device reads).
// Small vectors (V < 16, e.g. single bf16 columns) with a 16-byte aligned dst use the
// packed mode: a thread gathers 16 / V consecutive dst vectors (position located once, then
// stepped) and writes them with one 16-byte store. SKETCHPRUNE_CUDA_SAFE=1 forces V = 1.
//
// Roofline, 11008 x 4096 bf16 (90 MB), keep 80%: ~72 MB written + 72-90 MB read -> ~50 us at
// ~3 TB/s (D2D copy rate counting read + write). Rows: 8 KB runs, V = 16; 128-wide blocks:
// 256 B runs, V = 16; single columns: 2-byte runs, V = 2 (reads gather, writes coalesced).
#include <algorithm>

#include "cuda_common.cuh"
#include "launch.h"

namespace sketchprune {
namespace cuda {
namespace {

constexpr int kGatherThreads = 256;
constexpr int kGatherUnroll = 8;
constexpr int64_t kItemsPerBlock = int64_t(kGatherThreads) * kGatherUnroll;

// n / d for 32-bit n and a fixed divisor d >= 1 (Granlund-Montgomery round-up method):
// shift = ceil(log2 d), mul = floor(2^32 (2^shift - d) / d) + 1, q = (umulhi(n, mul) + n) >> shift
// with the sum in 64 bits. Exact for every n < 2^32 and 1 <= d < 2^32.
struct FastDivU32 {
  uint32_t d, mul, shift;
  __device__ __forceinline__ uint32_t div(uint32_t n) const {
    return static_cast<uint32_t>((static_cast<uint64_t>(__umulhi(n, mul)) + n) >> shift);
  }
};

FastDivU32 make_fastdiv(uint32_t d) {
  uint32_t shift = 0;
  while ((uint64_t(1) << shift) < d) ++shift;
  const unsigned __int128 num = (static_cast<unsigned __int128>(1) << 32) * ((uint64_t(1) << shift) - d);
  const uint32_t mul = static_cast<uint32_t>(num / d + 1);
  return FastDivU32{d, mul, shift};
}

struct GatherJob {
  const unsigned char* src;
  unsigned char* dst;
  const int64_t* idx;
  int64_t total;  // dst vectors
  int64_t W;      // vectors per dst row
  int64_t RV;     // vectors per run
  int64_t L;      // blocks along the sliced dim of src
  int64_t n_keep;
  int64_t first_block;
  FastDivU32 divW, divRV;
  int vbytes;
  int use32;
  int packed;  // item = 16 / vbytes vectors written with one 16-byte store
};

struct GatherKernelParams {
  GatherJob jobs[MAX_GATHER_DESCS];
  int num_jobs;
};

template <int V>
struct VecType;
template <>
struct VecType<16> {
  using type = uint4;
};
template <>
struct VecType<8> {
  using type = uint2;
};
template <>
struct VecType<4> {
  using type = uint32_t;
};
template <>
struct VecType<2> {
  using type = uint16_t;
};
template <>
struct VecType<1> {
  using type = uint8_t;
};

// Position of dst vector e: row o, kept block b, vector w inside the run.
struct Pos {
  int64_t o, b, w;
};

__device__ __forceinline__ Pos locate(const GatherJob& J, int64_t e) {
  Pos q;
  if (J.use32) {
    const uint32_t e32 = static_cast<uint32_t>(e);
    const uint32_t o32 = J.divW.div(e32);
    const uint32_t p32 = e32 - o32 * static_cast<uint32_t>(J.W);
    const uint32_t b32 = J.divRV.div(p32);
    q.o = o32;
    q.b = b32;
    q.w = p32 - b32 * static_cast<uint32_t>(J.RV);
  } else {
    q.o = e / J.W;
    const int64_t p = e - q.o * J.W;
    q.b = p / J.RV;
    q.w = p - q.b * J.RV;
  }
  return q;
}

__device__ __forceinline__ int64_t src_index(const GatherJob& J, const Pos& q) {
  return (q.o * J.L + __ldg(J.idx + q.b)) * J.RV + q.w;
}

// Plain mode: item = one V-byte vector; thread tid of the block copies vectors
// base + tid + u * THREADS (coalesced loads and stores), all loads before the stores.
template <int V>
__device__ __forceinline__ void gather_plain(const GatherJob& J, int64_t local_block) {
  using Vec = typename VecType<V>::type;
  const Vec* src = reinterpret_cast<const Vec*>(J.src);
  Vec* dst = reinterpret_cast<Vec*>(J.dst);
  const int64_t base = local_block * kItemsPerBlock + threadIdx.x;
  Vec vals[kGatherUnroll];
#pragma unroll
  for (int u = 0; u < kGatherUnroll; ++u) {
    const int64_t e = base + int64_t(u) * kGatherThreads;
    if (e < J.total) vals[u] = src[src_index(J, locate(J, e))];
  }
#pragma unroll
  for (int u = 0; u < kGatherUnroll; ++u) {
    const int64_t e = base + int64_t(u) * kGatherThreads;
    if (e < J.total) dst[e] = vals[u];
  }
}

// Byte j*V .. j*V+V-1 of a 16-byte little-endian word group (j compile-time after unrolling).
template <int V>
__device__ __forceinline__ void put_vec(uint32_t (&w)[4], int j, typename VecType<V>::type v);
template <>
__device__ __forceinline__ void put_vec<8>(uint32_t (&w)[4], int j, uint2 v) {
  w[2 * j] = v.x;
  w[2 * j + 1] = v.y;
}
template <>
__device__ __forceinline__ void put_vec<4>(uint32_t (&w)[4], int j, uint32_t v) {
  w[j] = v;
}
template <>
__device__ __forceinline__ void put_vec<2>(uint32_t (&w)[4], int j, uint16_t v) {
  w[j >> 1] |= static_cast<uint32_t>(v) << (16 * (j & 1));
}
template <>
__device__ __forceinline__ void put_vec<1>(uint32_t (&w)[4], int j, uint8_t v) {
  w[j >> 2] |= static_cast<uint32_t>(v) << (8 * (j & 3));
}

// Packed mode (V < 16, dst 16-byte aligned): item = P = 16 / V consecutive dst vectors,
// gathered one by one (the position is located once and then stepped, no divisions) and
// written with one 16-byte store.
template <int V>
__device__ __forceinline__ void gather_packed(const GatherJob& J, int64_t local_block) {
  using Vec = typename VecType<V>::type;
  constexpr int P = 16 / V;
  const Vec* src = reinterpret_cast<const Vec*>(J.src);
  const int64_t base = local_block * kItemsPerBlock + threadIdx.x;
#pragma unroll 4
  for (int u = 0; u < kGatherUnroll; ++u) {  // 4 items in flight: their loads overlap
    const int64_t item = base + int64_t(u) * kGatherThreads;
    const int64_t e0 = item * P;
    if (e0 >= J.total) continue;
    Pos q = locate(J, e0);
    int64_t row = q.o * J.L + __ldg(J.idx + q.b);
    uint32_t w[4] = {0u, 0u, 0u, 0u};  // the 16 output bytes, little-endian
    Vec last[P];
    const int n = static_cast<int>(min(int64_t(P), J.total - e0));
#pragma unroll
    for (int j = 0; j < P; ++j) {
      if (j < n) {
        const Vec v = src[row * J.RV + q.w];
        last[j] = v;
        put_vec<V>(w, j, v);
        if (++q.w == J.RV) {  // next kept block (and maybe next row)
          q.w = 0;
          if (++q.b == J.n_keep) {
            q.b = 0;
            ++q.o;
          }
          if (j + 1 < n) row = q.o * J.L + __ldg(J.idx + q.b);
        }
      }
    }
    if (n == P) {
      reinterpret_cast<uint4*>(J.dst)[item] = make_uint4(w[0], w[1], w[2], w[3]);
    } else {
      Vec* dst = reinterpret_cast<Vec*>(J.dst) + e0;
#pragma unroll
      for (int j = 0; j < P; ++j)
        if (j < n) dst[j] = last[j];
    }
  }
}

__global__ void __launch_bounds__(kGatherThreads) gather_kernel(const __grid_constant__ GatherKernelParams p) {
  const int64_t blk = blockIdx.x;
  int j = 0;
  while (j + 1 < p.num_jobs && blk >= p.jobs[j + 1].first_block) ++j;
  const GatherJob J = p.jobs[j];  // by value: registers, not a local-memory copy
  const int64_t local = blk - J.first_block;
  if (J.packed) {
    switch (J.vbytes) {
      case 8: gather_packed<8>(J, local); break;
      case 4: gather_packed<4>(J, local); break;
      case 2: gather_packed<2>(J, local); break;
      default: gather_packed<1>(J, local); break;
    }
  } else {
    switch (J.vbytes) {
      case 16: gather_plain<16>(J, local); break;
      case 8: gather_plain<8>(J, local); break;
      case 4: gather_plain<4>(J, local); break;
      case 2: gather_plain<2>(J, local); break;
      default: gather_plain<1>(J, local); break;
    }
  }
}

}  // namespace

void gather_slices_launch(const GatherParams& p, cudaStream_t stream) {
  const char* op = "gather_slices";
  check(p.num_descs >= 0 && p.num_descs <= MAX_GATHER_DESCS, op,
        "at most " + std::to_string(MAX_GATHER_DESCS) + " descriptors per launch");
  GatherKernelParams kp{};
  int64_t blocks = 0;
  int nj = 0;
  for (int i = 0; i < p.num_descs; ++i) {
    const GatherDesc& d = p.descs[i];
    const int64_t run = d.block * d.inner * d.elem_bytes;  // bytes per kept block
    if (d.outer == 0 || d.n_keep == 0 || run == 0) continue;
    int v = 16;
    const uint64_t addr_bits = reinterpret_cast<uintptr_t>(d.src) | reinterpret_cast<uintptr_t>(d.dst);
    while (v > 1 && ((run % v) != 0 || (addr_bits % uint64_t(v)) != 0)) v /= 2;
    if (safe_mode()) v = 1;
    GatherJob& J = kp.jobs[nj];
    J.src = static_cast<const unsigned char*>(d.src);
    J.dst = static_cast<unsigned char*>(d.dst);
    J.idx = d.idx;
    J.RV = run / v;
    J.W = d.n_keep * J.RV;
    J.total = d.outer * J.W;
    J.L = d.L;
    J.n_keep = d.n_keep;
    J.vbytes = v;
    J.packed = (!safe_mode() && v < 16 && (reinterpret_cast<uintptr_t>(d.dst) % 16) == 0) ? 1 : 0;
    J.use32 = J.total <= int64_t(0xffffffffLL) ? 1 : 0;
    if (J.use32) {
      J.divW = make_fastdiv(static_cast<uint32_t>(J.W));
      J.divRV = make_fastdiv(static_cast<uint32_t>(J.RV));
    }
    J.first_block = blocks;
    const int64_t items = J.packed ? ceil_div(J.total, 16 / v) : J.total;
    blocks += ceil_div(items, kItemsPerBlock);
    ++nj;
  }
  if (nj == 0) return;
  kp.num_jobs = nj;
  check(blocks <= 0x7fffffffLL, op, "too much data for one launch");
  gather_kernel<<<static_cast<unsigned>(blocks), kGatherThreads, 0, stream>>>(kp);
  check_launch(op);
}

}  // namespace cuda
}  // namespace sketchprune
