// sketchprune CPU: gather_slices -- structured slicing of many tensors in one call.
//
// Math:    dst[o, b*block + e, q] = src[o, idx[b]*block + e, q]   (bitwise copy)
// Layout:  src viewed as contiguous (outer, L*block, inner) elements of elem_bytes bytes,
//          dst as (outer, n_keep*block, inner); idx: n_keep int64 block indices in [0, L).
// Cost:    pure bandwidth, one memcpy of block*inner*elem_bytes bytes per (o, b); e.g. a
//          4096 x 11008 bf16 weight pruned to half its rows: 45 MB read + written.
#include "cpu/cpu_common.h"

#include "cpu/cpu_ops.h"

namespace sketchprune {
namespace cpu {

namespace {

// Copy n_b kept blocks of `run` bytes each; typed moves for the tiny runs of slicing along the
// last dim (run = elem_bytes), where a memcpy call per element would dominate.
// (fixed-size memcpy: one move, no alignment assumption)
template <size_t kRun>
void copy_runs_fixed(const char* s, char* d, const int64_t* idx, int64_t n_b) {
  for (int64_t b = 0; b < n_b; ++b)
    std::memcpy(d + b * static_cast<int64_t>(kRun), s + idx[b] * static_cast<int64_t>(kRun), kRun);
}

void copy_runs(const char* s, char* d, int64_t run, const int64_t* idx, int64_t n_b) {
  switch (run) {
    case 1: return copy_runs_fixed<1>(s, d, idx, n_b);
    case 2: return copy_runs_fixed<2>(s, d, idx, n_b);
    case 4: return copy_runs_fixed<4>(s, d, idx, n_b);
    case 8: return copy_runs_fixed<8>(s, d, idx, n_b);
    default:
      for (int64_t b = 0; b < n_b; ++b)
        std::memcpy(d + b * run, s + idx[b] * run, static_cast<size_t>(run));
  }
}

}  // namespace

void gather_slices(const std::vector<GatherDesc>& descs) {
  // Work items: (tensor, o, group of up to kGroup kept blocks), flattened so that OpenMP
  // balances across tensors.
  constexpr int64_t kGroup = 256;
  const size_t nd = descs.size();
  std::vector<int64_t> start(nd + 1, 0), groups(nd);
  for (size_t i = 0; i < nd; ++i) {
    groups[i] = ceil_div(descs[i].n_keep, kGroup);
    start[i + 1] = start[i] + descs[i].outer * groups[i];
  }
  const int64_t total = start[nd];
#pragma omp parallel for schedule(dynamic, 16)
  for (int64_t w = 0; w < total; ++w) {
    const size_t t = static_cast<size_t>(std::upper_bound(start.begin(), start.end(), w) -
                                         start.begin() - 1);
    const GatherDesc& g = descs[t];
    const int64_t o = (w - start[t]) / groups[t], b0 = (w - start[t]) % groups[t] * kGroup;
    const int64_t run = g.block * g.inner * g.elem_bytes;  // bytes of one kept block
    const char* s = g.src + o * g.L * run;
    char* d = g.dst + (o * g.n_keep + b0) * run;
    copy_runs(s, d, run, g.idx + b0, std::min(kGroup, g.n_keep - b0));
  }
}

}  // namespace cpu
}  // namespace sketchprune
