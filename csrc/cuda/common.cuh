// Shared by every kernel family of heteromoe._cuda: the includes, dtype codes and dispatch,
// float conversions, error checks, the launch helper (programmatic dependent launch) and its switches.
// Part of heteromoe_cuda.cu's one translation unit: included there, after the headers before it.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <pybind11/pybind11.h>

#include <cub/block/block_scan.cuh>
#include <cstdint>
#include <cstdlib>
#include <initializer_list>
#include <mutex>
#include <unordered_map>
#include <algorithm>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace py = pybind11;
using i64 = std::int64_t;

enum DType : int { kF32 = 0, kBF16 = 1, kF16 = 2 };

// f(T{}) for the element type T of dtype code `code` (the launchers' one dispatch from a code to a template
// argument); an unknown code: invalid_argument(what + the code).
template <typename F>
static void with_dtype(int code, const char* what, F&& f) {
  switch (code) {
    case kF32: return f(float{});
    case kBF16: return f(__nv_bfloat16{});
    case kF16: return f(__half{});
    default: throw std::invalid_argument(std::string(what) + std::to_string(code));
  }
}

template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<float>(float v) { return v; }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) { return __bfloat162float(v); }
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ float from_f<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) { return __float2bfloat16_rn(v); }
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }

static void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(err));
}
static cudaStream_t as_stream(std::uintptr_t s) { return reinterpret_cast<cudaStream_t>(s); }

// Programmatic dependent launch (Hopper): a kernel of the chain route_prep -> GEMV up -> GEMV down ->
// unpermute may start while its predecessor finishes; it does what does not depend on the predecessor
// (reading the routing lists written two kernels back, prefetching its weights into L2), then waits.
// Off with HETEROMOE_PDL=0; a launch the driver refuses falls back to a plain launch.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void prefetch_l2(const void* p) { asm volatile("prefetch.global.L2 [%0];" ::"l"(p)); }

static bool pdl_enabled() {
  static const bool enabled = [] {
    const char* v = std::getenv("HETEROMOE_PDL");
    if (v && std::string(v) == "0") return false;
    int dev = 0, major = 0;
    if (cudaGetDevice(&dev) != cudaSuccess || cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return major >= 9;
  }();
  return enabled;
}

static bool gemv_prefetch() {  // HETEROMOE_GEMV_PREFETCH=all: every GEMV call prefetches its slice (to measure it)
  static const bool on = [] {
    const char* v = std::getenv("HETEROMOE_GEMV_PREFETCH");
    return v && std::string(v) == "all";
  }();
  return on;
}

template <typename... KArgs, typename... Args>
static void launch(void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream, Args... args) {
  if (pdl_enabled()) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid;
    cfg.blockDim = block;
    cfg.dynamicSmemBytes = smem;
    cfg.stream = stream;
    cudaLaunchAttribute attr[1];
    attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attr[0].val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = attr;
    cfg.numAttrs = 1;
    if (cudaLaunchKernelEx(&cfg, kernel, static_cast<KArgs>(args)...) == cudaSuccess) return;
    cudaGetLastError();  // refused: clear and launch plainly
  }
  kernel<<<grid, block, smem, stream>>>(static_cast<KArgs>(args)...);
}
template <typename P> static P* ptr(std::uintptr_t p) { return reinterpret_cast<P*>(p); }
