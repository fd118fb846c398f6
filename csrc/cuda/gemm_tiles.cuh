// sketchprune CUDA module: the block-level "A^T B" tile engines shared by cov_accumulate,
// cross_accumulate and outer_sketch.
//
// Every user computes a BM x BN tile of   C = A^T B,   C[i][j] = sum_t A[t][i] * B[t][j],
// where A (T x M) and B (T x N) are row-major with row strides lda / ldb (in elements) and
// column stride 1: the reduction runs over ROWS of both operands (tokens / samples), so both
// shared-memory tiles are stored "k-major" ([BK][BM] and [BK][BN], exactly as in global).
// Rows t outside [t_begin, t_end), rows with mask[t] == 0 and columns past M / N are
// loaded as zeros (a zero row contributes nothing), so edges need no special casing in the
// math. After run() the tile sits in registers; stage() writes it to shared memory as
// Cs[r * (BN + 1) + c] (fp32 or fp64), from where each user runs its own epilogue.
//
// Two engines with one interface:
//   MmaTile   fp16 / bf16 inputs, fp32 accumulation on tensor cores: mma.sync m16n8k16
//             (sm_80+), operands fed by ldmatrix.trans from padded shared memory, a
//             STAGES-deep cp.async pipeline (VEC=true: 16-byte cp.async with zero-fill;
//             VEC=false: scalar loads for unaligned pointers / strides / widths).
//   SimtTile  any input, fp32 or fp64 accumulation with plain FMAs (exact fp32, no TF32):
//             64 x 64 tile, BK = 16, 256 threads, 4 x 4 outputs per thread.
#pragma once

#include "cuda_common.cuh"

namespace sketchprune {
namespace cuda {

// ------------------------------------------------------------------ PTX wrappers

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

// 16-byte async copy global -> shared; !valid writes 16 zero bytes (ignore-src: src not read).
__device__ __forceinline__ void cp_async16(void* smem_dst, const void* gmem_src, bool valid) {
  asm volatile(
      "{\n"
      "  .reg .pred ignore;\n"
      "  setp.eq.u32 ignore, %2, 0;\n"
      "  cp.async.cg.shared.global [%0], [%1], 16, ignore;\n"
      "}\n" ::"r"(smem_u32(smem_dst)),
      "l"(gmem_src), "r"(static_cast<uint32_t>(valid))
      : "memory");
}
// Same with an explicit source byte count (0..16); the remaining bytes are zero-filled.
__device__ __forceinline__ void cp_async16_bytes(void* smem_dst, const void* gmem_src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(smem_u32(smem_dst)), "l"(gmem_src),
               "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* smem_row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(smem_row)));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* smem_row) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_u32(smem_row)));
}

// D = A * B + D, m16n8k16, A row-major (4 regs), B "col" (2 regs), fp32 accumulators.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);

template <>
__device__ __forceinline__ void mma_16816<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                  uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma_16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                         uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// ------------------------------------------------------------------ tensor-core engine

// BM x BN block tile, BK rows of the reduction per pipeline stage, WARPS_M x WARPS_N warps
// each owning a (BM/WARPS_M) x (BN/WARPS_N) warp tile, STAGES-deep cp.async pipeline,
// MIN_BLOCKS for __launch_bounds__.
template <int BM_, int BN_, int BK_, int WARPS_M_, int WARPS_N_, int STAGES_, int MIN_BLOCKS_>
struct MmaCfg {
  static constexpr int BM = BM_, BN = BN_, BK = BK_;
  static constexpr int WARPS_M = WARPS_M_, WARPS_N = WARPS_N_, STAGES = STAGES_;
  static constexpr int MIN_BLOCKS = MIN_BLOCKS_;
};

template <class Cfg, typename T, bool VEC>
struct MmaTile {
  using Acc = float;
  static constexpr int BM = Cfg::BM, BN = Cfg::BN, BK = Cfg::BK, STAGES = Cfg::STAGES;
  static constexpr int WARPS_M = Cfg::WARPS_M, WARPS_N = Cfg::WARPS_N;
  static constexpr int THREADS = 32 * WARPS_M * WARPS_N;
  static constexpr int MIN_BLOCKS = Cfg::MIN_BLOCKS;
  static constexpr int WM = BM / WARPS_M, WN = BN / WARPS_N;  // warp tile
  static constexpr int MI = WM / 16, NI = WN / 8;             // mma tiles per warp
  // Row padding of 8 halves (16 bytes): the 8 rows an ldmatrix phase reads are 16 bytes
  // apart modulo 128, so they hit distinct bank quads (conflict-free), and every row
  // start stays 16-byte aligned for cp.async / ldmatrix.
  static constexpr int LDA_S = BM + 8, LDB_S = BN + 8;
  static constexpr int A_STAGE = BK * LDA_S, B_STAGE = BK * LDB_S;  // elements
  static constexpr int LDC = BN + 1;  // staged fp32 tile row stride (odd: conflict-free columns)
  static constexpr size_t PIPE_BYTES = size_t(STAGES) * (A_STAGE + B_STAGE) * sizeof(uint16_t);
  static constexpr size_t STAGE_BYTES = size_t(BM) * LDC * sizeof(float);
  static constexpr size_t SMEM_BYTES = PIPE_BYTES > STAGE_BYTES ? PIPE_BYTES : STAGE_BYTES;
  static_assert(WM % 16 == 0 && WN % 16 == 0, "warp tile must be a multiple of 16 x 16");
  static_assert(BM % 8 == 0 && BN % 8 == 0, "tile widths must be multiples of 8");
  static_assert((BK * (BM / 8)) % THREADS == 0 && (BK * (BN / 8)) % THREADS == 0,
                "loader assumes whole chunks per thread");
  static_assert(STAGES >= 2, "need at least double buffering");
  static_assert(BK % 16 == 0, "BK must be a multiple of the mma K (16)");

  float acc[MI][NI][4];

  // Load a BK x COLS tile (rows tk.., columns c0..) of src into shared memory dst (row
  // stride LDS elements), zero-filling invalid rows / masked rows / columns >= ncols.
  template <int COLS, int LDS>
  __device__ __forceinline__ static void load_tile(uint16_t* dst, const T* src, int64_t ld, int64_t ncols,
                                                   int64_t c0, const uint8_t* mask, int64_t tk,
                                                   int64_t t_end) {
    constexpr int CPR = COLS / 8;  // 8-element (16-byte) chunks per row
    constexpr int ITERS = BK * CPR / THREADS;
#pragma unroll
    for (int it = 0; it < ITERS; ++it) {
      const int c = it * THREADS + static_cast<int>(threadIdx.x);
      const int row = c / CPR, cc = c % CPR;
      const int64_t t = tk + row;
      const int64_t col = c0 + int64_t(cc) * 8;
      const bool row_ok = t < t_end && (mask == nullptr || mask[t] != 0);
      uint16_t* s = dst + row * LDS + cc * 8;
      if constexpr (VEC) {
        // VEC contract: ncols % 8 == 0, ld % 8 == 0, src 16-byte aligned -> whole chunks.
        const bool valid = row_ok && col < ncols;
        const T* gp = valid ? src + t * ld + col : src;
        cp_async16(s, gp, valid);
      } else {
        const uint16_t* gp = reinterpret_cast<const uint16_t*>(src) + t * ld + col;
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          s[e] = (row_ok && col + e < ncols) ? __ldg(gp + e) : uint16_t(0);
        }
      }
    }
  }

  // VEC fast loader: a thread always copies the same 16-byte column chunk of rows
  // row0 + it * RSTEP, so all addressing is set up once per tile and a pipeline stage costs
  // a pointer bump and a bounds test per cp.async. Stages must be loaded in order 0, 1, 2, ...
  template <int COLS, int LDS>
  struct VecLoader {
    static constexpr int CPR = COLS / 8;
    static constexpr int ITERS = BK * CPR / THREADS;
    static constexpr int RSTEP = THREADS / CPR;
    static_assert(THREADS % CPR == 0, "a thread keeps one column chunk");
    const T* src;   // any valid address (used for zero-filled chunks)
    const T* ptr;   // row (next stage's first row + row0), this thread's column chunk
    int64_t bk_ld, rstep_ld;
    int64_t trow;   // t of that row
    int soff0;
    bool col_ok;
    __device__ __forceinline__ void init(const T* src_, int64_t ld, int64_t ncols, int64_t c0, int64_t t_begin) {
      const int tid = threadIdx.x;
      const int row0 = tid / CPR, cc = tid % CPR;
      const int64_t col = c0 + int64_t(cc) * 8;
      src = src_;
      col_ok = col < ncols;
      ptr = col_ok ? src_ + (t_begin + row0) * ld + col : src_;
      bk_ld = col_ok ? int64_t(BK) * ld : 0;
      rstep_ld = col_ok ? int64_t(RSTEP) * ld : 0;
      trow = t_begin + row0;
      soff0 = row0 * LDS + cc * 8;
    }
    // Mask bytes of the next stage's rows (0 past t_end); only used with a mask.
    __device__ __forceinline__ void fetch_mask(uint8_t (&mk)[ITERS], const uint8_t* mask, int64_t t_end) const {
#pragma unroll
      for (int it = 0; it < ITERS; ++it) {
        const int64_t t = trow + it * RSTEP;
        mk[it] = t < t_end ? mask[t] : uint8_t(0);
      }
    }
    template <bool MASK>
    __device__ __forceinline__ void load_next(uint16_t* dst, int64_t t_end, const uint8_t (&mk)[ITERS]) {
#pragma unroll
      for (int it = 0; it < ITERS; ++it) {
        const int64_t t = trow + it * RSTEP;
        const bool valid = col_ok && t < t_end && (!MASK || mk[it] != 0);
        const T* gp = valid ? ptr + it * rstep_ld : src;
        cp_async16(dst + soff0 + it * RSTEP * LDS, gp, valid);
      }
      ptr += bk_ld;
      trow += BK;
    }
  };

  __device__ __forceinline__ void compute_stage(const uint16_t* As, const uint16_t* Bs, int wm0, int wn0) {
    const int lane = threadIdx.x & 31;
#pragma unroll
    for (int kk = 0; kk < BK; kk += 16) {
      uint32_t af[MI][4];
      uint32_t bfr[NI][2];
      // A fragment (16 x 16, row-major in registers) from As[k][m] via .trans: matrix q of
      // the x4 load covers m offset (q & 1) * 8, k offset (q >> 1) * 8.
#pragma unroll
      for (int mi = 0; mi < MI; ++mi) {
        const int k = kk + (lane & 7) + ((lane >> 4) & 1) * 8;
        const int m = wm0 + mi * 16 + ((lane >> 3) & 1) * 8;
        ldmatrix_x4_trans(af[mi], As + k * LDA_S + m);
      }
      // B fragments (16 x 8, "col") for two n8 tiles per x4 load from Bs[k][n] via .trans:
      // matrix q covers k offset (q & 1) * 8, n offset (q >> 1) * 8.
#pragma unroll
      for (int ni = 0; ni < NI; ni += 2) {
        const int k = kk + (lane & 7) + ((lane >> 3) & 1) * 8;
        const int n = wn0 + ni * 8 + (lane >> 4) * 8;
        uint32_t r[4];
        ldmatrix_x4_trans(r, Bs + k * LDB_S + n);
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

  // Pipelined main loop of the VEC path. Same commit-group accounting as the scalar path
  // below (one group per stage, empty groups included). Without a mask the next stage is
  // issued before the math; with a mask its row bytes are fetched before the math and the
  // copies issued after it, so the mask load latency hides behind the mma work.
  template <bool MASK, class LA, class LB>
  __device__ __forceinline__ void mainloop_vec(LA& la, LB& lb, const uint8_t* mask, int64_t t_end, int64_t nk,
                                               uint16_t* As, uint16_t* Bs, int wm0, int wn0) {
    uint8_t mka[LA::ITERS] = {}, mkb[LB::ITERS] = {};
#pragma unroll
    for (int s = 0; s < STAGES - 1; ++s) {
      if (s < nk) {
        if (MASK) {
          la.fetch_mask(mka, mask, t_end);
          lb.fetch_mask(mkb, mask, t_end);
        }
        la.template load_next<MASK>(As + s * A_STAGE, t_end, mka);
        lb.template load_next<MASK>(Bs + s * B_STAGE, t_end, mkb);
      }
      cp_async_commit();
    }
    for (int64_t kt = 0; kt < nk; ++kt) {
      cp_async_wait<STAGES - 2>();
      __syncthreads();  // stage kt landed for all threads; stage (kt-1) % STAGES is free
      const int64_t next = kt + STAGES - 1;
      const int sn = static_cast<int>(next % STAGES);
      const int s = static_cast<int>(kt % STAGES);
      if (!MASK) {
        if (next < nk) {
          la.template load_next<false>(As + sn * A_STAGE, t_end, mka);
          lb.template load_next<false>(Bs + sn * B_STAGE, t_end, mkb);
        }
        cp_async_commit();
        compute_stage(As + s * A_STAGE, Bs + s * B_STAGE, wm0, wn0);
      } else {
        if (next < nk) {
          la.fetch_mask(mka, mask, t_end);
          lb.fetch_mask(mkb, mask, t_end);
        }
        compute_stage(As + s * A_STAGE, Bs + s * B_STAGE, wm0, wn0);
        if (next < nk) {
          la.template load_next<true>(As + sn * A_STAGE, t_end, mka);
          lb.template load_next<true>(Bs + sn * B_STAGE, t_end, mkb);
        }
        cp_async_commit();
      }
    }
  }

  // acc = A[t_begin:t_end, m0:m0+BM]^T B[t_begin:t_end, n0:n0+BN]. Ends with all cp.async
  // traffic drained and a __syncthreads(), so the caller may reuse smem at once.
  __device__ __forceinline__ void run(const T* A, int64_t lda, int64_t M, const T* B, int64_t ldb, int64_t N,
                                      const uint8_t* mask, int64_t t_begin, int64_t t_end, int64_t m0,
                                      int64_t n0, unsigned char* smem) {
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
      for (int ni = 0; ni < NI; ++ni)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[mi][ni][e] = 0.f;

    uint16_t* As = reinterpret_cast<uint16_t*>(smem);
    uint16_t* Bs = As + STAGES * A_STAGE;
    const int warp = threadIdx.x >> 5;
    const int wm0 = (warp / WARPS_N) * WM, wn0 = (warp % WARPS_N) * WN;
    const int64_t nk = t_end > t_begin ? ceil_div_dev(t_end - t_begin, BK) : 0;

    if constexpr (VEC) {
      VecLoader<BM, LDA_S> la;
      VecLoader<BN, LDB_S> lb;
      la.init(A, lda, M, m0, t_begin);
      lb.init(B, ldb, N, n0, t_begin);
      if (mask == nullptr)
        mainloop_vec<false>(la, lb, mask, t_end, nk, As, Bs, wm0, wn0);
      else
        mainloop_vec<true>(la, lb, mask, t_end, nk, As, Bs, wm0, wn0);
    } else {
      // Prologue: stages 0 .. STAGES-2 in flight (one commit group per stage, even if empty).
#pragma unroll
      for (int s = 0; s < STAGES - 1; ++s) {
        if (s < nk) {
          const int64_t tk = t_begin + int64_t(s) * BK;
          load_tile<BM, LDA_S>(As + s * A_STAGE, A, lda, M, m0, mask, tk, t_end);
          load_tile<BN, LDB_S>(Bs + s * B_STAGE, B, ldb, N, n0, mask, tk, t_end);
        }
        cp_async_commit();
      }
      for (int64_t kt = 0; kt < nk; ++kt) {
        // Groups committed so far: STAGES-1+kt; allowing STAGES-2 pending => tile kt landed
        // (for this thread); the barrier makes every thread's copies visible and guarantees
        // that all warps finished computing on the stage we are about to overwrite (kt-1).
        cp_async_wait<STAGES - 2>();
        __syncthreads();
        const int64_t next = kt + STAGES - 1;
        if (next < nk) {
          const int s = static_cast<int>(next % STAGES);
          const int64_t tk = t_begin + next * BK;
          load_tile<BM, LDA_S>(As + s * A_STAGE, A, lda, M, m0, mask, tk, t_end);
          load_tile<BN, LDB_S>(Bs + s * B_STAGE, B, ldb, N, n0, mask, tk, t_end);
        }
        cp_async_commit();
        const int s = static_cast<int>(kt % STAGES);
        compute_stage(As + s * A_STAGE, Bs + s * B_STAGE, wm0, wn0);
      }
    }
    cp_async_wait<0>();
    __syncthreads();
  }

  // Cs[r * LDC + c] = acc (the whole BM x BN tile, fp32).
  __device__ __forceinline__ void stage(float* Cs) const {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
    const int wm0 = (warp / WARPS_N) * WM, wn0 = (warp % WARPS_N) * WN;
    const int g = lane >> 2, t4 = lane & 3;
#pragma unroll
    for (int mi = 0; mi < MI; ++mi)
#pragma unroll
      for (int ni = 0; ni < NI; ++ni) {
        const int r = wm0 + mi * 16 + g, c = wn0 + ni * 8 + 2 * t4;
        Cs[r * LDC + c] = acc[mi][ni][0];
        Cs[r * LDC + c + 1] = acc[mi][ni][1];
        Cs[(r + 8) * LDC + c] = acc[mi][ni][2];
        Cs[(r + 8) * LDC + c + 1] = acc[mi][ni][3];
      }
  }

  __device__ __forceinline__ static int64_t ceil_div_dev(int64_t a, int64_t b) { return (a + b - 1) / b; }
};

// ------------------------------------------------------------------ SIMT engine

template <typename T, typename AccT>
struct SimtTile {
  using Acc = AccT;
  static constexpr int BM = 64, BN = 64, BK = 16, THREADS = 256, MIN_BLOCKS = 1;
  static constexpr int TM = 4, TN = 4;  // outputs per thread: rows ty*4.., columns tx*4..
  static constexpr int LDC = BN + 1;
  static constexpr size_t PIPE_BYTES = size_t(BK) * (BM + BN) * sizeof(Acc);
  static constexpr size_t STAGE_BYTES = size_t(BM) * LDC * sizeof(Acc);
  static constexpr size_t SMEM_BYTES = PIPE_BYTES > STAGE_BYTES ? PIPE_BYTES : STAGE_BYTES;

  Acc acc[TM][TN];

  template <int COLS>
  __device__ __forceinline__ static void load_tile(Acc* dst, const T* src, int64_t ld, int64_t ncols, int64_t c0,
                                                   const uint8_t* mask, int64_t tk, int64_t t_end) {
    constexpr int ITERS = BK * COLS / THREADS;
#pragma unroll
    for (int it = 0; it < ITERS; ++it) {
      const int e = it * THREADS + static_cast<int>(threadIdx.x);
      const int row = e / COLS, col = e % COLS;
      const int64_t t = tk + row, gc = c0 + col;
      const bool valid = t < t_end && gc < ncols && (mask == nullptr || mask[t] != 0);
      dst[row * COLS + col] = valid ? to_acc<Acc>(ldg(src + t * ld + gc)) : Acc(0);
    }
  }

  __device__ __forceinline__ void run(const T* A, int64_t lda, int64_t M, const T* B, int64_t ldb, int64_t N,
                                      const uint8_t* mask, int64_t t_begin, int64_t t_end, int64_t m0,
                                      int64_t n0, unsigned char* smem) {
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) acc[i][j] = Acc(0);
    Acc* As = reinterpret_cast<Acc*>(smem);
    Acc* Bs = As + BK * BM;
    const int tx = threadIdx.x % (BN / TN), ty = threadIdx.x / (BN / TN);
    for (int64_t tk = t_begin; tk < t_end; tk += BK) {
      load_tile<BM>(As, A, lda, M, m0, mask, tk, t_end);
      load_tile<BN>(Bs, B, ldb, N, n0, mask, tk, t_end);
      __syncthreads();
#pragma unroll
      for (int kk = 0; kk < BK; ++kk) {
        Acc a[TM], b[TN];
#pragma unroll
        for (int i = 0; i < TM; ++i) a[i] = As[kk * BM + ty * TM + i];
#pragma unroll
        for (int j = 0; j < TN; ++j) b[j] = Bs[kk * BN + tx * TN + j];
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
          for (int j = 0; j < TN; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);
      }
      __syncthreads();
    }
  }

  __device__ __forceinline__ void stage(Acc* Cs) const {
    const int tx = threadIdx.x % (BN / TN), ty = threadIdx.x / (BN / TN);
#pragma unroll
    for (int i = 0; i < TM; ++i)
#pragma unroll
      for (int j = 0; j < TN; ++j) Cs[(ty * TM + i) * LDC + tx * TN + j] = acc[i][j];
  }
};

// ------------------------------------------------------------------ shared epilogues

// out[i][j] (+)= alpha * Cs[r][c] for the BM x BN tile at (m0, n0), rows < M, cols < N.
// Row-major pass: consecutive threads write consecutive j (coalesced).
template <int BM, int BN, int LDC, int THREADS, typename Acc>
__device__ __forceinline__ void epilogue_rect(Acc* out, int64_t ldo, int64_t M, int64_t N, int64_t m0,
                                              int64_t n0, const Acc* Cs, Acc alpha, bool atomic) {
  if (atomic) {
    for (int e = threadIdx.x; e < BM * BN; e += THREADS) {
      const int r = e / BN, c = e % BN;
      const int64_t i = m0 + r, j = n0 + c;
      if (i < M && j < N) atomicAdd(out + i * ldo + j, alpha * Cs[r * LDC + c]);
    }
    return;
  }
  // Batches of U independent read-modify-writes: all loads issued before the first store
  // (the compiler may not reorder them itself: out could alias).
  constexpr int U = 8;
  for (int e0 = threadIdx.x; e0 < BM * BN; e0 += THREADS * U) {
    Acc old[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int e = e0 + u * THREADS;
      const int r = e / BN, c = e % BN;
      const int64_t i = m0 + r, j = n0 + c;
      if (e < BM * BN && i < M && j < N) old[u] = out[i * ldo + j];
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int e = e0 + u * THREADS;
      const int r = e / BN, c = e % BN;
      const int64_t i = m0 + r, j = n0 + c;
      if (e < BM * BN && i < M && j < N) out[i * ldo + j] = old[u] + alpha * Cs[r * LDC + c];
    }
  }
}

// Symmetric update of the tile at rows i0.., cols j0.. (i0 <= j0; i0 == j0 is a diagonal
// tile): S[i][j] += alpha * Cs[r][c] for i <= j, then S[j][i] = S[i][j] (exact mirror).
// Pass 1 is coalesced along j and leaves the NEW value in Cs; pass 2 reads Cs down a
// column (LDC odd: conflict-free) and writes the mirrored row coalesced along i. Only the
// block owning tile (bi, bj) touches rows bi x cols bj and rows bj x cols bi, so no two
// blocks write the same element. Lower-triangle values of a diagonal tile are ignored.
template <int BM, int BN, int LDC, int THREADS, typename Acc>
__device__ __forceinline__ void epilogue_sym(Acc* S, int64_t lds, int64_t d, int64_t i0, int64_t j0, Acc* Cs,
                                             Acc alpha) {
  const bool diag = (i0 == j0);
  constexpr int U = 8;  // batches of independent read-modify-writes (see epilogue_rect)
  for (int e0 = threadIdx.x; e0 < BM * BN; e0 += THREADS * U) {
    Acc old[U];
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int e = e0 + u * THREADS;
      const int r = e / BN, c = e % BN;
      const int64_t i = i0 + r, j = j0 + c;
      if (e < BM * BN && i < d && j < d && (!diag || r <= c)) old[u] = S[i * lds + j];
    }
#pragma unroll
    for (int u = 0; u < U; ++u) {
      const int e = e0 + u * THREADS;
      const int r = e / BN, c = e % BN;
      const int64_t i = i0 + r, j = j0 + c;
      if (e < BM * BN && i < d && j < d && (!diag || r <= c)) {
        const Acc v = old[u] + alpha * Cs[r * LDC + c];
        S[i * lds + j] = v;
        Cs[r * LDC + c] = v;
      }
    }
  }
  __syncthreads();
  for (int e = threadIdx.x; e < BM * BN; e += THREADS) {
    const int c = e / BM, r = e % BM;
    const int64_t i = i0 + r, j = j0 + c;
    if (i < d && j < d && (!diag || r < c)) S[j * lds + i] = Cs[r * LDC + c];
  }
}

// Split-T variant: several blocks add into the same upper-triangle elements with atomics;
// the lower triangle is written afterwards by mirror_lower_kernel (cov.cu).
template <int BM, int BN, int LDC, int THREADS, typename Acc>
__device__ __forceinline__ void epilogue_sym_atomic(Acc* S, int64_t lds, int64_t d, int64_t i0, int64_t j0,
                                                    const Acc* Cs, Acc alpha) {
  const bool diag = (i0 == j0);
  for (int e = threadIdx.x; e < BM * BN; e += THREADS) {
    const int r = e / BN, c = e % BN;
    const int64_t i = i0 + r, j = j0 + c;
    if (i < d && j < d && (!diag || r <= c)) atomicAdd(S + i * lds + j, alpha * Cs[r * LDC + c]);
  }
}

}  // namespace cuda
}  // namespace sketchprune
