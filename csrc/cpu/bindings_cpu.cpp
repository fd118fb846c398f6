// sketchprune CPU: the _C_cpu pybind11 module.  Pointers arrive as Python ints, sizes and
// strides in elements (docs/native_abi.md).  Every argument that is cheap to check is
// checked here; the GIL is released around the work.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "cpu/cpu_common.h"
#include "cpu/cpu_ops.h"

namespace py = pybind11;
using sketchprune::check;
using sketchprune::fail;

namespace {

template <class T>
T* as_ptr(std::uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

void check_nonneg(const char* op, const char* name, int64_t v) {
  if (v < 0) fail(op, std::string(name) + " must be >= 0, got " + std::to_string(v));
}

void check_ptr(const char* op, const char* name, std::uintptr_t p, bool needed) {
  if (needed && p == 0) fail(op, std::string(name) + " is a null pointer but the size is nonzero");
}

void check_in_dtype(const char* op, const char* name, int code) {
  if (code != sketchprune::kFloat32 && code != sketchprune::kFloat16 &&
      code != sketchprune::kBFloat16)
    fail(op, std::string(name) + " must be float32, float16 or bfloat16 (code 0/1/2), got code " +
                 std::to_string(code));
}

void check_acc_dtype(const char* op, const char* name, int code) {
  if (code != sketchprune::kFloat32 && code != sketchprune::kFloat64)
    fail(op, std::string(name) + " must be float32 or float64 (code 0/3), got code " +
                 std::to_string(code));
}

// An output's row stride must not make rows overlap.
void check_out_ld(const char* op, const char* name, int64_t ld, int64_t rows, int64_t cols) {
  check_nonneg(op, name, ld);
  if (rows > 1 && ld < cols)
    fail(op, std::string(name) + " = " + std::to_string(ld) + " is smaller than the row length " +
                 std::to_string(cols));
}

void check_sketch(const char* op, int64_t m, int64_t k) {
  if (k < 1 || m < k)
    fail(op, "need m >= k >= 1, got m=" + std::to_string(m) + ", k=" + std::to_string(k));
  sketchprune::cpu::check_sketch_m(op, m);
}

// The OpenMP team a kernel called now from this thread would run with (threads == 0), or
// `threads` itself.
int64_t team_size(const char* op, int64_t threads) {
  check_nonneg(op, "threads", threads);
  return threads == 0 ? sketchprune::cpu::max_threads() : threads;
}

void cov_accumulate(std::uintptr_t sigma, int sigma_dtype, int64_t d, int64_t ld_sigma,
                    std::uintptr_t x, int x_dtype, int64_t T, int64_t ldx, double alpha,
                    std::uintptr_t mask) {
  const char* op = "cov_accumulate";
  check_acc_dtype(op, "sigma_dtype", sigma_dtype);
  check_in_dtype(op, "x_dtype", x_dtype);
  check_nonneg(op, "d", d);
  check_nonneg(op, "T", T);
  check_nonneg(op, "ldx", ldx);
  check_out_ld(op, "ld_sigma", ld_sigma, d, d);
  check_ptr(op, "sigma_ptr", sigma, d > 0);
  check_ptr(op, "x_ptr", x, d > 0 && T > 0);
  py::gil_scoped_release nogil;
  sketchprune::cpu::cov_accumulate(as_ptr<void>(sigma), sigma_dtype, d, ld_sigma,
                                   as_ptr<const void>(x), x_dtype, T, ldx, alpha,
                                   as_ptr<const uint8_t>(mask));
}

void cross_accumulate(std::uintptr_t c, int c_dtype, int64_t d_in, int64_t d_out, int64_t ldc,
                      std::uintptr_t x, std::uintptr_t y, int xy_dtype, int64_t T, int64_t ldx,
                      int64_t ldy, double alpha, std::uintptr_t mask) {
  const char* op = "cross_accumulate";
  check_acc_dtype(op, "c_dtype", c_dtype);
  check_in_dtype(op, "xy_dtype", xy_dtype);
  check_nonneg(op, "d_in", d_in);
  check_nonneg(op, "d_out", d_out);
  check_nonneg(op, "T", T);
  check_nonneg(op, "ldx", ldx);
  check_nonneg(op, "ldy", ldy);
  check_out_ld(op, "ldc", ldc, d_in, d_out);
  const bool work = d_in > 0 && d_out > 0 && T > 0;
  check_ptr(op, "c_ptr", c, d_in > 0 && d_out > 0);
  check_ptr(op, "x_ptr", x, work);
  check_ptr(op, "y_ptr", y, work);
  py::gil_scoped_release nogil;
  sketchprune::cpu::cross_accumulate(as_ptr<void>(c), c_dtype, d_in, d_out, ldc,
                                     as_ptr<const void>(x), as_ptr<const void>(y), xy_dtype, T,
                                     ldx, ldy, alpha, as_ptr<const uint8_t>(mask));
}

void sparse_sign_sketch(std::uintptr_t out, std::uintptr_t g, int g_dtype, int64_t N, int64_t r,
                        int64_t ldg, int64_t m, int64_t k, int64_t seed, int64_t offset,
                        bool accumulate) {
  const char* op = "sparse_sign_sketch";
  check_in_dtype(op, "g_dtype", g_dtype);
  check_nonneg(op, "N", N);
  check_nonneg(op, "r", r);
  check_nonneg(op, "ldg", ldg);
  check_sketch(op, m, k);
  check_ptr(op, "out_ptr", out, N > 0);
  check_ptr(op, "g_ptr", g, N > 0 && r > 0);
  py::gil_scoped_release nogil;
  sketchprune::cpu::sparse_sign_sketch(as_ptr<float>(out), as_ptr<const void>(g), g_dtype, N, r,
                                       ldg, m, k, seed, offset, accumulate);
}

int64_t sparse_sign_sketch_workspace_bytes(int64_t N, int64_t r, int64_t m, int64_t k, int g_dtype,
                                           int64_t threads) {
  const char* op = "sparse_sign_sketch";
  check_in_dtype(op, "g_dtype", g_dtype);
  check_nonneg(op, "N", N);
  check_nonneg(op, "r", r);
  check_sketch(op, m, k);
  return sketchprune::cpu::sparse_sign_sketch_workspace_bytes(N, r, m, k, g_dtype,
                                                              team_size(op, threads));
}

// outer_sketch's sizes, shared by the kernel call and its workspace query
void check_outer_sizes(const char* op, int dtype, int64_t N, int64_t T, int64_t d_in, int64_t d_out,
                       int64_t m, int64_t k) {
  check_in_dtype(op, "dtype", dtype);
  check_nonneg(op, "N", N);
  check_nonneg(op, "T", T);
  check_nonneg(op, "d_in", d_in);
  check_nonneg(op, "d_out", d_out);
  check_sketch(op, m, k);
}

void outer_sketch(std::uintptr_t out, std::uintptr_t a, std::uintptr_t d, int dtype, int64_t N,
                  int64_t T, int64_t d_in, int64_t d_out, int64_t lda_n, int64_t lda_t,
                  int64_t ldd_n, int64_t ldd_t, int64_t m, int64_t k, int64_t seed, int64_t offset,
                  bool accumulate) {
  const char* op = "outer_sketch";
  check_outer_sizes(op, dtype, N, T, d_in, d_out, m, k);
  check_nonneg(op, "lda_n", lda_n);
  check_nonneg(op, "lda_t", lda_t);
  check_nonneg(op, "ldd_n", ldd_n);
  check_nonneg(op, "ldd_t", ldd_t);
  const bool work = N > 0 && T > 0 && d_in > 0 && d_out > 0;
  check_ptr(op, "out_ptr", out, N > 0);
  check_ptr(op, "a_ptr", a, work);
  check_ptr(op, "d_ptr", d, work);
  py::gil_scoped_release nogil;
  sketchprune::cpu::outer_sketch(as_ptr<float>(out), as_ptr<const void>(a), as_ptr<const void>(d),
                                 dtype, N, T, d_in, d_out, lda_n, lda_t, ldd_n, ldd_t, m, k, seed,
                                 offset, accumulate);
}

int64_t outer_sketch_workspace_bytes(int64_t N, int64_t T, int64_t d_in, int64_t d_out, int64_t m,
                                     int64_t k, int dtype, int64_t threads) {
  const char* op = "outer_sketch";
  check_outer_sizes(op, dtype, N, T, d_in, d_out, m, k);
  return sketchprune::cpu::outer_sketch_workspace_bytes(N, T, d_in, d_out, m, k, dtype,
                                                        team_size(op, threads));
}

using DescTuple = std::tuple<std::uintptr_t, std::uintptr_t, int64_t, int64_t, int64_t, int64_t,
                             std::uintptr_t, int64_t, int64_t>;

void gather_slices(const std::vector<DescTuple>& descs) {
  const char* op = "gather_slices";
  std::vector<sketchprune::cpu::GatherDesc> ds;
  ds.reserve(descs.size());
  for (size_t i = 0; i < descs.size(); ++i) {
    const auto& t = descs[i];
    sketchprune::cpu::GatherDesc g{as_ptr<const char>(std::get<0>(t)), as_ptr<char>(std::get<1>(t)),
                                   std::get<2>(t), std::get<3>(t), std::get<4>(t), std::get<5>(t),
                                   as_ptr<const int64_t>(std::get<6>(t)), std::get<7>(t),
                                   std::get<8>(t)};
    const std::string at = "descriptor " + std::to_string(i) + ": ";
    if (g.elem_bytes < 1) fail(op, at + "elem_bytes must be >= 1");
    if (g.outer < 0 || g.L < 0 || g.inner < 0 || g.n_keep < 0 || g.block < 0)
      fail(op, at + "outer, L, inner, n_keep and block must be >= 0");
    const bool work = g.outer > 0 && g.n_keep > 0 && g.inner > 0 && g.block > 0;
    if (work && (g.src == nullptr || g.dst == nullptr || g.idx == nullptr))
      fail(op, at + "null pointer with a nonzero size");
    if (work && g.L == 0) fail(op, at + "n_keep > 0 but L == 0");
    if (!work) continue;  // nothing to copy
    ds.push_back(g);
  }
  py::gil_scoped_release nogil;
  sketchprune::cpu::gather_slices(ds);
}

py::dict build_info() {
  py::dict d;
#if defined(SKETCHPRUNE_OPENMP)
  d["openmp"] = true;
#else
  d["openmp"] = false;
#endif
  d["threads"] = sketchprune::cpu::max_threads();
  d["isa"] = std::string(sketchprune::cpu::kernels().isa);
  // the row-hash path of the default k = 8, of a k that needs a masked second vector, and of k = 1
  d["row_hash"] = std::string(sketchprune::cpu::row_hash_path(0, 512, 8));
  d["row_hash_k13"] = std::string(sketchprune::cpu::row_hash_path(1, 100, 13));
  d["row_hash_k1"] = std::string(sketchprune::cpu::row_hash_path(1, 100, 1));
  return d;
}

}  // namespace

PYBIND11_MODULE(_C_cpu, m) {
  m.doc() = "sketchprune CPU kernels (OpenMP); see docs/native_abi.md";
  m.def("cov_accumulate", &cov_accumulate, py::arg("sigma_ptr"), py::arg("sigma_dtype"),
        py::arg("d"), py::arg("ld_sigma"), py::arg("x_ptr"), py::arg("x_dtype"), py::arg("T"),
        py::arg("ldx"), py::arg("alpha"), py::arg("mask_ptr"));
  m.def("cross_accumulate", &cross_accumulate, py::arg("c_ptr"), py::arg("c_dtype"),
        py::arg("d_in"), py::arg("d_out"), py::arg("ldc"), py::arg("x_ptr"), py::arg("y_ptr"),
        py::arg("xy_dtype"), py::arg("T"), py::arg("ldx"), py::arg("ldy"), py::arg("alpha"),
        py::arg("mask_ptr"));
  m.def("sparse_sign_sketch", &sparse_sign_sketch, py::arg("out_ptr"), py::arg("g_ptr"),
        py::arg("g_dtype"), py::arg("N"), py::arg("r"), py::arg("ldg"), py::arg("m"),
        py::arg("k"), py::arg("seed"), py::arg("offset"), py::arg("accumulate"));
  m.def("outer_sketch", &outer_sketch, py::arg("out_ptr"), py::arg("a_ptr"), py::arg("d_ptr"),
        py::arg("dtype"), py::arg("N"), py::arg("T"), py::arg("d_in"), py::arg("d_out"),
        py::arg("lda_n"), py::arg("lda_t"), py::arg("ldd_n"), py::arg("ldd_t"), py::arg("m"),
        py::arg("k"), py::arg("seed"), py::arg("offset"), py::arg("accumulate"));
  m.def("sparse_sign_sketch_workspace_bytes", &sparse_sign_sketch_workspace_bytes, py::arg("N"),
        py::arg("r"), py::arg("m"), py::arg("k"), py::arg("g_dtype"), py::arg("threads") = 0);
  m.def("outer_sketch_workspace_bytes", &outer_sketch_workspace_bytes, py::arg("N"), py::arg("T"),
        py::arg("d_in"), py::arg("d_out"), py::arg("m"), py::arg("k"), py::arg("dtype"),
        py::arg("threads") = 0);
  m.def("gather_slices", &gather_slices, py::arg("descs"));
  m.def("build_info", &build_info);
}
