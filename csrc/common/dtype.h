// dtype codes shared by Python (sketchprune/_native.py) and the native modules.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

namespace sketchprune {

enum DType : int {
  kFloat32 = 0,
  kFloat16 = 1,
  kBFloat16 = 2,
  kFloat64 = 3,
};

inline const char* dtype_name(int code) {
  switch (code) {
    case kFloat32: return "float32";
    case kFloat16: return "float16";
    case kBFloat16: return "bfloat16";
    case kFloat64: return "float64";
    default: return "unknown";
  }
}

// Throw std::runtime_error("sketchprune::<op>: <msg>") -- pybind11 turns it into RuntimeError.
[[noreturn]] inline void fail(const char* op, const std::string& msg) {
  throw std::runtime_error(std::string("sketchprune::") + op + ": " + msg);
}

inline void check(bool ok, const char* op, const std::string& msg) {
  if (!ok) fail(op, msg);
}

}  // namespace sketchprune
