// sketchprune CPU: sparse-sign sketches (S defined by common/sketch_hash.h).
//
// Both ops run one engine: rows of S in chunks; per chunk the (column, value) pairs of all k
// nonzeros of every row are hashed once into a shared table (parallel), then OpenMP
// (dynamic) over work items = (tile of 16 samples) x chunk: the item's 16 input rows (g
// rows, or per-sample gradient slabs G_n built on the fly) are scattered with 16-wide vector
// FMAs into a private m x 16 accumulator (L1/L2 resident), which is then added (transposed)
// into out.  With fewer tiles than threads, several chunks run concurrently and their
// partials are added in chunk order, so results never depend on N or the thread count.
#include "cpu/cpu_common.h"

#include "cpu/cpu_ops.h"

namespace sketchprune {
namespace cpu {
namespace {

constexpr int kLanes = 16;

// Points rows[s] at the float32 values of lane s's source row src(s) (len values): the row
// itself when the source is float32, else its conversion into scratch + s * stride.  Lanes
// s >= ns (past the last sample) point at `zeros`.
template <class Src>
inline void lane_rows(const float* rows[kLanes], int64_t ns, const float* zeros, int dtype, int64_t len,
                      float* scratch, int64_t stride, Src src) {
  for (int64_t s = 0; s < kLanes; ++s) {
    if (s >= ns) {
      rows[s] = zeros;
      continue;
    }
    const char* p = src(s);
    if (dtype == kFloat32) {
      rows[s] = reinterpret_cast<const float*>(p);
    } else {
      float* d = scratch + s * stride;
      convert_row<float>(p, dtype, len, d);
      rows[s] = d;
    }
  }
}
// outer_sketch: up to this T, G is formed in the vector lanes (outer_scatter16); above it, by
// per-sample GEMM slabs.
constexpr int64_t kLaneGemmMaxT = 64;

// The k nonzeros of S rows, hashed in bulk.  Columns come from sketch_hash() and
// block_start() of common/sketch_hash.h; the only thing done differently from sketch_entry()
// is the modulo: (H >> 32) < 2^32 and width_t < 2^31, so it is computed with Lemire's exact
// 32-bit fastmod (two multiplies) instead of a 64-bit divide (~5x faster hashing).  The
// constructor compares the fast path with sketch_entry() on 64 rows x k and falls back to
// sketch_entry() itself if they ever disagree (e.g. if the definition of S changes).  Runs of
// rows go to the kernel table's vectorised hash_rows when it has one (AVX-512: 8 nonzeros per
// vector, ~4x faster), checked the same way against sketch_entry() on 64 rows.  (An AVX2 port,
// 4 nonzeros per vector with the 64-bit products emulated, measured no faster than the scalar
// path: 0.99-1.03x on sparse_sign_sketch and outer_sketch; AVX2 keeps the scalar path.)
class RowHasher {
 public:
  RowHasher(int64_t seed, int64_t m, int64_t k)
      : seed_mixed_(mix64(static_cast<uint64_t>(seed))), m_(m), k_(k),
        scale_(static_cast<float>(1.0 / std::sqrt(static_cast<double>(k)))) {
    std::memcpy(&scale_bits_, &scale_, sizeof scale_bits_);
    for (int64_t t = 0; t < k; ++t) {
      const int64_t st = block_start(t, m, k), w = block_start(t + 1, m, k) - st;
      start_.push_back(static_cast<int32_t>(st));
      width_.push_back(static_cast<uint32_t>(w));
      magic_.push_back(~uint64_t(0) / static_cast<uint64_t>(w) + 1);
    }
#if defined(__SIZEOF_INT128__)
    fast_ = true;
    std::vector<SketchEntry> a(static_cast<size_t>(k)), b(static_cast<size_t>(k));
    for (uint64_t j = 0; j < 64 && fast_; ++j) {
      const uint64_t row = j * 0x9E3779B97F4A7C15ull;  // spread over the 64-bit range
      fill_fast(row, a.data());
      fill_exact(row, b.data());
      for (int64_t t = 0; t < k; ++t) fast_ = fast_ && a[t].off == b[t].off && a[t].val == b[t].val;
    }
#endif
    consts_ = HashConsts{seed_mixed_, k_, start_.data(), width_.data(), magic_.data(), scale_bits_};
    // the vector path puts a row's k nonzeros in the lanes: for k < 3 most lanes would idle
    // and the scalar path is faster (measured at k = 1: 0.8x)
    vec_ = k >= 3 ? kernels().hash_rows : nullptr;
    if (vec_ != nullptr) {
      constexpr int64_t n = 64;
      std::vector<uint64_t> rows(n);
      for (int64_t j = 0; j < n; ++j) rows[j] = static_cast<uint64_t>(j) * 0x9E3779B97F4A7C15ull + 7;
      std::vector<SketchEntry> a(static_cast<size_t>(n * k)), b(static_cast<size_t>(k));
      vec_(consts_, rows.data(), n, a.data());
      for (int64_t j = 0; j < n && vec_ != nullptr; ++j) {
        fill_exact(rows[j], b.data());
        for (int64_t t = 0; t < k; ++t)
          if (a[j * k + t].off != b[t].off || a[j * k + t].val != b[t].val) vec_ = nullptr;
      }
    }
  }
  const char* path() const { return vec_ != nullptr ? "vector" : fast_ ? "fast" : "exact"; }
  // e[i*k .. i*k + k) = the nonzeros of global row rows[i], for i < n.
  void fill_rows(const uint64_t* rows, int64_t n, SketchEntry* e) const {
    if (vec_ != nullptr) {
      vec_(consts_, rows, n, e);
      return;
    }
    for (int64_t i = 0; i < n; ++i) fill(rows[i], e + i * k_);
  }
  // e[0..k) = the nonzeros of global row j.
  void fill(uint64_t j, SketchEntry* e) const {
    if (fast_)
      fill_fast(j, e);
    else
      fill_exact(j, e);
  }

 private:
  void fill_exact(uint64_t j, SketchEntry* e) const {
    for (int64_t t = 0; t < k_; ++t) {
      int64_t col;
      float sign;
      sketch_entry(seed_mixed_, j, t, m_, k_, &col, &sign);
      e[t] = SketchEntry{static_cast<int32_t>(col * kLanes), sign * scale_};
    }
  }
  void fill_fast(uint64_t j, SketchEntry* e) const {
#if defined(__SIZEOF_INT128__)
    for (int64_t t = 0; t < k_; ++t) {
      const uint64_t h = sketch_hash(seed_mixed_, j, static_cast<uint64_t>(t));
      const uint64_t lowbits = magic_[t] * static_cast<uint32_t>(h >> 32);
      const uint32_t rem =
          static_cast<uint32_t>((static_cast<unsigned __int128>(lowbits) * width_[t]) >> 64);
      // sign without a branch (it is a coin flip): flip the sign bit of +1/sqrt(k)
      const uint32_t vbits = scale_bits_ ^ (static_cast<uint32_t>(h & 1ull) << 31);
      e[t] = SketchEntry{(start_[t] + static_cast<int32_t>(rem)) * static_cast<int32_t>(kLanes),
                         bits_to_float(vbits)};
    }
#else
    fill_exact(j, e);
#endif
  }
  uint64_t seed_mixed_;
  int64_t m_, k_;
  float scale_;
  uint32_t scale_bits_;
  bool fast_ = false;
  std::vector<int32_t> start_;
  std::vector<uint32_t> width_;
  std::vector<uint64_t> magic_;
  HashConsts consts_;
  HashRows vec_ = nullptr;
};

// The engine walks R logical rows in chunks of `chunk`; logical row L is row offset + p(L) of
// S, p a bijection of [0, R) (the identity unless the caller orders S's rows otherwise), given
// by row(L0, n, rows): rows[i] = p(L0 + i) for i < n (a run at a time, so a map can step
// through its coordinates instead of dividing per row).
// Process(tile, i0, len, tab, acc, tid): add logical rows [i0, i0+len) of S (their nonzeros in
// tab, len x k) times the matching inputs of the tile's 16 samples into acc (m x 16,
// lane-minor).
struct IdentityRows {
  void operator()(int64_t L0, int64_t n, uint64_t* rows) const {
    for (int64_t i = 0; i < n; ++i) rows[i] = static_cast<uint64_t>(L0 + i);
  }
};
constexpr int64_t kHashRun = 256;
template <class Process, class RowMap = IdentityRows>
void sketch_engine(float* out, int64_t N, int64_t R, int64_t m, int64_t k, int64_t seed,
                   int64_t offset, bool accumulate, int64_t chunk, Process&& process,
                   const RowMap& row = RowMap()) {
  if (N == 0) return;
  if (R == 0) {
    if (!accumulate) std::memset(out, 0, sizeof(float) * static_cast<size_t>(N * m));
    return;
  }
  // Batch/thread invariance: every sample's result is sum over chunks (in order) of its
  // chunk partial, each partial summed over the chunk's rows in order; chunk depends only on
  // the sizes of S, never on N or the thread count.  With fewer tiles than threads, `nc`
  // chunks are processed concurrently and their partials added in chunk order afterwards.
  const int64_t nt = max_threads();
  const int64_t ntiles = ceil_div(N, kLanes);
  const int64_t nchunks = ceil_div(R, chunk);
  const int64_t nc = ntiles >= nt ? 1 : std::min({ceil_div(nt, ntiles), nchunks, int64_t(8)});
  const RowHasher hasher(seed, m, k);

  Scratch<SketchEntry> table(std::min(nc * chunk, R) * k);
  Scratch<float> accs(nt * m * kLanes);
  Scratch<float> parts(nc > 1 ? ntiles * nc * m * kLanes : 0);
  SketchEntry* tab = table.data();

#pragma omp parallel
  {
    const int tid = thread_num();
    float* acc = accs.data() + tid * m * kLanes;
    for (int64_t c0 = 0; c0 < R; c0 += nc * chunk) {  // a round of up to nc chunks
      const int64_t len = std::min(nc * chunk, R - c0);
      const int64_t ncr = ceil_div(len, chunk);
#pragma omp for schedule(static)
      for (int64_t b = 0; b < len; b += kHashRun) {
        uint64_t rows[kHashRun];
        const int64_t nb = std::min(kHashRun, len - b);
        row(c0 + b, nb, rows);
        for (int64_t i = 0; i < nb; ++i) rows[i] += static_cast<uint64_t>(offset);
        hasher.fill_rows(rows, nb, tab + b * k);
      }
#pragma omp for schedule(dynamic, 1)
      for (int64_t it = 0; it < ntiles * ncr; ++it) {
        const int64_t tile = it / ncr, ch = it % ncr;
        const int64_t s0 = ch * chunk, s1 = std::min(len, s0 + chunk);
        std::memset(acc, 0, sizeof(float) * static_cast<size_t>(m * kLanes));
        process(tile, c0 + s0, s1 - s0, tab + s0 * k, acc, tid);
        if (nc > 1) {
          std::memcpy(parts.data() + it * m * kLanes, acc, sizeof(float) * m * kLanes);
          continue;
        }
        const int64_t n0 = tile * kLanes, ns = std::min<int64_t>(kLanes, N - n0);
        const bool set = (c0 == 0) && !accumulate;
        for (int64_t s = 0; s < ns; ++s) {
          float* o = out + (n0 + s) * m;
          if (set)
            for (int64_t c = 0; c < m; ++c) o[c] = acc[c * kLanes + s];
          else
            for (int64_t c = 0; c < m; ++c) o[c] += acc[c * kLanes + s];
        }
      }
      if (nc > 1) {
#pragma omp for schedule(static)
        for (int64_t n = 0; n < N; ++n) {
          const int64_t tile = n / kLanes, s = n % kLanes;
          float* o = out + n * m;
          for (int64_t ch = 0; ch < ncr; ++ch) {
            const float* p = parts.data() + (tile * ncr + ch) * m * kLanes + s;
            if (c0 == 0 && ch == 0 && !accumulate)
              for (int64_t c = 0; c < m; ++c) o[c] = p[c * kLanes];
            else
              for (int64_t c = 0; c < m; ++c) o[c] += p[c * kLanes];
          }
        }
      }
    }
  }
}

int64_t sketch_chunk_rows(int64_t k) {
  return std::max<int64_t>(1024, std::min<int64_t>(16384, (int64_t(1) << 17) / k));
}

}  // namespace

const char* row_hash_path(int64_t seed, int64_t m, int64_t k) { return RowHasher(seed, m, k).path(); }

// ---------------------------------------------------------------------------------------
// sparse_sign_sketch: out (N x m fp32, contiguous) (+)= g @ S, g N x r (fp32|fp16|bf16, row
// stride ldg), row i of g meets S row offset+i.  N*r*k lane-FMAs + one read of g:
// N=512, r=1e5, m=512, k=8 -> 4.1e8 FMAs, 205 MB read (vs 5.2e10 flops for dense g @ S).
void sparse_sign_sketch(float* out, const void* g, int g_dtype, int64_t N, int64_t r, int64_t ldg,
                        int64_t m, int64_t k, int64_t seed, int64_t offset, bool accumulate) {
  const int64_t step = 2048;
  const int64_t nt = max_threads();
  std::vector<float> zeros(static_cast<size_t>(step), 0.f);
  Scratch<float> conv(g_dtype == kFloat32 ? 0 : nt * kLanes * step);
  const int64_t es = dtype_size(g_dtype);
  const char* gb = static_cast<const char*>(g);
  const KernelTable& K = kernels();
  auto process = [&](int64_t tile, int64_t i0, int64_t len, const SketchEntry* tab, float* acc,
                     int tid) {
    const int64_t n0 = tile * kLanes, ns = std::min<int64_t>(kLanes, N - n0);
    const float* rows[kLanes];
    for (int64_t b0 = 0; b0 < len; b0 += step) {  // blocks of `step` rows (bounded buffers)
      const int64_t l = std::min(step, len - b0);
      lane_rows(rows, ns, zeros.data(), g_dtype, l, conv.data() + tid * kLanes * step, step,
                [&](int64_t s) { return gb + ((n0 + s) * ldg + i0 + b0) * es; });
      K.scatter16(rows, l, tab + b0 * k, k, acc);
    }
  };
  sketch_engine(out, N, r, m, k, seed, offset, accumulate, sketch_chunk_rows(k), process);
}

// ---------------------------------------------------------------------------------------
// outer_sketch: out[n] (+)= vec(G_n) @ S with G_n[o, q] = sum_t d[n,t,o] * a[n,t,q] flattened
// row-major (row o*d_in + q of S, offset added); G is never formed in memory.  Per work item
// (16 samples x a chunk of S rows): d of the 16 samples is transposed to Dt[t][o][16] (samples
// in the vector lanes), then per block of qb columns q, a to At[t][q][16], and outer_scatter16
// forms each G entry (o, q) for all 16 samples as sum_t Dt[t][o] * At[t][q] (register-blocked:
// R rows o x Q columns q per step, T loads of R + Q vectors for R*Q*T 16-wide FMAs) and
// scatters it from registers into the accumulator.  A chunk is every row o x a block of
// columns q when d_out < d_in (so the larger a is transposed once per tile, d once per chunk),
// else a block of rows o x every column q.
// Cost: 2*N*T*d_out*d_in flops + N*d_out*d_in*k lane-FMAs, e.g. N=256, T=49, d_in=4608,
// d_out=512, k=8: 59 GFLOP + 4.8 G lane-FMAs.  Used for T <= kLaneGemmMaxT (measured
// 1.2-1.7x faster than the GEMM slabs below at T = 1..49, and slower at T = 128, where the
// slabs' K-depth pays off).  Measured at that shape, N = 256, 1 thread, AVX-512: ~1.5x the
// time of the conv's own forward at k = 1 and ~2.5x at k = 8 (the scatter's ~3 cycles per
// 16-lane read-modify-write is the difference); 4.4x at k = 8 before the column chunks, the
// aligned scratch and the vector row hashing (bench/results/compare-cpu-builds-*).
// Larger T: per sample an oc x d_in GEMM slab d_n[:, o-range]^T a_n (packed micro-kernel), then
// scattered like g rows.
template <class SrcA, class SrcD>
void outer_sketch_gemm(float* out, int64_t N, int64_t T, int64_t d_in, int64_t d_out, int64_t m,
                       int64_t k, int64_t seed, int64_t offset, bool accumulate,
                       int64_t max_chunk, const SrcA& src_a, const SrcD& src_d, int dtype,
                       int64_t lda_t, int64_t ldd_t) {
  const KernelTable& K = kernels();
  const int64_t nt = max_threads();
  // >= 64 rows o per chunk (packing a_n is amortised over them), <= 2^18 rows.
  const int64_t oc = std::min(d_out, std::max<int64_t>(64, 16384 / d_in));
  const int64_t chunk = std::min(oc * d_in, max_chunk);
  int64_t pa_n, pb_n;
  gemm_pack_sizes(K, chunk / d_in, d_in, &pa_n, &pb_n);
  std::vector<float> zeros(static_cast<size_t>(chunk), 0.f);
  Scratch<float> slabs(nt * kLanes * chunk);
  Scratch<float> packs(nt * (pa_n + pb_n));
  auto process = [&](int64_t tile, int64_t i0, int64_t len, const SketchEntry* tab, float* acc,
                     int tid) {
    const int64_t n0 = tile * kLanes, ns = std::min<int64_t>(kLanes, N - n0);
    const int64_t o0 = i0 / d_in, no = len / d_in;  // i0, len are multiples of d_in
    float* pa = packs.data() + tid * (pa_n + pb_n);
    float* pb = pa + pa_n;
    const float* rows[kLanes];
    for (int64_t s = 0; s < kLanes; ++s) {
      if (s >= ns) {
        rows[s] = zeros.data();
        continue;
      }
      float* G = slabs.data() + (tid * kLanes + s) * chunk;
      std::memset(G, 0, sizeof(float) * static_cast<size_t>(len));
      const Src sd{src_d(n0 + s, 0), dtype, ldd_t, o0, no};
      const Src sa{src_a(n0 + s, 0), dtype, lda_t, 0, d_in};
      gemm_serial_f32(K, sd, sa, T, G, d_in, 1.0f, pa, pb);
      rows[s] = G;
    }
    K.scatter16(rows, len, tab, k, acc);
  };
  sketch_engine(out, N, d_in * d_out, m, k, seed, offset, accumulate, chunk, process);
}

void outer_sketch(float* out, const void* a, const void* d, int dtype, int64_t N, int64_t T,
                  int64_t d_in, int64_t d_out, int64_t lda_n, int64_t lda_t, int64_t ldd_n,
                  int64_t ldd_t, int64_t m, int64_t k, int64_t seed, int64_t offset,
                  bool accumulate) {
  const int64_t R = d_in * d_out;
  if (R == 0 || N == 0 || T == 0) {  // G == 0: out = 0 (or unchanged)
    if (N > 0 && !accumulate) std::memset(out, 0, sizeof(float) * static_cast<size_t>(N * m));
    return;
  }
  const KernelTable& K = kernels();
  const int64_t nt = max_threads();
  const int64_t es = dtype_size(dtype);
  const char* ab = static_cast<const char*>(a);
  const char* db = static_cast<const char*>(d);
  auto src_a = [&](int64_t n, int64_t t) { return ab + (n * lda_n + t * lda_t) * es; };
  auto src_d = [&](int64_t n, int64_t t) { return db + (n * ldd_n + t * ldd_t) * es; };
  // Sizes depend on (T, d_in, d_out) only, never on N or the thread count.
  const int64_t max_chunk = std::max<int64_t>(d_in, (int64_t(1) << 18) / d_in * d_in);
  if (T > kLaneGemmMaxT) {
    outer_sketch_gemm(out, N, T, d_in, d_out, m, k, seed, offset, accumulate, max_chunk, src_a,
                      src_d, dtype, lda_t, ldd_t);
    return;
  }
  // Chunks of S rows: when d_out < d_in, a chunk is every row o x a block of qc columns q
  // (logical rows ordered (q, o) within the chunk, through the engine's row map), so a is
  // transposed into the lanes once per tile and only the smaller d once per chunk; otherwise a
  // block of ocm rows o x every column q (identity order: a once per chunk, d once per tile).
  const bool by_col = d_out < d_in && T * d_out * kLanes * 4 <= (int64_t(32) << 20);  // Dt <= 32 MB
  int64_t chunk, ocm, qc;
  if (by_col) {
    qc = std::min(d_in, std::max<int64_t>(1, max_chunk / d_out));
    chunk = qc * d_out;
    ocm = d_out;
  } else {
    ocm = std::min(d_out, std::max<int64_t>(T <= 2 ? 16 : 64, 16384 / d_in));
    chunk = std::min(ocm * d_in, max_chunk);
    ocm = chunk / d_in;
    qc = d_in;
  }
  // q block: At (T x qb x 16 floats) within ~512 KB of L2, a multiple of 48 columns (so of
  // every ISA's out_q); o block: Dt rows handed to one outer_scatter16 call (~256 KB of L2,
  // a multiple of 16 rows, so of every ISA's out_r).
  const int64_t qb = std::min(qc, std::max<int64_t>(96, (int64_t(1) << 13) / T / 48 * 48));
  const int64_t ob = std::max<int64_t>(16, (int64_t(1) << 12) / T / 16 * 16);
  const int64_t wmax = std::max(qb, ocm);
  std::vector<float> zeros(static_cast<size_t>(wmax), 0.f);
  Scratch<float> dts(nt * T * ocm * kLanes);
  Scratch<float> ats(nt * T * qb * kLanes);
  Scratch<float> conv(dtype == kFloat32 ? 0 : nt * kLanes * wmax);
  Scratch<float> lane(nt * kLanes * wmax);
  // Lanes s < ns of rows (n0 + s, t), columns [c0, c0 + w) (zero lanes past ns), as 16-float
  // vectors packed in groups of `grp` columns (the layout of KernelTable::outer_scatter16).
  auto to_lanes = [&](bool is_a, int64_t n0, int64_t ns, int64_t t, int64_t c0, int64_t w,
                      int64_t grp, float* dst, int tid) {
    const float* rows[kLanes];
    lane_rows(rows, ns, zeros.data(), dtype, w, conv.data() + tid * kLanes * wmax, wmax,
              [&](int64_t s) { return (is_a ? src_a(n0 + s, t) : src_d(n0 + s, t)) + c0 * es; });
    float* tmp = lane.data() + tid * kLanes * wmax;
    K.transpose16(rows, w, tmp);
    for (int64_t g0 = 0; g0 < w; g0 += grp) {
      const int64_t wg = std::min(grp, w - g0);
      std::memcpy(dst + (g0 * T + t * wg) * kLanes, tmp + g0 * kLanes,
                  sizeof(float) * static_cast<size_t>(wg * kLanes));
    }
  };
  // Rows [o0, o0 + no) x columns [q_lo, q_hi) of G for the tile's samples; tab: the chunk's
  // nonzeros, entry (o, q) at tab row (o - o0) * ldo + (q - q_lo) * ldq.
  auto block = [&](int64_t n0, int64_t ns, int64_t o0, int64_t no, int64_t q_lo, int64_t q_hi,
                   int64_t ldo, int64_t ldq, const SketchEntry* tab, float* acc, int tid) {
    float* Dt = dts.data() + tid * T * ocm * kLanes;
    float* At = ats.data() + tid * T * qb * kLanes;
    for (int64_t t = 0; t < T; ++t) to_lanes(false, n0, ns, t, o0, no, K.out_r, Dt, tid);
    for (int64_t q0 = q_lo; q0 < q_hi; q0 += qb) {
      const int64_t nq = std::min(qb, q_hi - q0);
      for (int64_t t = 0; t < T; ++t) to_lanes(true, n0, ns, t, q0, nq, K.out_q, At, tid);
      for (int64_t o = 0; o < no; o += ob)
        K.outer_scatter16(Dt + o * T * kLanes, At, T, std::min(ob, no - o), nq, ldo, ldq,
                          tab + (o * ldo + (q0 - q_lo) * ldq) * k, k, acc);
    }
  };
  if (by_col) {
    // Chunk c: columns [c*qc, c*qc + w) x every row o, its logical rows ordered (q, o), the
    // order in which outer_scatter16 walks them (a few sequential streams through tab).
    auto process = [&](int64_t tile, int64_t i0, int64_t len, const SketchEntry* tab, float* acc,
                       int tid) {
      const int64_t n0 = tile * kLanes, ns = std::min<int64_t>(kLanes, N - n0);
      const int64_t q_lo = i0 / chunk * qc;
      block(n0, ns, 0, d_out, q_lo, q_lo + len / d_out, 1, d_out, tab, acc, tid);
    };
    auto row = [&](int64_t L0, int64_t n, uint64_t* rows) {
      const int64_t c = L0 / chunk, j = L0 - c * chunk;
      int64_t q = c * qc + j / d_out, o = j % d_out;  // q: the global column
      int64_t q_end = std::min(d_in, (c + 1) * qc);   // end of chunk c's columns
      for (int64_t i = 0; i < n; ++i) {
        rows[i] = static_cast<uint64_t>(o * d_in + q);
        if (++o == d_out) {
          o = 0;
          if (++q == q_end) q_end = std::min(d_in, q_end + qc);
        }
      }
    };
    sketch_engine(out, N, R, m, k, seed, offset, accumulate, chunk, process, row);
    return;
  }
  auto process = [&](int64_t tile, int64_t i0, int64_t len, const SketchEntry* tab, float* acc,
                     int tid) {
    const int64_t n0 = tile * kLanes, ns = std::min<int64_t>(kLanes, N - n0);
    // i0, len: multiples of d_in (whole rows o)
    block(n0, ns, i0 / d_in, len / d_in, 0, d_in, d_in, 1, tab, acc, tid);
  };
  sketch_engine(out, N, R, m, k, seed, offset, accumulate, chunk, process);
}

}  // namespace cpu
}  // namespace sketchprune
