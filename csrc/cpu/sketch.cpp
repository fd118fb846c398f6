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

#include <atomic>
#include <limits>
#include <stdexcept>

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
  // Rows of S checked against sketch_entry() by each fast path at construction.
  static constexpr int64_t kCheckRows = 64;
  // Heap bytes a RowHasher for k nonzeros per row allocates (at most; all at once): its per-block
  // tables (start_, width_, magic_), the fast-path check (2 x k entries) and the vector-path
  // check (kCheckRows row ids, kCheckRows x k + k entries).
  static int64_t heap_bytes(int64_t k) {
    const int64_t e = sizeof(SketchEntry);
    return k * int64_t(sizeof(int32_t) + sizeof(uint32_t) + sizeof(uint64_t)) + 2 * k * e +
           kCheckRows * int64_t(sizeof(uint64_t)) + (kCheckRows + 1) * k * e;
  }
  RowHasher(int64_t seed, int64_t m, int64_t k)
      : seed_mixed_(mix64(static_cast<uint64_t>(seed))), m_(m), k_(k),
        scale_(static_cast<float>(1.0 / std::sqrt(static_cast<double>(k)))) {
    std::memcpy(&scale_bits_, &scale_, sizeof scale_bits_);
    start_.reserve(static_cast<size_t>(k));
    width_.reserve(static_cast<size_t>(k));
    magic_.reserve(static_cast<size_t>(k));
    for (int64_t t = 0; t < k; ++t) {
      const int64_t st = block_start(t, m, k), w = block_start(t + 1, m, k) - st;
      start_.push_back(static_cast<int32_t>(st));
      width_.push_back(static_cast<uint32_t>(w));
      magic_.push_back(~uint64_t(0) / static_cast<uint64_t>(w) + 1);
    }
#if defined(__SIZEOF_INT128__)
    fast_ = true;
    std::vector<SketchEntry> a(static_cast<size_t>(k)), b(static_cast<size_t>(k));
    for (uint64_t j = 0; j < static_cast<uint64_t>(kCheckRows) && fast_; ++j) {
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
      constexpr int64_t n = kCheckRows;
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

constexpr int64_t kHashRun = 256;

// ---------------------------------------------------------------------------------------
// Workspace plans.  Every buffer the sketch kernels allocate is sized here, once: the kernels
// allocate by these plans and *_workspace_bytes() report their totals (the Python wrappers
// check them against the memory budget before calling the kernel), so the two cannot drift.
// Sizes are element counts; `nt` is the OpenMP team size the kernel runs with.
struct EnginePlan {
  int64_t nt = 1, chunk = 0, ntiles = 0, nchunks = 0, nc = 0;
  // Threads that run work items: each claims a worker slot (its accumulator and the op's
  // per-thread buffers) at its first item, so at most min(nt, items) slots are ever used.
  int64_t workers = 0;
  int64_t table_n = 0;       // SketchEntry: the hashed nonzeros of a round of nc chunks
  int64_t accs_n = 0;        // float: one m x 16 lane accumulator per worker
  int64_t parts_n = 0;       // float: the chunk partials of every tile when nc > 1
  int64_t hasher_bytes = 0;  // RowHasher's own tables and checks
  int64_t bytes() const {
    return table_n * int64_t(sizeof(SketchEntry)) + (accs_n + parts_n) * int64_t(sizeof(float)) +
           hasher_bytes;
  }
};

// The engine for N samples x R logical rows of S in chunks of `chunk` rows.  Batch/thread
// invariance: every sample's result is the sum over chunks (in order) of its chunk partial,
// each partial summed over the chunk's rows in order; chunk depends only on the sizes of S,
// never on N or the thread count.  With fewer tiles than threads, `nc` chunks are processed
// concurrently and their partials added in chunk order afterwards.
EnginePlan plan_engine(int64_t N, int64_t R, int64_t m, int64_t k, int64_t chunk, int64_t nt) {
  EnginePlan p;
  p.nt = nt;
  p.chunk = chunk;
  if (N == 0 || R == 0) return p;  // the engine only writes out (zeros or nothing)
  p.ntiles = ceil_div(N, kLanes);
  p.nchunks = ceil_div(R, chunk);
  p.nc = p.ntiles >= nt ? 1 : std::min({ceil_div(nt, p.ntiles), p.nchunks, int64_t(8)});
  p.workers = std::min(nt, p.ntiles * p.nchunks);
  p.table_n = std::min(p.nc * chunk, R) * k;
  p.accs_n = p.workers * m * kLanes;
  p.parts_n = p.nc > 1 ? p.ntiles * p.nc * m * kLanes : 0;
  p.hasher_bytes = RowHasher::heap_bytes(k);
  return p;
}

int64_t sketch_chunk_rows(int64_t k) {
  return std::max<int64_t>(1024, std::min<int64_t>(16384, (int64_t(1) << 17) / k));
}

// sparse_sign_sketch: the engine plus, per worker, the fp32 conversion of 16 g rows in blocks
// of `step` coordinates (fp16 / bf16 g only) and one shared row of `step` zeros (lanes past N).
struct SketchPlan {
  int64_t step = 2048;
  int64_t zeros_n = 0, conv_n = 0;  // float
  EnginePlan engine;
  int64_t bytes() const { return (zeros_n + conv_n) * int64_t(sizeof(float)) + engine.bytes(); }
};

SketchPlan plan_sparse_sign_sketch(int64_t N, int64_t r, int64_t m, int64_t k, int g_dtype,
                                   int64_t nt) {
  SketchPlan p;
  p.engine = plan_engine(N, r, m, k, sketch_chunk_rows(k), nt);
  if (N == 0 || r == 0) return p;
  p.zeros_n = p.step;
  p.conv_n = g_dtype == kFloat32 ? 0 : p.engine.workers * kLanes * p.step;
  return p;
}

// outer_sketch: see the comment above outer_sketch() for the paths and their buffers.
enum class OuterPath { kEmpty, kGemm, kLanesByCol, kLanesByRow };
struct OuterPlan {
  OuterPath path = OuterPath::kEmpty;
  int64_t chunk = 0;
  int64_t ocm = 0, qc = 0, qb = 0, ob = 0, wmax = 0;  // lane paths: o / q extents of a chunk, blocks
  int64_t pa_n = 0, pb_n = 0;                         // GEMM path: pack buffers per worker
  // float buffers: zero lanes; lane paths: Dt, At, fp32 conversion, transpose staging (per
  // worker); GEMM path: the 16 slabs and the packs (per worker)
  int64_t zeros_n = 0, dts_n = 0, ats_n = 0, conv_n = 0, lane_n = 0, slabs_n = 0, packs_n = 0;
  EnginePlan engine;
  int64_t bytes() const {
    return (zeros_n + dts_n + ats_n + conv_n + lane_n + slabs_n + packs_n) * int64_t(sizeof(float)) +
           engine.bytes();
  }
};

OuterPlan plan_outer_sketch(const KernelTable& K, int64_t N, int64_t T, int64_t d_in,
                            int64_t d_out, int64_t m, int64_t k, int dtype, int64_t nt) {
  OuterPlan p;
  const int64_t R = d_in * d_out;
  if (R == 0 || N == 0 || T == 0) return p;  // G == 0: out = 0 (or unchanged)
  // Sizes depend on (T, d_in, d_out) only, never on N or the thread count.
  const int64_t max_chunk = std::max<int64_t>(d_in, (int64_t(1) << 18) / d_in * d_in);
  if (T > kLaneGemmMaxT) {
    p.path = OuterPath::kGemm;
    // >= 64 rows o per chunk (packing a_n is amortised over them), <= 2^18 rows.
    const int64_t oc = std::min(d_out, std::max<int64_t>(64, 16384 / d_in));
    p.chunk = std::min(oc * d_in, max_chunk);
    gemm_pack_sizes(K, p.chunk / d_in, d_in, &p.pa_n, &p.pb_n);
    p.engine = plan_engine(N, R, m, k, p.chunk, nt);
    const int64_t nw = p.engine.workers;
    p.zeros_n = p.chunk;
    p.slabs_n = nw * kLanes * p.chunk;
    p.packs_n = nw * (p.pa_n + p.pb_n);
    return p;
  }
  // Chunks of S rows: when d_out < d_in, a chunk is every row o x a block of qc columns q
  // (logical rows ordered (q, o) within the chunk, through the engine's row map), so a is
  // transposed into the lanes once per tile and only the smaller d once per chunk; otherwise a
  // block of ocm rows o x every column q (identity order: a once per chunk, d once per tile).
  const bool by_col = d_out < d_in && T * d_out * kLanes * 4 <= (int64_t(32) << 20);  // Dt <= 32 MB
  if (by_col) {
    p.path = OuterPath::kLanesByCol;
    p.qc = std::min(d_in, std::max<int64_t>(1, max_chunk / d_out));
    p.chunk = p.qc * d_out;
    p.ocm = d_out;
  } else {
    p.path = OuterPath::kLanesByRow;
    p.ocm = std::min(d_out, std::max<int64_t>(T <= 2 ? 16 : 64, 16384 / d_in));
    p.chunk = std::min(p.ocm * d_in, max_chunk);
    p.ocm = p.chunk / d_in;
    p.qc = d_in;
  }
  // q block: At (T x qb x 16 floats) within ~512 KB of L2, a multiple of 48 columns (so of
  // every ISA's out_q); o block: Dt rows handed to one outer_scatter16 call (~256 KB of L2,
  // a multiple of 16 rows, so of every ISA's out_r).
  p.qb = std::min(p.qc, std::max<int64_t>(96, (int64_t(1) << 13) / T / 48 * 48));
  p.ob = std::max<int64_t>(16, (int64_t(1) << 12) / T / 16 * 16);
  p.wmax = std::max(p.qb, p.ocm);
  p.engine = plan_engine(N, R, m, k, p.chunk, nt);
  const int64_t nw = p.engine.workers;
  p.zeros_n = p.wmax;
  p.dts_n = nw * T * p.ocm * kLanes;
  p.ats_n = nw * T * p.qb * kLanes;
  p.conv_n = dtype == kFloat32 ? 0 : nw * kLanes * p.wmax;
  p.lane_n = nw * kLanes * p.wmax;
  return p;
}

// The engine walks R logical rows in chunks of P.chunk; logical row L is row offset + p(L) of
// S, p a bijection of [0, R) (the identity unless the caller orders S's rows otherwise), given
// by row(L0, n, rows): rows[i] = p(L0 + i) for i < n (a run at a time, so a map can step
// through its coordinates instead of dividing per row).
// Process(tile, i0, len, tab, acc, w): add logical rows [i0, i0+len) of S (their nonzeros in
// tab, len x k) times the matching inputs of the tile's 16 samples into acc (m x 16,
// lane-minor); w < P.workers: the calling thread's worker slot, for its per-worker buffers.
struct IdentityRows {
  void operator()(int64_t L0, int64_t n, uint64_t* rows) const {
    for (int64_t i = 0; i < n; ++i) rows[i] = static_cast<uint64_t>(L0 + i);
  }
};
template <class Process, class RowMap = IdentityRows>
void sketch_engine(float* out, int64_t N, int64_t R, int64_t m, int64_t k, int64_t seed,
                   int64_t offset, bool accumulate, const EnginePlan& P, Process&& process,
                   const RowMap& row = RowMap()) {
  if (N == 0) return;
  if (R == 0) {
    if (!accumulate) std::memset(out, 0, sizeof(float) * static_cast<size_t>(N * m));
    return;
  }
  const int64_t chunk = P.chunk, ntiles = P.ntiles, nc = P.nc;
  const RowHasher hasher(seed, m, k);

  Scratch<SketchEntry> table(P.table_n);
  Scratch<float> accs(P.accs_n);
  Scratch<float> parts(P.parts_n);
  SketchEntry* tab = table.data();

  std::atomic<int> next_worker{0};

#pragma omp parallel num_threads(static_cast<int>(P.nt))  // the team the plan was made for
  {
    int w = -1;  // this thread's worker slot, claimed at its first work item
    float* acc = nullptr;
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
        if (w < 0) {  // < P.workers: a distinct thread per slot, and at most one per work item
          w = next_worker.fetch_add(1, std::memory_order_relaxed);
          acc = accs.data() + w * m * kLanes;
        }
        std::memset(acc, 0, sizeof(float) * static_cast<size_t>(m * kLanes));
        process(tile, c0 + s0, s1 - s0, tab + s0 * k, acc, w);
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

}  // namespace

const char* row_hash_path(int64_t seed, int64_t m, int64_t k) { return RowHasher(seed, m, k).path(); }

int64_t max_sketch_m() { return std::numeric_limits<int32_t>::max() / kLanes; }

void check_sketch_m(const char* op, int64_t m) {
  if (m <= max_sketch_m()) return;
  // SketchEntry::off holds kLanes * column as an int32, so a larger m would wrap (and the
  // per-thread m x 16 fp32 accumulator alone would take 8 GiB)
  throw std::invalid_argument(
      std::string("sketchprune::") + op + ": m = " + std::to_string(m) +
      " is too large for the 'cpu' backend, which takes m <= " + std::to_string(max_sketch_m()) +
      " (its sketch tables address the m x " + std::to_string(kLanes) +
      " per-thread accumulator with 32-bit offsets); the 'torch' backend (with "
      "sketchprune.use_backend('torch') for CPU tensors) and the CUDA backends take m < 2^31");
}

int64_t sparse_sign_sketch_workspace_bytes(int64_t N, int64_t r, int64_t m, int64_t k,
                                           int g_dtype, int64_t threads) {
  return plan_sparse_sign_sketch(N, r, m, k, g_dtype, threads).bytes();
}

int64_t outer_sketch_workspace_bytes(int64_t N, int64_t T, int64_t d_in, int64_t d_out, int64_t m,
                                     int64_t k, int dtype, int64_t threads) {
  return plan_outer_sketch(kernels(), N, T, d_in, d_out, m, k, dtype, threads).bytes();
}

// ---------------------------------------------------------------------------------------
// sparse_sign_sketch: out (N x m fp32, contiguous) (+)= g @ S, g N x r (fp32|fp16|bf16, row
// stride ldg), row i of g meets S row offset+i.  N*r*k lane-FMAs + one read of g:
// N=512, r=1e5, m=512, k=8 -> 4.1e8 FMAs, 205 MB read (vs 5.2e10 flops for dense g @ S).
void sparse_sign_sketch(float* out, const void* g, int g_dtype, int64_t N, int64_t r, int64_t ldg,
                        int64_t m, int64_t k, int64_t seed, int64_t offset, bool accumulate) {
  const SketchPlan P = plan_sparse_sign_sketch(N, r, m, k, g_dtype, max_threads());
  const int64_t step = P.step;
  std::vector<float> zeros(static_cast<size_t>(P.zeros_n), 0.f);
  Scratch<float> conv(P.conv_n);
  const int64_t es = dtype_size(g_dtype);
  const char* gb = static_cast<const char*>(g);
  const KernelTable& K = kernels();
  auto process = [&](int64_t tile, int64_t i0, int64_t len, const SketchEntry* tab, float* acc,
                     int slot) {
    const int64_t n0 = tile * kLanes, ns = std::min<int64_t>(kLanes, N - n0);
    const float* rows[kLanes];
    for (int64_t b0 = 0; b0 < len; b0 += step) {  // blocks of `step` rows (bounded buffers)
      const int64_t l = std::min(step, len - b0);
      lane_rows(rows, ns, zeros.data(), g_dtype, l, conv.data() + slot * kLanes * step, step,
                [&](int64_t s) { return gb + ((n0 + s) * ldg + i0 + b0) * es; });
      K.scatter16(rows, l, tab + b0 * k, k, acc);
    }
  };
  sketch_engine(out, N, r, m, k, seed, offset, accumulate, P.engine, process);
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
                       const OuterPlan& P, const SrcA& src_a, const SrcD& src_d, int dtype,
                       int64_t lda_t, int64_t ldd_t) {
  const KernelTable& K = kernels();
  const int64_t chunk = P.chunk, pa_n = P.pa_n, pb_n = P.pb_n;
  std::vector<float> zeros(static_cast<size_t>(P.zeros_n), 0.f);
  Scratch<float> slabs(P.slabs_n);
  Scratch<float> packs(P.packs_n);
  auto process = [&](int64_t tile, int64_t i0, int64_t len, const SketchEntry* tab, float* acc,
                     int slot) {
    const int64_t n0 = tile * kLanes, ns = std::min<int64_t>(kLanes, N - n0);
    const int64_t o0 = i0 / d_in, no = len / d_in;  // i0, len are multiples of d_in
    float* pa = packs.data() + slot * (pa_n + pb_n);
    float* pb = pa + pa_n;
    const float* rows[kLanes];
    for (int64_t s = 0; s < kLanes; ++s) {
      if (s >= ns) {
        rows[s] = zeros.data();
        continue;
      }
      float* G = slabs.data() + (slot * kLanes + s) * chunk;
      std::memset(G, 0, sizeof(float) * static_cast<size_t>(len));
      const Src sd{src_d(n0 + s, 0), dtype, ldd_t, o0, no};
      const Src sa{src_a(n0 + s, 0), dtype, lda_t, 0, d_in};
      gemm_serial_f32(K, sd, sa, T, G, d_in, 1.0f, pa, pb);
      rows[s] = G;
    }
    K.scatter16(rows, len, tab, k, acc);
  };
  sketch_engine(out, N, d_in * d_out, m, k, seed, offset, accumulate, P.engine, process);
}

void outer_sketch(float* out, const void* a, const void* d, int dtype, int64_t N, int64_t T,
                  int64_t d_in, int64_t d_out, int64_t lda_n, int64_t lda_t, int64_t ldd_n,
                  int64_t ldd_t, int64_t m, int64_t k, int64_t seed, int64_t offset,
                  bool accumulate) {
  const int64_t R = d_in * d_out;
  const KernelTable& K = kernels();
  const OuterPlan P = plan_outer_sketch(K, N, T, d_in, d_out, m, k, dtype, max_threads());
  if (P.path == OuterPath::kEmpty) {  // G == 0: out = 0 (or unchanged)
    if (N > 0 && !accumulate) std::memset(out, 0, sizeof(float) * static_cast<size_t>(N * m));
    return;
  }
  const int64_t es = dtype_size(dtype);
  const char* ab = static_cast<const char*>(a);
  const char* db = static_cast<const char*>(d);
  auto src_a = [&](int64_t n, int64_t t) { return ab + (n * lda_n + t * lda_t) * es; };
  auto src_d = [&](int64_t n, int64_t t) { return db + (n * ldd_n + t * ldd_t) * es; };
  if (P.path == OuterPath::kGemm) {
    outer_sketch_gemm(out, N, T, d_in, d_out, m, k, seed, offset, accumulate, P, src_a, src_d,
                      dtype, lda_t, ldd_t);
    return;
  }
  const bool by_col = P.path == OuterPath::kLanesByCol;
  const int64_t chunk = P.chunk, ocm = P.ocm, qc = P.qc, qb = P.qb, ob = P.ob, wmax = P.wmax;
  std::vector<float> zeros(static_cast<size_t>(P.zeros_n), 0.f);
  Scratch<float> dts(P.dts_n);
  Scratch<float> ats(P.ats_n);
  Scratch<float> conv(P.conv_n);
  Scratch<float> lane(P.lane_n);
  // Lanes s < ns of rows (n0 + s, t), columns [c0, c0 + w) (zero lanes past ns), as 16-float
  // vectors packed in groups of `grp` columns (the layout of KernelTable::outer_scatter16).
  auto to_lanes = [&](bool is_a, int64_t n0, int64_t ns, int64_t t, int64_t c0, int64_t w,
                      int64_t grp, float* dst, int slot) {
    const float* rows[kLanes];
    lane_rows(rows, ns, zeros.data(), dtype, w, conv.data() + slot * kLanes * wmax, wmax,
              [&](int64_t s) { return (is_a ? src_a(n0 + s, t) : src_d(n0 + s, t)) + c0 * es; });
    float* tmp = lane.data() + slot * kLanes * wmax;
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
                   int64_t ldo, int64_t ldq, const SketchEntry* tab, float* acc, int slot) {
    float* Dt = dts.data() + slot * T * ocm * kLanes;
    float* At = ats.data() + slot * T * qb * kLanes;
    for (int64_t t = 0; t < T; ++t) to_lanes(false, n0, ns, t, o0, no, K.out_r, Dt, slot);
    for (int64_t q0 = q_lo; q0 < q_hi; q0 += qb) {
      const int64_t nq = std::min(qb, q_hi - q0);
      for (int64_t t = 0; t < T; ++t) to_lanes(true, n0, ns, t, q0, nq, K.out_q, At, slot);
      for (int64_t o = 0; o < no; o += ob)
        K.outer_scatter16(Dt + o * T * kLanes, At, T, std::min(ob, no - o), nq, ldo, ldq,
                          tab + (o * ldo + (q0 - q_lo) * ldq) * k, k, acc);
    }
  };
  if (by_col) {
    // Chunk c: columns [c*qc, c*qc + w) x every row o, its logical rows ordered (q, o), the
    // order in which outer_scatter16 walks them (a few sequential streams through tab).
    auto process = [&](int64_t tile, int64_t i0, int64_t len, const SketchEntry* tab, float* acc,
                       int slot) {
      const int64_t n0 = tile * kLanes, ns = std::min<int64_t>(kLanes, N - n0);
      const int64_t q_lo = i0 / chunk * qc;
      block(n0, ns, 0, d_out, q_lo, q_lo + len / d_out, 1, d_out, tab, acc, slot);
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
    sketch_engine(out, N, R, m, k, seed, offset, accumulate, P.engine, process, row);
    return;
  }
  auto process = [&](int64_t tile, int64_t i0, int64_t len, const SketchEntry* tab, float* acc,
                     int slot) {
    const int64_t n0 = tile * kLanes, ns = std::min<int64_t>(kLanes, N - n0);
    // i0, len: multiples of d_in (whole rows o)
    block(n0, ns, i0 / d_in, len / d_in, 0, d_in, d_in, 1, tab, acc, slot);
  };
  sketch_engine(out, N, R, m, k, seed, offset, accumulate, P.engine, process);
}

}  // namespace cpu
}  // namespace sketchprune
