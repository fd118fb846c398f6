// sketchprune CUDA module `_C_cuda`: pybind11 bindings (docs/native_abi.md).
//
// Every op takes raw pointers as Python ints, sizes / strides in elements, dtype codes,
// then (device, stream). Each binding validates its arguments, switches to `device` for the
// duration of the call (restoring the caller's device), releases the GIL around the
// launches, and returns without synchronising.
#include <pybind11/pybind11.h>

#include <cuda_runtime_api.h>

#include <cstdint>
#include <limits>
#include <string>
#include <tuple>

#include "common/dtype.h"
#include "launch.h"

#ifndef SKETCHPRUNE_CUDA_VERSION
#define SKETCHPRUNE_CUDA_VERSION "unknown"
#endif
#ifndef SKETCHPRUNE_CUDA_ARCHS
#define SKETCHPRUNE_CUDA_ARCHS "unknown"
#endif

namespace py = pybind11;
using sketchprune::check;
using sketchprune::fail;

namespace {

// Make `device` current for this scope; restore the previous device afterwards.
class DeviceGuard {
 public:
  DeviceGuard(int device, const char* op) {
    cudaError_t e = cudaGetDevice(&prev_);
    if (e != cudaSuccess) fail(op, std::string("CUDA error: ") + cudaGetErrorString(e));
    if (prev_ != device) {
      e = cudaSetDevice(device);
      if (e != cudaSuccess) fail(op, std::string("CUDA error: ") + cudaGetErrorString(e));
      switched_ = true;
    }
  }
  ~DeviceGuard() {
    if (switched_) cudaSetDevice(prev_);
  }
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int prev_ = 0;
  bool switched_ = false;
};

cudaStream_t as_stream(uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

void check_device(int device, const char* op) { check(device >= 0, op, "device must be >= 0"); }

void check_ptr(uintptr_t p, const char* op, const char* name) {
  check(p != 0, op, std::string(name) + " is a null pointer");
}

void check_out_dtype(int code, const char* op, const char* name) {
  check(code == sketchprune::kFloat32 || code == sketchprune::kFloat64, op,
        std::string(name) + " must be float32 or float64 (got dtype code " + std::to_string(code) + ")");
}

void check_in_dtype(int code, const char* op, const char* name) {
  check(code == sketchprune::kFloat32 || code == sketchprune::kFloat16 || code == sketchprune::kBFloat16, op,
        std::string(name) + " must be float32, float16 or bfloat16 (got dtype code " + std::to_string(code) + ")");
}

void cov_accumulate(uintptr_t sigma_ptr, int sigma_dtype, int64_t d, int64_t ld_sigma, uintptr_t x_ptr, int x_dtype,
                    int64_t T, int64_t ldx, double alpha, uintptr_t mask_ptr, int device, uintptr_t stream) {
  const char* op = "cov_accumulate";
  check_out_dtype(sigma_dtype, op, "sigma");
  check_in_dtype(x_dtype, op, "x");
  check(d >= 0 && T >= 0, op, "d and T must be >= 0");
  check_device(device, op);
  if (d == 0 || T == 0) return;
  check(d <= 1 || ld_sigma >= d, op, "ld_sigma must be >= d");  // one row: its stride is never used
  check(T == 1 || ldx >= d, op, "ldx must be >= d");
  check_ptr(sigma_ptr, op, "sigma");
  check_ptr(x_ptr, op, "x");
  sketchprune::cuda::CovParams p{};
  p.sigma = reinterpret_cast<void*>(sigma_ptr);
  p.sigma_dtype = sigma_dtype;
  p.d = d;
  p.ld_sigma = ld_sigma;
  p.x = reinterpret_cast<const void*>(x_ptr);
  p.x_dtype = x_dtype;
  p.T = T;
  p.ldx = ldx;
  p.alpha = alpha;
  p.mask = reinterpret_cast<const uint8_t*>(mask_ptr);
  p.device = device;
  py::gil_scoped_release nogil;
  DeviceGuard guard(device, op);
  sketchprune::cuda::cov_accumulate_launch(p, as_stream(stream));
}

void cross_accumulate(uintptr_t c_ptr, int c_dtype, int64_t d_in, int64_t d_out, int64_t ldc, uintptr_t x_ptr,
                      uintptr_t y_ptr, int xy_dtype, int64_t T, int64_t ldx, int64_t ldy, double alpha,
                      uintptr_t mask_ptr, int device, uintptr_t stream) {
  const char* op = "cross_accumulate";
  check_out_dtype(c_dtype, op, "c");
  check_in_dtype(xy_dtype, op, "x / y");
  check(d_in >= 0 && d_out >= 0 && T >= 0, op, "d_in, d_out and T must be >= 0");
  check_device(device, op);
  if (d_in == 0 || d_out == 0 || T == 0) return;
  check(d_in <= 1 || ldc >= d_out, op, "ldc must be >= d_out");  // one row: its stride is never used
  check(T == 1 || (ldx >= d_in && ldy >= d_out), op, "ldx must be >= d_in and ldy >= d_out");
  check_ptr(c_ptr, op, "c");
  check_ptr(x_ptr, op, "x");
  check_ptr(y_ptr, op, "y");
  sketchprune::cuda::CrossParams p{};
  p.c = reinterpret_cast<void*>(c_ptr);
  p.c_dtype = c_dtype;
  p.d_in = d_in;
  p.d_out = d_out;
  p.ldc = ldc;
  p.x = reinterpret_cast<const void*>(x_ptr);
  p.y = reinterpret_cast<const void*>(y_ptr);
  p.xy_dtype = xy_dtype;
  p.T = T;
  p.ldx = ldx;
  p.ldy = ldy;
  p.alpha = alpha;
  p.mask = reinterpret_cast<const uint8_t*>(mask_ptr);
  p.device = device;
  py::gil_scoped_release nogil;
  DeviceGuard guard(device, op);
  sketchprune::cuda::cross_accumulate_launch(p, as_stream(stream));
}

void sparse_sign_sketch(uintptr_t out_ptr, uintptr_t g_ptr, int g_dtype, int64_t N, int64_t r, int64_t ldg, int64_t m,
                        int64_t k, int64_t seed, int64_t offset, bool accumulate, int device, uintptr_t stream) {
  const char* op = "sparse_sign_sketch";
  check_in_dtype(g_dtype, op, "g");
  check(N >= 0 && r >= 0, op, "N and r must be >= 0");
  check(k >= 1 && m >= k, op, "need m >= k >= 1");
  check(m <= std::numeric_limits<int32_t>::max(), op, "m must be < 2^31");
  check_device(device, op);
  if (N == 0) return;
  check(N == 1 || r == 0 || ldg >= r, op, "ldg must be >= r");
  check_ptr(out_ptr, op, "out");
  if (r > 0) check_ptr(g_ptr, op, "g");
  sketchprune::cuda::SketchParams p{};
  p.out = reinterpret_cast<float*>(out_ptr);
  p.g = reinterpret_cast<const void*>(g_ptr);
  p.g_dtype = g_dtype;
  p.N = N;
  p.r = r;
  p.ldg = ldg;
  p.m = m;
  p.k = k;
  p.seed = seed;
  p.offset = offset;
  p.accumulate = accumulate;
  p.device = device;
  py::gil_scoped_release nogil;
  DeviceGuard guard(device, op);
  sketchprune::cuda::sparse_sign_sketch_launch(p, as_stream(stream));
}

void outer_sketch(uintptr_t out_ptr, uintptr_t a_ptr, uintptr_t d_ptr, int dtype, int64_t N, int64_t T, int64_t d_in,
                  int64_t d_out, int64_t lda_n, int64_t lda_t, int64_t ldd_n, int64_t ldd_t, int64_t m, int64_t k,
                  int64_t seed, int64_t offset, bool accumulate, int device, uintptr_t stream) {
  const char* op = "outer_sketch";
  check_in_dtype(dtype, op, "a / d");
  check(N >= 0 && T >= 0 && d_in >= 0 && d_out >= 0, op, "N, T, d_in and d_out must be >= 0");
  check(k >= 1 && m >= k, op, "need m >= k >= 1");
  check(m <= std::numeric_limits<int32_t>::max(), op, "m must be < 2^31");
  check(d_in == 0 || d_out <= std::numeric_limits<int64_t>::max() / d_in, op, "d_out * d_in overflows int64");
  check_device(device, op);
  if (N == 0) return;
  check_ptr(out_ptr, op, "out");
  if (T > 0 && d_in > 0 && d_out > 0) {
    check_ptr(a_ptr, op, "a");
    check_ptr(d_ptr, op, "d");
    check(T == 1 || (lda_t >= d_in && ldd_t >= d_out), op, "lda_t must be >= d_in and ldd_t >= d_out");
    check(lda_n >= 0 && ldd_n >= 0, op, "sample strides must be >= 0");
  }
  sketchprune::cuda::OuterParams p{};
  p.out = reinterpret_cast<float*>(out_ptr);
  p.a = reinterpret_cast<const void*>(a_ptr);
  p.d = reinterpret_cast<const void*>(d_ptr);
  p.dtype = dtype;
  p.N = N;
  p.T = T;
  p.d_in = d_in;
  p.d_out = d_out;
  p.lda_n = lda_n;
  p.lda_t = lda_t;
  p.ldd_n = ldd_n;
  p.ldd_t = ldd_t;
  p.m = m;
  p.k = k;
  p.seed = seed;
  p.offset = offset;
  p.accumulate = accumulate;
  p.device = device;
  py::gil_scoped_release nogil;
  DeviceGuard guard(device, op);
  sketchprune::cuda::outer_sketch_launch(p, as_stream(stream));
}

void gather_slices(const py::sequence& descs, int device, uintptr_t stream) {
  const char* op = "gather_slices";
  check_device(device, op);
  const size_t n = py::len(descs);
  check(n <= size_t(sketchprune::cuda::MAX_GATHER_DESCS), op,
        "at most " + std::to_string(sketchprune::cuda::MAX_GATHER_DESCS) + " descriptors per call (got " +
            std::to_string(n) + "); split the list");
  sketchprune::cuda::GatherParams p{};
  p.num_descs = static_cast<int>(n);
  p.device = device;
  for (size_t i = 0; i < n; ++i) {
    const auto t = descs[i].cast<std::tuple<uintptr_t, uintptr_t, int64_t, int64_t, int64_t, int64_t, uintptr_t,
                                            int64_t, int64_t>>();
    sketchprune::cuda::GatherDesc& d = p.descs[i];
    d.src = reinterpret_cast<const void*>(std::get<0>(t));
    d.dst = reinterpret_cast<void*>(std::get<1>(t));
    d.elem_bytes = std::get<2>(t);
    d.outer = std::get<3>(t);
    d.L = std::get<4>(t);
    d.inner = std::get<5>(t);
    d.idx = reinterpret_cast<const int64_t*>(std::get<6>(t));
    d.n_keep = std::get<7>(t);
    d.block = std::get<8>(t);
    const std::string where = "descriptor " + std::to_string(i) + ": ";
    check(d.elem_bytes >= 1, op, where + "elem_bytes must be >= 1");
    check(d.outer >= 0 && d.L >= 0 && d.inner >= 0 && d.n_keep >= 0 && d.block >= 0, op,
          where + "sizes must be >= 0");
    const bool empty = d.outer == 0 || d.n_keep == 0 || d.inner == 0 || d.block == 0;
    if (!empty) {
      check(d.src != nullptr && d.dst != nullptr && d.idx != nullptr, op, where + "null pointer");
      check(d.L >= 1, op, where + "L must be >= 1 when blocks are kept");
    }
  }
  py::gil_scoped_release nogil;
  DeviceGuard guard(device, op);
  sketchprune::cuda::gather_slices_launch(p, as_stream(stream));
}

int device_count() {
  int n = 0;
  const cudaError_t e = cudaGetDeviceCount(&n);
  if (e != cudaSuccess) {
    cudaGetLastError();  // clear the (non-sticky) error: no driver / no device
    return 0;
  }
  return n;
}

py::dict build_info() {
  py::dict d;
  d["cuda_version"] = SKETCHPRUNE_CUDA_VERSION;
  d["archs"] = SKETCHPRUNE_CUDA_ARCHS;
  return d;
}

}  // namespace

PYBIND11_MODULE(_C_cuda, m) {
  m.doc() = "sketchprune CUDA kernels (docs/native_abi.md)";
  m.attr("MAX_GATHER_DESCS") = sketchprune::cuda::MAX_GATHER_DESCS;
  m.def("build_info", &build_info, "Build information: {'cuda_version': str, 'archs': str}.");
  m.def("device_count", &device_count, "Number of CUDA devices (0 when there is no driver or device).");
  m.def("cov_accumulate", &cov_accumulate, py::arg("sigma_ptr"), py::arg("sigma_dtype"), py::arg("d"),
        py::arg("ld_sigma"), py::arg("x_ptr"), py::arg("x_dtype"), py::arg("T"), py::arg("ldx"), py::arg("alpha"),
        py::arg("mask_ptr"), py::arg("device"), py::arg("stream"),
        "sigma += alpha * x^T x over unmasked rows (upper triangle computed, mirrored).");
  m.def("cross_accumulate", &cross_accumulate, py::arg("c_ptr"), py::arg("c_dtype"), py::arg("d_in"),
        py::arg("d_out"), py::arg("ldc"), py::arg("x_ptr"), py::arg("y_ptr"), py::arg("xy_dtype"), py::arg("T"),
        py::arg("ldx"), py::arg("ldy"), py::arg("alpha"), py::arg("mask_ptr"), py::arg("device"), py::arg("stream"),
        "c += alpha * x^T y over unmasked rows.");
  m.def("sparse_sign_sketch", &sparse_sign_sketch, py::arg("out_ptr"), py::arg("g_ptr"), py::arg("g_dtype"),
        py::arg("N"), py::arg("r"), py::arg("ldg"), py::arg("m"), py::arg("k"), py::arg("seed"), py::arg("offset"),
        py::arg("accumulate"), py::arg("device"), py::arg("stream"), "out (+)= g @ S (sparse sign sketch).");
  m.def("outer_sketch", &outer_sketch, py::arg("out_ptr"), py::arg("a_ptr"), py::arg("d_ptr"), py::arg("dtype"),
        py::arg("N"), py::arg("T"), py::arg("d_in"), py::arg("d_out"), py::arg("lda_n"), py::arg("lda_t"),
        py::arg("ldd_n"), py::arg("ldd_t"), py::arg("m"), py::arg("k"), py::arg("seed"), py::arg("offset"),
        py::arg("accumulate"), py::arg("device"), py::arg("stream"),
        "out[n] (+)= sketch of G_n = d_n^T a_n flattened row-major (d_out, d_in).");
  m.def("gather_slices", &gather_slices, py::arg("descs"), py::arg("device"), py::arg("stream"),
        "Bitwise block gather for up to MAX_GATHER_DESCS descriptors in one launch.");
}
