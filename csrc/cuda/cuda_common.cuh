// sketchprune CUDA module: shared helpers (device code and host launch helpers).
//
// Conventions (docs/native_abi.md): sizes and strides in elements (int64_t), 64-bit
// index arithmetic everywhere, nothing allocated, nothing synchronised, every launch on the
// caller's stream and followed by check_launch().
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <cstdlib>
#include <mutex>
#include <set>
#include <string>
#include <utility>

#include "common/dtype.h"

namespace sketchprune {
namespace cuda {

// ------------------------------------------------------------------ host-side checks

inline void check_cuda(cudaError_t e, const char* op) {
  if (e != cudaSuccess) fail(op, std::string("CUDA error: ") + cudaGetErrorString(e));
}

// Call right after every <<<...>>> launch.
inline void check_launch(const char* op) { check_cuda(cudaGetLastError(), op); }

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Device attributes, read once per device and cached (thread-safe: idempotent writes).
struct DeviceAttrs {
  int sm_count = 0;
  int smem_optin = 0;   // max dynamic+static shared memory per block after opt-in (bytes)
  int smem_per_sm = 0;  // shared memory per multiprocessor (bytes)
};

inline DeviceAttrs device_attrs(int device, const char* op) {
  static std::mutex mu;
  static DeviceAttrs cache[64];
  std::lock_guard<std::mutex> lock(mu);
  check(device >= 0 && device < 64, op, "device index out of range");
  DeviceAttrs& a = cache[device];
  if (a.sm_count == 0) {
    check_cuda(cudaDeviceGetAttribute(&a.smem_optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, device), op);
    check_cuda(cudaDeviceGetAttribute(&a.smem_per_sm, cudaDevAttrMaxSharedMemoryPerMultiprocessor, device), op);
    check_cuda(cudaDeviceGetAttribute(&a.sm_count, cudaDevAttrMultiProcessorCount, device), op);
  }
  return a;
}

// Raise a kernel's dynamic shared-memory limit to the device's opt-in maximum, once per
// (kernel, device). Setting it to the maximum (not to one launch's need) keeps concurrent
// callers from lowering it under each other; occupancy depends on the launch's own size.
template <typename Kernel>
inline void allow_max_smem(Kernel kernel, int device, const char* op) {
  static std::mutex mu;
  static std::set<std::pair<const void*, int>> done;
  std::lock_guard<std::mutex> lock(mu);
  const auto key = std::make_pair(reinterpret_cast<const void*>(kernel), device);
  if (done.count(key)) return;
  const DeviceAttrs a = device_attrs(device, op);
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, a.smem_optin), op);
  check_cuda(cudaFuncSetAttribute(kernel, cudaFuncAttributePreferredSharedMemoryCarveout,
                                  cudaSharedmemCarveoutMaxShared),
             op);
  done.insert(key);
}

// SKETCHPRUNE_CUDA_SAFE=1 in the environment routes every op through its simple reference
// kernel (slow, obviously correct): the first thing to try when a fast path looks wrong.
inline bool safe_mode() {
  static const bool on = [] {
    const char* s = std::getenv("SKETCHPRUNE_CUDA_SAFE");
    return s != nullptr && s[0] != '\0' && s[0] != '0';
  }();
  return on;
}

// Dispatch a 16/32-bit floating input dtype code to a C++ type: f(Tag<T>{}).
template <typename T>
struct Tag {
  using type = T;
};

template <typename F>
inline void dispatch_input(int code, const char* op, F&& f) {
  switch (code) {
    case kFloat32: f(Tag<float>{}); break;
    case kFloat16: f(Tag<__half>{}); break;
    case kBFloat16: f(Tag<__nv_bfloat16>{}); break;
    default:
      fail(op, std::string("unsupported input dtype code ") + std::to_string(code) + " (" +
                   dtype_name(code) + "); expected float32, float16 or bfloat16");
  }
}

// ------------------------------------------------------------------ device-side helpers

__device__ __forceinline__ float to_float(float v) { return v; }
__device__ __forceinline__ float to_float(__half v) { return __half2float(v); }
__device__ __forceinline__ float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

template <typename Acc, typename T>
__device__ __forceinline__ Acc to_acc(T v) {
  return static_cast<Acc>(to_float(v));
}

// Read-only global load through the non-coherent path.
template <typename T>
__device__ __forceinline__ T ldg(const T* p) {
  return __ldg(p);
}
template <>
__device__ __forceinline__ __half ldg<__half>(const __half* p) {
  unsigned short u = __ldg(reinterpret_cast<const unsigned short*>(p));
  return __ushort_as_half(u);
}
template <>
__device__ __forceinline__ __nv_bfloat16 ldg<__nv_bfloat16>(const __nv_bfloat16* p) {
  unsigned short u = __ldg(reinterpret_cast<const unsigned short*>(p));
  return __ushort_as_bfloat16(u);
}

}  // namespace cuda
}  // namespace sketchprune
