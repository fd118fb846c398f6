// sketchprune CUDA module: outer_sketch.
//
// Math: per sample n, G_n[o][q] = sum_t d[n,t,o] * a[n,t,q] (d_out x d_in, fp32), flattened
// row-major (index o * d_in + q), and out[n][c] (+)= sum_{o,q} G_n[o][q] S[offset + o*d_in + q][c].
// G is never written to global memory.
//
// Layout contract: a is (N, T, d_in) with strides (lda_n, lda_t, 1), d is (N, T, d_out) with
// strides (ldd_n, ldd_t, 1), same dtype (fp32/fp16/bf16); out N x m fp32 contiguous.
//
// Fast path (outer_tile_kernel): grid (tiles of G, sample groups). A block owns one 64 x 64
// tile (o0.., q0..) of G and a group of samples. It stages the k packed (column, sign)
// entries of its 4096 S rows once (shared memory, when 4096*k*4 bytes fit; else the hash is
// evaluated inline), then for each sample of its group:
//   1. computes the G_n tile with the shared A^T B engine (gemm_tiles.cuh: A = d_n, B = a_n,
//      reduction over T; MmaTile 64 x 64 on tensor cores for fp16/bf16, SimtTile for fp32),
//   2. stages it in shared memory (fp32) and scatters +-G into a shared fp32 row of m
//      accumulators (shared atomicAdd: several threads may hit one column), then
//   3. adds the row (times 1/sqrt(k)) into out[n] with global atomicAdd (nonzero entries).
// out is zeroed first by cudaMemsetAsync on the same stream when overwriting (many blocks
// add into each row). If the m accumulators do not fit (m > 16384) the scatter goes straight
// to global atomics. SKETCHPRUNE_CUDA_SAFE=1: outer_simple_kernel (one thread per
// (n, o, q), dot product over T, hash inline, global atomics).
//
// Roofline, N = 64, T = 512, d_in = d_out = 4096, bf16, m = 512, k = 4, H100: G flops
// 2 N T d_in d_out = 1.1e15 -> ~1.4 ms at 790 TFLOP/s (mma.sync: ~2 ms); inputs a, d are
// re-read by each of the 64 tile columns / rows (from L2: 2 x 256 MiB per sample group);
// scatter N d_in d_out k = 4.3e9 shared atomics (CAS loops) -> the scatter, not the GEMM,
// dominates when T is small; hash r k = 6.7e7 entries, once per tile.
#include <algorithm>
#include <cmath>
#include <type_traits>

#include "gemm_tiles.cuh"
#include "launch.h"
#include "sketch_common.cuh"

namespace sketchprune {
namespace cuda {
namespace {

template <typename T>
struct OuterArgs {
  float* out;
  const T* a;
  const T* d;
  int64_t N, T_, d_in, d_out;
  int64_t lda_n, lda_t, ldd_n, ldd_t;
  int64_t m;
  int k;
  uint64_t seed_mixed, offset;
  float scale;
  int64_t tiles_q;            // tiles along d_in
  int64_t samples_per_group;  // grid.y groups of consecutive samples
  bool staged;                // entries staged in shared memory
  bool smem_acc;              // shared accumulator row (else global atomics)
  size_t spec_offset, hash_offset, acc_offset;  // byte offsets in dynamic shared memory
};

template <class Tile, typename T>
__global__ void __launch_bounds__(Tile::THREADS, Tile::MIN_BLOCKS) outer_tile_kernel(OuterArgs<T> p) {
  constexpr int BM = Tile::BM, BN = Tile::BN, LDC = Tile::LDC;
  static_assert(std::is_same<typename Tile::Acc, float>::value, "outer_sketch accumulates in fp32");
  extern __shared__ __align__(16) unsigned char smem[];
  NzSpec* spec = reinterpret_cast<NzSpec*>(smem + p.spec_offset);
  uint32_t* hs = reinterpret_cast<uint32_t*>(smem + p.hash_offset);
  float* acc = reinterpret_cast<float*>(smem + p.acc_offset);
  const int64_t bo = static_cast<int64_t>(blockIdx.x) / p.tiles_q;
  const int64_t bq = static_cast<int64_t>(blockIdx.x) % p.tiles_q;
  const int64_t o0 = bo * BM, q0 = bq * BN;
  const int k = p.k;
  const int64_t m = p.m;

  auto in_range = [&](int e) { return o0 + e / BN < p.d_out && q0 + e % BN < p.d_in; };
  auto row_of = [&](int e) {
    return p.offset + static_cast<uint64_t>(o0 + e / BN) * static_cast<uint64_t>(p.d_in) +
           static_cast<uint64_t>(q0 + e % BN);
  };
  build_nzspecs(spec, m, k);
  __syncthreads();
  if (p.staged) stage_entries(hs, BM * BN, k, spec, p.seed_mixed, row_of, in_range);
  if (p.smem_acc)
    for (int64_t c = threadIdx.x; c < m; c += blockDim.x) acc[c] = 0.f;
  __syncthreads();

  const int64_t n_begin = static_cast<int64_t>(blockIdx.y) * p.samples_per_group;
  const int64_t n_end = min(p.N, n_begin + p.samples_per_group);
  Tile tile;
  for (int64_t n = n_begin; n < n_end; ++n) {
    tile.run(p.d + n * p.ldd_n, p.ldd_t, p.d_out, p.a + n * p.lda_n, p.lda_t, p.d_in, nullptr, 0, p.T_, o0, q0,
             smem);
    float* Cs = reinterpret_cast<float*>(smem);
    tile.stage(Cs);
    __syncthreads();
    float* orow = p.out + n * m;
    for (int e = threadIdx.x; e < BM * BN; e += blockDim.x) {
      if (!in_range(e)) continue;
      const float v = Cs[(e / BN) * LDC + e % BN];
      if (v == 0.f) continue;
      for (int t = 0; t < k; ++t) {
        const uint32_t en = p.staged ? hs[e * k + t] : fast_entry(p.seed_mixed, row_of(e), t, spec[t]);
        if (p.smem_acc)
          atomicAdd(acc + entry_col(en), signed_value(en, v));
        else
          atomicAdd(orow + entry_col(en), signed_value(en, v) * p.scale);
      }
    }
    __syncthreads();  // scatter done: Cs may be overwritten, acc is complete
    if (p.smem_acc) {
      for (int64_t c = threadIdx.x; c < m; c += blockDim.x) {
        const float v = acc[c];
        if (v != 0.f) {
          atomicAdd(orow + c, v * p.scale);
          acc[c] = 0.f;
        }
      }
      // The next sample's first scatter comes after at least one more barrier (tile.run /
      // the barrier after stage), so the zeroing above is complete by then.
    }
  }
}

// SAFE path: one thread per (n, o, q).
template <typename T>
__global__ void outer_simple_kernel(float* out, const T* a, const T* d, int64_t N, int64_t T_, int64_t d_in,
                                    int64_t d_out, int64_t lda_n, int64_t lda_t, int64_t ldd_n, int64_t ldd_t,
                                    int64_t m, int64_t k, uint64_t seed_mixed, uint64_t offset, float scale) {
  const int64_t r = d_out * d_in, total = N * r;
  for (int64_t e = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; e < total;
       e += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t n = e / r, idx = e % r, o = idx / d_in, q = idx % d_in;
    float s = 0.f;
    for (int64_t t = 0; t < T_; ++t) s += to_float(ldg(d + n * ldd_n + t * ldd_t + o)) * to_float(ldg(a + n * lda_n + t * lda_t + q));
    if (s == 0.f) continue;
    for (int64_t t = 0; t < k; ++t) {
      int64_t col;
      float sign;
      sketch_entry(seed_mixed, offset + static_cast<uint64_t>(idx), t, m, k, &col, &sign);
      atomicAdd(out + n * m + col, sign * s * scale);
    }
  }
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

size_t align_up(size_t v, size_t a) { return (v + a - 1) / a * a; }

template <class Tile, typename T>
void launch_outer(OuterArgs<T> a, int device, cudaStream_t stream, const char* op) {
  const DeviceAttrs attrs = device_attrs(device, op);
  const int64_t tm = ceil_div(a.d_out, Tile::BM), tn = ceil_div(a.d_in, Tile::BN);
  const int64_t tiles = tm * tn;
  check(tiles <= 0x7fffffff, op, "layer too large for the tile grid");
  a.tiles_q = tn;
  const size_t spec_bytes = align_up(size_t(a.k) * sizeof(NzSpec), 16);
  const size_t base = align_up(Tile::SMEM_BYTES, 16) + spec_bytes;
  a.spec_offset = align_up(Tile::SMEM_BYTES, 16);
  const size_t hash_bytes = align_up(size_t(Tile::BM) * Tile::BN * a.k * 4, 16);
  const size_t acc_bytes = align_up(size_t(a.m) * 4, 16);
  const size_t limit = static_cast<size_t>(attrs.smem_optin);
  a.smem_acc = a.m <= 16384 && base + acc_bytes <= limit;
  a.staged = base + hash_bytes + (a.smem_acc ? acc_bytes : 0) <= limit;
  a.hash_offset = base;
  a.acc_offset = base + (a.staged ? hash_bytes : 0);
  const size_t smem = a.acc_offset + (a.smem_acc ? acc_bytes : 0);
  auto kernel = outer_tile_kernel<Tile, T>;
  if (smem > 48 * 1024) allow_max_smem(kernel, device, op);
  int per_sm = 0;
  check_cuda(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, Tile::THREADS, smem), op);
  per_sm = std::max(per_sm, 1);
  // Fewest sample groups (hash reuse) that still give ~2 waves of blocks.
  const int64_t target = 2 * int64_t(per_sm) * attrs.sm_count;
  int64_t groups = std::min<int64_t>({a.N, std::max<int64_t>(1, ceil_div(target, tiles)), 65535});
  a.samples_per_group = ceil_div(a.N, groups);
  groups = ceil_div(a.N, a.samples_per_group);
  kernel<<<dim3(static_cast<unsigned>(tiles), static_cast<unsigned>(groups), 1), Tile::THREADS, smem, stream>>>(a);
  check_launch(op);
}

// 64 x 64 G tiles, 2 x 2 warps of 32 x 32, 3 stages (27.6 KB pipeline).
using MmaOuter = MmaCfg<64, 64, 32, 2, 2, 3, 1>;

}  // namespace

void outer_sketch_launch(const OuterParams& p, cudaStream_t stream) {
  const char* op = "outer_sketch";
  if (p.N == 0) return;
  const int64_t r = p.d_out * p.d_in;
  // Many blocks add into each row of out: overwriting means zeroing first (same stream).
  if (!p.accumulate) check_cuda(cudaMemsetAsync(p.out, 0, size_t(p.N * p.m) * sizeof(float), stream), op);
  if (p.T == 0 || r == 0) return;  // G == 0
  const uint64_t seed_mixed = mix64(static_cast<uint64_t>(p.seed));
  const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(p.k)));
  const bool simple = safe_mode() || p.m >= 0x7fffffffLL || p.k > 1024;
  if (!simple) check_fast_entry(op);
  dispatch_input(p.dtype, op, [&](auto tag) {
    using T = typename decltype(tag)::type;
    const T* a = static_cast<const T*>(p.a);
    const T* d = static_cast<const T*>(p.d);
    if (simple) {
      const DeviceAttrs attrs = device_attrs(p.device, op);
      const int64_t blocks = std::min<int64_t>(ceil_div(p.N * r, 256), int64_t(attrs.sm_count) * 32);
      outer_simple_kernel<T><<<static_cast<unsigned>(blocks), 256, 0, stream>>>(
          p.out, a, d, p.N, p.T, p.d_in, p.d_out, p.lda_n, p.lda_t, p.ldd_n, p.ldd_t, p.m, p.k, seed_mixed,
          static_cast<uint64_t>(p.offset), scale);
      check_launch(op);
      return;
    }
    OuterArgs<T> args{};
    args.out = p.out;
    args.a = a;
    args.d = d;
    args.N = p.N;
    args.T_ = p.T;
    args.d_in = p.d_in;
    args.d_out = p.d_out;
    args.lda_n = p.lda_n;
    args.lda_t = p.lda_t;
    args.ldd_n = p.ldd_n;
    args.ldd_t = p.ldd_t;
    args.m = p.m;
    args.k = static_cast<int>(p.k);
    args.seed_mixed = seed_mixed;
    args.offset = static_cast<uint64_t>(p.offset);
    args.scale = scale;
    if constexpr (std::is_same<T, float>::value) {
      launch_outer<SimtTile<float, float>, T>(args, p.device, stream, op);
    } else {
      const bool vec = aligned16(a) && aligned16(d) && p.lda_t % 8 == 0 && p.ldd_t % 8 == 0 &&
                       (p.N == 1 || (p.lda_n % 8 == 0 && p.ldd_n % 8 == 0)) && p.d_in % 8 == 0 &&
                       p.d_out % 8 == 0;
      if (vec)
        launch_outer<MmaTile<MmaOuter, T, true>, T>(args, p.device, stream, op);
      else
        launch_outer<MmaTile<MmaOuter, T, false>, T>(args, p.device, stream, op);
    }
  });
}

}  // namespace cuda
}  // namespace sketchprune
