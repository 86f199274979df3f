// heteromoe._cuda: the MoE layer's device kernels (pybind11; torch-free: tensors arrive as raw pointers
// plus the CUDA stream to launch on, so the build needs only nvcc and the CUDA runtime).
//
//   expert_histogram  routing -> tokens per expert
//   route_prep        routing -> per-expert counts, the hot/cold split of every expert's pairs (stable:
//                     pairs keep ascending flat order inside an expert), the rows each side computes and
//                     where every pair's output will lie; one block, one launch, no host round trip
//   gather_rows       token permute: hidden rows into expert-contiguous order (the grouped GEMM's input)
//   expert_gemv       W_e x for each cold expert's few tokens, read once per weight element; optionally
//                     fused with the SiLU gate of a [gate; up] projection (the PIM set's stand-in, and
//                     the GPU's kernel for experts with few tokens)
//   unpermute         weighted sum of every token's k expert outputs back into token order
//
// Numerics follow the CPU twins (heteromoe/kernels/_cpu.py, csrc/heteromoe_ext.cpp): products and sums
// use __fmul_rn / __fadd_rn (no contraction) where the twins must agree bit for bit (unpermute); the
// GEMV accumulates in fp32 in its own order (agreement within fp32 rounding is what is tested).
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

// ---------------------------------------------------------------------------------------------------------
// histogram
__global__ void histogram_kernel(const i64* ids, int n, int num_experts, int* counts) {
  extern __shared__ int s_hist[];
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x) s_hist[e] = 0;
  __syncthreads();
  for (int i = blockIdx.x * blockDim.x + threadIdx.x; i < n; i += gridDim.x * blockDim.x) {
    const i64 e = ids[i];
    if (e >= 0 && e < num_experts) atomicAdd(&s_hist[e], 1);
  }
  __syncthreads();
  for (int e = threadIdx.x; e < num_experts; e += blockDim.x)
    if (s_hist[e]) atomicAdd(&counts[e], s_hist[e]);
}

static void expert_histogram(std::uintptr_t ids, int n, int num_experts, std::uintptr_t counts, std::uintptr_t stream) {
  check(cudaMemsetAsync(ptr<int>(counts), 0, sizeof(int) * num_experts, as_stream(stream)), "histogram memset");
  if (n == 0) return;
  const int threads = 256;
  const int blocks = std::min((n + threads - 1) / threads, 132);
  histogram_kernel<<<blocks, threads, sizeof(int) * num_experts, as_stream(stream)>>>(ptr<const i64>(ids), n, num_experts,
                                                                                      ptr<int>(counts));
  check(cudaGetLastError(), "histogram launch");
}

// ---------------------------------------------------------------------------------------------------------
// route_prep: one block of kThreads threads (128 for decode-sized calls: a smaller block's scans and
// barriers are cheaper, and this kernel is on the critical path; 1024 for large batches).
//
// Inputs: ids [P] (flat top_k_index), take_hot [E] (pairs of each expert for the hot side; nullptr: the
// experts with more than `threshold` pairs are hot, whole). Outputs (int32):
//   counts [E]; hot_offs [E] inclusive ends of each expert's hot rows (grouped_mm's offs);
//   hot_pairs [P] flat pair of each hot row (-1 beyond the hot rows); cold_pairs [P] likewise;
//   cold_expert / cold_begin / cold_count [max_cold] the cold experts, compacted (count 0 beyond);
//   pair_row [P] where each pair's output lies: a hot row r, or P + a cold row;
//   meta [4] = hot rows, cold rows, cold experts, 1 + the first bad pair (0: none);
//   err_out [2] (int64, optional, host-mapped): [1 + first bad pair, its id], written only when there is one.
constexpr int kPrepThreads = 1024;

// The layer's costs for the on-device planner (one GPU): what `_C.sieve_plan` / `_C.heteromoe_plan` take.
struct DevicePlan {
  int rule;  // -1: no plan; 0: Sieve's greedy; 1: heteromoe's best prefix + one split expert
  const double* flop;  // [table_len] GPU seconds of one expert with n tokens
  const double* pim;   // [table_len] PIM seconds of one expert with n tokens
  int table_len;
  double read_s, launch_s, comm, gfix, pfix;
  bool split;  // the lists follow the plan (hot: its GPU tokens); false: the plan only goes to plan_out, every
               // pair on the list side (both sets on the same GEMV: plan_layer's decode-sized batches)
};

// One thread, statement by statement the C++ planners of csrc/heteromoe_ext.cpp for G = 1 (additions and
// max only: no contraction, so the doubles are the host's bit for bit). order[0, m): active experts by count
// descending, ties by lower id. Writes take[e] (GPU tokens of each expert).
__device__ void plan_on_device(const DevicePlan& p, const int* count, const int* order, int m, int* take) {
  double pim = p.pfix;
  for (int i = 0; i < m; ++i) pim += p.pim[count[order[i]]];
  const double cm = p.comm, gf = p.gfix;
  double best = fmax(fmax(cm, gf), pim);
  if (p.rule == 0) {
    double read = 0.0, flop = 0.0;
    for (int i = 0; i < m; ++i) {
      const int e = order[i], n = count[e];
      const double n_read = read + p.read_s, n_flop = flop + p.flop[n], n_pim = pim - p.pim[n];
      const double t = fmax(fmax(cm, fmax(n_read, n_flop) + p.launch_s + gf), n_pim);
      if (!(t < best)) break;
      best = t;
      read = n_read;
      flop = n_flop;
      pim = n_pim;
      take[e] = n;
    }
    return;
  }
  int best_m = 0;
  double read = 0.0, flop = 0.0, best_read = 0.0, best_flop = 0.0, best_pim = pim;
  for (int i = 0; i < m; ++i) {
    const int n = count[order[i]];
    read = read + p.read_s;
    flop = flop + p.flop[n];
    pim = pim - p.pim[n];
    const double t = fmax(fmax(cm, fmax(read, flop) + p.launch_s + gf), pim);
    if (t < best) {
      best = t;
      best_m = i + 1;
      best_read = read;
      best_flop = flop;
      best_pim = pim;
    }
  }
  for (int i = 0; i < best_m; ++i) take[order[i]] = count[order[i]];
  int split_e = -1, split_g = 0;
  if (best_m < m) {
    const int e = order[best_m], n = count[e];
    for (int k = 1; k < n; ++k) {
      const double t_gpu = fmax(best_read + p.read_s, best_flop + p.flop[k]) + p.launch_s + gf;
      const double t_pim = best_pim - p.pim[n] + p.pim[n - k];
      const double t = fmax(fmax(cm, t_gpu), t_pim);
      if (t < best) { best = t; split_e = e; split_g = k; }
    }
  }
  if (best_m > 0) {
    const int e = order[best_m - 1], n = count[e];
    for (int k = 1; k < n; ++k) {
      const double t_gpu = fmax(best_read, best_flop - p.flop[n] + p.flop[k]) + p.launch_s + gf;
      const double t_pim = best_pim + p.pim[n - k];
      const double t = fmax(fmax(cm, t_gpu), t_pim);
      if (t < best) { best = t; split_e = e; split_g = k; }
    }
  }
  if (split_e >= 0) take[split_e] = split_g;
}

template <int kThreads>
__global__ void __launch_bounds__(kThreads)
route_prep_kernel(const i64* ids, int n, int num_experts, const int* take_hot, int threshold, int max_cold,
                  int* counts, int* hot_offs, int* hot_pairs, int* cold_pairs, int* cold_expert, int* cold_begin,
                  int* cold_count, int* pair_row, int* meta, long long* err_out, DevicePlan plan, int* plan_out,
                  int segs) {
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage scan_tmp;
  __shared__ int s_bad;
  __shared__ int s_carry[3];
  extern __shared__ int smem[];
  int* s_count = smem;                    // [E]
  int* s_hot = s_count + num_experts;     // [E] hot pairs of each expert
  int* s_hot_off = s_hot + num_experts;   // [E] exclusive
  int* s_cold_off = s_hot_off + num_experts;  // [E] exclusive
  int* s_take = s_cold_off + num_experts;     // [E] the on-device plan's GPU tokens; then [segs][E] (the ranks)
  const int tid = threadIdx.x;
  pdl_wait();     // the routing comes from the kernel before
  pdl_trigger();  // the GEMV may launch now; it waits for this grid before reading its lists
  for (int e = tid; e < num_experts; e += blockDim.x) s_count[e] = 0;
  if (tid == 0) { s_bad = 0; s_carry[0] = s_carry[1] = s_carry[2] = 0; }
  __syncthreads();
  for (int i = tid; i < n; i += blockDim.x) {
    const i64 e = ids[i];
    if (e >= 0 && e < num_experts) atomicAdd(&s_count[e], 1);
    else atomicCAS(&s_bad, 0, i + 1);  // some bad pair; the exact first one is found below
  }
  __syncthreads();
  if (plan.rule >= 0) {  // plan here: Sieve's order by ranks (s_cold_off is scratch until the scans)
    int* s_order = s_cold_off;
    for (int e = tid; e < num_experts; e += blockDim.x) {
      s_take[e] = 0;
      const int c = s_count[e];
      if (c > 0) {
        int r = 0;
        for (int o = 0; o < num_experts; ++o) {
          const int co = s_count[o];
          r += (co > c) || (co == c && o < e);
        }
        s_order[r] = e;
      }
    }
    __syncthreads();
    if (tid == 0) {
      int m = 0, top = 0;
      for (int e = 0; e < num_experts; ++e) {
        m += s_count[e] > 0;
        top = max(top, s_count[e]);
      }
      if (top < plan.table_len) plan_on_device(plan, s_count, s_order, m, s_take);
      else for (int e = 0; e < num_experts; ++e) s_take[e] = s_count[e];  // tables too short: all on the GPU
    }
    __syncthreads();
    if (plan_out)  // [2, E]: the plan's GPU tokens, then the counts (one copy takes both to the host)
      for (int e = tid; e < num_experts; e += blockDim.x) {
        plan_out[e] = s_take[e];
        plan_out[num_experts + e] = s_count[e];
      }
  }
  // scans over experts, in chunks of the block size
  for (int base = 0; base < num_experts; base += blockDim.x) {
    const int e = base + tid;
    int c = 0, h = 0, has_cold = 0;
    if (e < num_experts) {
      c = s_count[e];
      h = plan.rule >= 0 ? (plan.split ? s_take[e] : 0) : take_hot ? min(max(take_hot[e], 0), c) : (c > threshold ? c : 0);
      has_cold = c > h;
      s_hot[e] = h;
    }
    int h_ex, c_ex, k_ex, h_all, c_all, k_all;
    Scan(scan_tmp).ExclusiveSum(h, h_ex, h_all);
    __syncthreads();
    Scan(scan_tmp).ExclusiveSum(c - h, c_ex, c_all);
    __syncthreads();
    Scan(scan_tmp).ExclusiveSum(has_cold, k_ex, k_all);
    if (e < num_experts) {
      s_hot_off[e] = s_carry[0] + h_ex;
      s_cold_off[e] = s_carry[1] + c_ex;
      counts[e] = c;
      hot_offs[e] = s_carry[0] + h_ex + h;
      if (has_cold) {
        const int slot = s_carry[2] + k_ex;
        cold_expert[slot] = e;
        cold_begin[slot] = s_carry[1] + c_ex;
        cold_count[slot] = c - h;
      }
    }
    __syncthreads();
    if (tid == 0) { s_carry[0] += h_all; s_carry[1] += c_all; s_carry[2] += k_all; }
    __syncthreads();
  }
  const int n_hot = s_carry[0], n_cold = s_carry[1], k_cold = s_carry[2];
  for (int s = k_cold + tid; s < max_cold; s += blockDim.x) { cold_count[s] = 0; cold_expert[s] = 0; cold_begin[s] = 0; }
  for (int r = n_hot + tid; r < n; r += blockDim.x) hot_pairs[r] = -1;
  for (int r = n_cold + tid; r < n; r += blockDim.x) cold_pairs[r] = -1;
  // stable ranks in three steps: each of the first `segs` warps ranks the pairs of its own segment (chunks of
  // 32 in pair order) and counts them per expert; an exclusive scan over the segments per expert; each pair's
  // rank = its segment's offset + its rank inside the segment (kept in pair_row meanwhile: the same thread
  // writes and reads it). No block barrier per chunk: at 2048 pairs this took ~12 us one warp after another.
  const int lane = tid & 31, warp = tid >> 5;
  const unsigned lanes_below = (1u << lane) - 1u;
  const int seg_len = ((n + segs - 1) / segs + 31) & ~31;
  const int seg_begin = warp * seg_len, seg_end = min(n, seg_begin + seg_len);
  int* s_seg = s_take + num_experts;  // [segs][E]
  for (int j = tid; j < segs * num_experts; j += blockDim.x) s_seg[j] = 0;
  __syncthreads();
  if (warp < segs) {
    int* seg_count = s_seg + warp * num_experts;
    for (int base = seg_begin; base < seg_end; base += 32) {
      const int i = base + lane;
      const i64 raw = i < seg_end ? ids[i] : -1;
      const bool valid = raw >= 0 && raw < num_experts;
      const int e = valid ? static_cast<int>(raw) : -1;
      const unsigned peers = __match_any_sync(0xffffffffu, e);
      const int rank_in_chunk = __popc(peers & lanes_below);
      if (valid) pair_row[i] = seg_count[e] + rank_in_chunk;
      __syncwarp();
      if (valid && rank_in_chunk == 0) seg_count[e] += __popc(peers);
      __syncwarp();
    }
  }
  __syncthreads();
  for (int e = tid; e < num_experts; e += blockDim.x) {
    int before = 0;
    for (int w = 0; w < segs; ++w) {
      const int c = s_seg[w * num_experts + e];
      s_seg[w * num_experts + e] = before;
      before += c;
    }
  }
  __syncthreads();
  if (warp < segs) {
    for (int i = seg_begin + lane; i < seg_end; i += 32) {
      const i64 raw = ids[i];
      if (raw < 0 || raw >= num_experts) {
        pair_row[i] = -1;
        continue;
      }
      const int e = static_cast<int>(raw);
      const int r = s_seg[warp * num_experts + e] + pair_row[i];
      int row;
      if (r < s_hot[e]) {
        row = s_hot_off[e] + r;
        hot_pairs[row] = i;
      } else {
        const int cr = s_cold_off[e] + (r - s_hot[e]);
        cold_pairs[cr] = i;
        row = n + cr;
      }
      pair_row[i] = row;
    }
  }
  if (s_bad) {  // find the first bad pair (rare path)
    if (tid == 0) {
      int first = 0;
      for (int i = 0; i < n; ++i) {
        const i64 e = ids[i];
        if (e < 0 || e >= num_experts) { first = i + 1; break; }
      }
      s_bad = first;
    }
    __syncthreads();
  }
  if (tid == 0) {
    meta[0] = n_hot; meta[1] = n_cold; meta[2] = k_cold; meta[3] = s_bad;
    if (s_bad && err_out) {  // pinned host memory (mapped under UVA): the host sees it without a copy or a sync
      err_out[1] = static_cast<long long>(ids[s_bad - 1]);
      err_out[0] = s_bad;
      __threadfence_system();
    }
  }
}

static void route_prep_planned(std::uintptr_t ids, int n, int num_experts, std::uintptr_t take_hot, int threshold,
                               int max_cold, std::uintptr_t counts, std::uintptr_t hot_offs, std::uintptr_t hot_pairs,
                               std::uintptr_t cold_pairs, std::uintptr_t cold_expert, std::uintptr_t cold_begin,
                               std::uintptr_t cold_count, std::uintptr_t pair_row, std::uintptr_t meta,
                               std::uintptr_t err_out, DevicePlan plan, std::uintptr_t plan_out, std::uintptr_t stream);

static void route_prep(std::uintptr_t ids, int n, int num_experts, std::uintptr_t take_hot, int threshold, int max_cold,
                       std::uintptr_t counts, std::uintptr_t hot_offs, std::uintptr_t hot_pairs, std::uintptr_t cold_pairs,
                       std::uintptr_t cold_expert, std::uintptr_t cold_begin, std::uintptr_t cold_count,
                       std::uintptr_t pair_row, std::uintptr_t meta, std::uintptr_t err_out, std::uintptr_t stream) {
  DevicePlan none{};
  none.rule = -1;
  route_prep_planned(ids, n, num_experts, take_hot, threshold, max_cold, counts, hot_offs, hot_pairs, cold_pairs,
                     cold_expert, cold_begin, cold_count, pair_row, meta, err_out, none, 0, stream);
}

// route_prep with the plan made on the device (rule 0 sieve, 1 heteromoe; flop/pim: device double tables);
// `split` false: the plan into plan_out only, every pair on the list side.
static void route_prep_plan_lists(std::uintptr_t ids, int n, int num_experts, int max_cold, std::uintptr_t counts,
                                  std::uintptr_t hot_offs, std::uintptr_t hot_pairs, std::uintptr_t cold_pairs,
                                  std::uintptr_t cold_expert, std::uintptr_t cold_begin, std::uintptr_t cold_count,
                                  std::uintptr_t pair_row, std::uintptr_t meta, std::uintptr_t err_out, int rule,
                                  std::uintptr_t flop, std::uintptr_t pim, int table_len, double read_s, double launch_s,
                                  double comm, double gfix, double pfix, std::uintptr_t plan_out, bool split,
                                  std::uintptr_t stream) {
  if (rule != 0 && rule != 1) throw std::invalid_argument("route_prep_plan: rule must be 0 (sieve) or 1 (heteromoe)");
  DevicePlan plan{rule, ptr<const double>(flop), ptr<const double>(pim), table_len, read_s, launch_s, comm, gfix, pfix,
                  split};
  route_prep_planned(ids, n, num_experts, 0, 0, max_cold, counts, hot_offs, hot_pairs, cold_pairs, cold_expert,
                     cold_begin, cold_count, pair_row, meta, err_out, plan, plan_out, stream);
}

static void route_prep_plan(std::uintptr_t ids, int n, int num_experts, int max_cold, std::uintptr_t counts,
                            std::uintptr_t hot_offs, std::uintptr_t hot_pairs, std::uintptr_t cold_pairs,
                            std::uintptr_t cold_expert, std::uintptr_t cold_begin, std::uintptr_t cold_count,
                            std::uintptr_t pair_row, std::uintptr_t meta, std::uintptr_t err_out, int rule,
                            std::uintptr_t flop, std::uintptr_t pim, int table_len, double read_s, double launch_s,
                            double comm, double gfix, double pfix, std::uintptr_t plan_out, std::uintptr_t stream) {
  route_prep_plan_lists(ids, n, num_experts, max_cold, counts, hot_offs, hot_pairs, cold_pairs, cold_expert, cold_begin,
                        cold_count, pair_row, meta, err_out, rule, flop, pim, table_len, read_s, launch_s, comm, gfix,
                        pfix, plan_out, true, stream);
}

static void route_prep_planned(std::uintptr_t ids, int n, int num_experts, std::uintptr_t take_hot, int threshold,
                               int max_cold, std::uintptr_t counts, std::uintptr_t hot_offs, std::uintptr_t hot_pairs,
                               std::uintptr_t cold_pairs, std::uintptr_t cold_expert, std::uintptr_t cold_begin,
                               std::uintptr_t cold_count, std::uintptr_t pair_row, std::uintptr_t meta,
                               std::uintptr_t err_out, DevicePlan plan, std::uintptr_t plan_out, std::uintptr_t stream) {
  if (num_experts <= 0) throw std::invalid_argument("num_experts must be positive, got " + std::to_string(num_experts));
  const bool small = num_experts <= 256 && n <= 256;
  const int threads = small ? 128 : kPrepThreads;
  // shared: five [E] arrays, then one [E] count row per rank segment (a warp each, at least 32 pairs each;
  // fewer where E is large)
  constexpr size_t kMaxShared = 200 * 1024;
  const size_t per_expert = sizeof(int) * static_cast<size_t>(num_experts);
  if (6 * per_expert > kMaxShared) throw std::invalid_argument("route_prep: too many experts " + std::to_string(num_experts));
  const size_t chunks_of_32 = std::max(1, (n + 31) / 32);
  const int segs = static_cast<int>(std::min({static_cast<size_t>(threads / 32), chunks_of_32, kMaxShared / per_expert - 5}));
  const size_t shared = (5 + static_cast<size_t>(segs)) * per_expert;
  if (plan.rule >= 0 && (!plan.flop || !plan.pim || plan.table_len <= 0))
    throw std::invalid_argument("route_prep: a device plan needs its cost tables");
  auto kernel = small ? route_prep_kernel<128> : route_prep_kernel<kPrepThreads>;
  if (shared > 48 * 1024)
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(shared)),
          "route_prep smem");
  launch(kernel, dim3(1), dim3(threads), shared, as_stream(stream),
         ptr<const i64>(ids), n, num_experts, ptr<const int>(take_hot), threshold, max_cold, ptr<int>(counts),
         ptr<int>(hot_offs), ptr<int>(hot_pairs), ptr<int>(cold_pairs), ptr<int>(cold_expert), ptr<int>(cold_begin),
         ptr<int>(cold_count), ptr<int>(pair_row), ptr<int>(meta), ptr<long long>(err_out), plan, ptr<int>(plan_out),
         segs);
  check(cudaGetLastError(), "route_prep launch");
}

// ---------------------------------------------------------------------------------------------------------
// gather_rows: out[r] = x[pairs[r] / k] for the rows whose pair is >= 0 (16-byte copies when aligned).
template <typename V>
__global__ void gather_rows_kernel(const V* x, const int* pairs, int top_k, int row_vecs, V* out) {
  const int r = blockIdx.x;
  const int pair = pairs[r];
  if (pair < 0) return;
  const V* src = x + static_cast<i64>(pair / top_k) * row_vecs;
  V* dst = out + static_cast<i64>(r) * row_vecs;
  for (int j = threadIdx.x; j < row_vecs; j += blockDim.x) dst[j] = src[j];
}

static void gather_rows(std::uintptr_t x, std::uintptr_t pairs, int top_k, int rows, int row_bytes, std::uintptr_t out,
                        std::uintptr_t stream) {
  if (rows == 0) return;
  const int threads = 128;
  if (row_bytes % 16 == 0 && x % 16 == 0 && out % 16 == 0)
    gather_rows_kernel<uint4><<<rows, threads, 0, as_stream(stream)>>>(ptr<const uint4>(x), ptr<const int>(pairs), top_k,
                                                                      row_bytes / 16, ptr<uint4>(out));
  else
    gather_rows_kernel<unsigned char><<<rows, threads, 0, as_stream(stream)>>>(
        ptr<const unsigned char>(x), ptr<const int>(pairs), top_k, row_bytes, ptr<unsigned char>(out));
  check(cudaGetLastError(), "gather_rows launch");
}

// ---------------------------------------------------------------------------------------------------------
// Work item w -> (list entry c, pass p): entries in order, each ceil(count / pass_tokens) items. Every warp
// finds its own (no block barrier): 32 entries per round, a warp scan of their item counts. (expert_mma's
// work items; expert_gemv's entry c on the hot side is item c with one pass per expert.)
__device__ __forceinline__ bool mma_work_item(int w, int lists, int pass_tokens, const int* list_count, const int* offs,
                                              int& c, int& p) {
  const int lane = threadIdx.x & 31;
  int done = 0;
  for (int base = 0; base < lists; base += 32) {
    const int i = base + lane;
    int n = 0;
    if (i < lists) n = offs ? offs[i] - (i ? offs[i - 1] : 0) : list_count[i];
    const int items = (n + pass_tokens - 1) / pass_tokens;
    int incl = items;
#pragma unroll
    for (int off = 1; off < 32; off <<= 1) {
      const int v = __shfl_up_sync(0xffffffffu, incl, off);
      if (lane >= off) incl += v;
    }
    const unsigned past = __ballot_sync(0xffffffffu, done + incl > w);
    if (past) {
      const int first = __ffs(past) - 1;
      const int before = __shfl_sync(0xffffffffu, incl - items, first);
      c = base + first;
      p = w - done - before;
      return true;
    }
    done += __shfl_sync(0xffffffffu, incl, 31);
  }
  return false;
}

// ---------------------------------------------------------------------------------------------------------
// expert_gemv: for each list entry c (blockIdx.y), an expert e with n_c rows from begin_c, out[begin_c + t] =
// W_e x_t for its rows. The entries come from one of three lists (gemv_entry): the compacted cold lists
// (cold_expert / cold_begin / cold_count), every expert's rows by inclusive ends (offs [lists], the hot
// side's hot_offs: entry c is the c-th expert with rows), or the routing itself (pair_ids [grid.y], one
// token: entry c is pair c alone, x row c / top_k, ids checked against [0, lists); no route_prep before).
// Each warp owns kRows output rows; lanes stream 16-byte vectors of the weights (read once, no L1
// allocation) and dot them with the tokens' vectors (kMaxT tokens per pass; more tokens loop).
// silu_chunk: W is [gate; up] ([2f, K]); the warp computes gate row j and up row f + j and writes
// silu(gate) * up with the same roundings as the unfused ops (each linear's output, the SiLU, the product).
// Small blocks (2 warps): a decode batch touches few experts, and many small blocks spread over the SMs
// evenly (8 experts x 24 row blocks of 8 warps left some SMs with twice the work of others).
constexpr int kGemvWarps = 2;
// Rows per warp: 4 for one or two tokens per pass; 2 above, so the accumulators (rows x tokens) stay in
// registers with enough warps resident to keep the loads in flight.
__host__ __device__ constexpr int rows_per_warp(int max_t) { return max_t >= 4 ? 2 : 4; }

// The GEMV's sums: acc[r][t] = each lane's part of row r of the weights . token t (lanes stream 16-byte vectors
// of the weights, read once, and of the tokens); warp_sum then adds the lanes' parts.
// K range [k_begin, k_end) (split-K: one split's range; else the whole row).
template <typename T, int kMaxT, int kW>
__device__ __forceinline__ void gemv_dot(const T* const (&w_row)[kW], const T* const (&x_row)[kMaxT], int nt,
                                         int k_begin, int k_end, float (&acc)[kW][kMaxT]) {
  constexpr int kVec = 16 / sizeof(T);
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int r = 0; r < kW; ++r)
#pragma unroll
    for (int t = 0; t < kMaxT; ++t) acc[r][t] = 0.f;
  for (int k = k_begin + lane * kVec; k < k_end; k += 32 * kVec) {
    uint4 wv[kW];
#pragma unroll
    for (int r = 0; r < kW; ++r) wv[r] = __ldcs(reinterpret_cast<const uint4*>(w_row[r] + k));
    float wf[kW][kVec];  // each weight converted once, whatever the token count
#pragma unroll
    for (int r = 0; r < kW; ++r) {
      const T* ws = reinterpret_cast<const T*>(&wv[r]);
#pragma unroll
      for (int j = 0; j < kVec; ++j) wf[r][j] = to_f<T>(ws[j]);
    }
#pragma unroll
    for (int t = 0; t < kMaxT; ++t) {
      if (t < nt) {
        const uint4 xv = __ldg(reinterpret_cast<const uint4*>(x_row[t] + k));
        const T* xs = reinterpret_cast<const T*>(&xv);
        float xf[kVec];
#pragma unroll
        for (int j = 0; j < kVec; ++j) xf[j] = to_f<T>(xs[j]);
#pragma unroll
        for (int r = 0; r < kW; ++r)
#pragma unroll
          for (int j = 0; j < kVec; ++j) acc[r][t] = fmaf(wf[r][j], xf[j], acc[r][t]);
      }
    }
  }
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Pair c's id is outside [0, num_experts): unless an earlier pair is bad too (that one is reported by its own
// block), [1 + c, id] into err_out (pinned host memory), as route_prep reports the first bad pair.
__device__ void gemv_report_bad_pair(const i64* pair_ids, int c, int num_experts, long long* err_out) {
  for (int i = 0; i < c; ++i)
    if (pair_ids[i] < 0 || pair_ids[i] >= num_experts) return;
  err_out[1] = static_cast<long long>(pair_ids[c]);
  err_out[0] = c + 1;
  __threadfence_system();
}

// The GEMV's body; kSplit: split-K (blockIdx.z: the split; K range [z k_split, (z + 1) k_split) of k_dim), each
// row's fp32 partial sum into partial[z][row of out][out_rows] (rows_out rows per split) instead of `out`.
template <typename T, int kMaxT, bool kSiluChunk, bool kSplit>
__device__ __forceinline__ void expert_gemv_body(const T* x, const int* in_pairs, int top_k, const T* weight,
                                                 const int* cold_expert, const int* cold_begin, const int* cold_count,
                                                 const int* offs, const i64* pair_ids, int lists, long long* err_out,
                                                 int out_rows, int k_dim, bool lists_ready, bool prefetch, T* out,
                                                 int k_split, int rows_out, float* partial) {
  static_assert(!(kSplit && kSiluChunk), "split-K sums need the whole row before the SiLU gate");
  int k_begin = 0, k_end = k_dim;
  if constexpr (kSplit) {
    k_begin = blockIdx.z * k_split;
    k_end = min(k_dim, k_begin + k_split);
    partial += static_cast<i64>(blockIdx.z) * rows_out * out_rows;
  }
  constexpr int kRows = rows_per_warp(kMaxT);
  constexpr int kW = kSiluChunk ? 2 * kRows : kRows;
  const int c = blockIdx.y;
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row0 = (blockIdx.x * kGemvWarps + warp) * kRows;
  if (!lists_ready) pdl_wait();  // the lists (or the routing) come from the kernel just before
  int expert = 0, begin = 0, count = 0;
  if (pair_ids) {
    const i64 id = pair_ids[c];
    if (id < 0 || id >= lists) {  // zero rows (the combine adds nothing for it) and the first bad pair reported
      if (lane < kRows && row0 + lane < out_rows) {
        if constexpr (kSplit) partial[static_cast<i64>(c) * out_rows + row0 + lane] = 0.f;
        else out[static_cast<i64>(c) * out_rows + row0 + lane] = from_f<T>(0.f);
      }
      if (err_out && blockIdx.x == 0 && (!kSplit || blockIdx.z == 0) && threadIdx.x == 0)
        gemv_report_bad_pair(pair_ids, c, lists, err_out);
      return;
    }
    expert = static_cast<int>(id);
    begin = c;
    count = 1;
  } else if (offs) {
    int pass;
    if (!mma_work_item(c, lists, 1 << 30, nullptr, offs, expert, pass)) return;
    begin = expert ? offs[expert - 1] : 0;
    count = offs[expert] - begin;
  } else {
    count = cold_count[c];
    if (count == 0) return;
    expert = cold_expert[c];
    begin = cold_begin[c];
  }
  if (row0 >= out_rows) return;
  const i64 w_rows = kSiluChunk ? 2 * static_cast<i64>(out_rows) : out_rows;
  const T* w_e = weight + static_cast<i64>(expert) * w_rows * k_dim;
  const T* w_row[kW];
#pragma unroll
  for (int r = 0; r < kW; ++r) {
    int row = row0 + (r % kRows);
    if (row >= out_rows) row = out_rows - 1;  // duplicate work, never written
    const i64 wr = (kSiluChunk && r >= kRows) ? row + out_rows : row;
    w_row[r] = w_e + wr * k_dim;
  }
  // When the lists are older than the kernel before (the down projection), ask for the warp's whole weight
  // slice (fire-and-forget L2 prefetches) while that kernel finishes. Prefetching in every GEMV call
  // (HETEROMOE_GEMV_PREFETCH=all) measured slower on H100 for large experts (Mixtral batch 1: 309 us,
  // bench/results/gpu-kernel-times-h100-prefetch-all.json, vs 265 us by default, gpu-kernel-times-h100.json;
  // the slices overflow L2), so by default only the down projection does it.
  if (prefetch || lists_ready) {
    constexpr int kLine = 128 / sizeof(T);
#pragma unroll
    for (int r = 0; r < kW; ++r)
      for (int k = k_begin + lane * kLine; k < k_end; k += 32 * kLine) prefetch_l2(w_row[r] + k);
  }
  if (lists_ready) pdl_wait();
  pdl_trigger();
  for (int t0 = 0; t0 < count; t0 += kMaxT) {
    const int nt = min(kMaxT, count - t0);
    const T* x_row[kMaxT];
#pragma unroll
    for (int t = 0; t < kMaxT; ++t) {
      const int pos = begin + t0 + min(t, nt - 1);
      const int src = in_pairs ? in_pairs[pos] / top_k : pair_ids ? pos / top_k : pos;
      x_row[t] = x + static_cast<i64>(src) * k_dim;
    }
    float acc[kW][kMaxT];
    gemv_dot<T, kMaxT, kW>(w_row, x_row, nt, k_begin, k_end, acc);
#pragma unroll
    for (int t = 0; t < kMaxT; ++t) {
      if (t < nt) {
#pragma unroll
        for (int r = 0; r < kW; ++r) acc[r][t] = warp_sum(acc[r][t]);
        if (lane < kRows) {  // lane r writes row row0 + r (compile-time index via the unrolled select)
          float g = 0.f, u = 0.f;
#pragma unroll
          for (int r = 0; r < kRows; ++r)
            if (lane == r) { g = acc[r][t]; if (kSiluChunk) u = acc[r + (kSiluChunk ? kRows : 0)][t]; }
          const int row = row0 + lane;
          if (row < out_rows) {
            float v;
            if (kSiluChunk) {
              const float gb = to_f<T>(from_f<T>(g));
              const float ub = to_f<T>(from_f<T>(u));
              const float s = to_f<T>(from_f<T>(gb / (1.0f + expf(-gb))));
              v = s * ub;
            } else {
              v = g;
            }
            if constexpr (kSplit) partial[static_cast<i64>(begin + t0 + t) * out_rows + row] = v;
            else out[static_cast<i64>(begin + t0 + t) * out_rows + row] = from_f<T>(v);
          }
        }
      }
    }
  }
}

template <typename T, int kMaxT, bool kSiluChunk>
__global__ void __launch_bounds__(kGemvWarps * 32)
expert_gemv_kernel(const T* x, const int* in_pairs, int top_k, const T* weight, const int* cold_expert,
                   const int* cold_begin, const int* cold_count, const int* offs, const i64* pair_ids, int lists,
                   long long* err_out, int out_rows, int k_dim, bool lists_ready, bool prefetch, T* out) {
  expert_gemv_body<T, kMaxT, kSiluChunk, false>(x, in_pairs, top_k, weight, cold_expert, cold_begin, cold_count, offs,
                                                pair_ids, lists, err_out, out_rows, k_dim, lists_ready, prefetch, out,
                                                0, 0, nullptr);
}

// expert_gemv_kernel split along K (grid.z splits; no SiLU gate): fp32 partial sums, reduced by splitk_reduce.
template <typename T, int kMaxT>
__global__ void __launch_bounds__(kGemvWarps * 32)
expert_gemv_split_kernel(const T* x, const int* in_pairs, int top_k, const T* weight, const int* cold_expert,
                         const int* cold_begin, const int* cold_count, const int* offs, const i64* pair_ids, int lists,
                         long long* err_out, int out_rows, int k_dim, bool lists_ready, bool prefetch, int k_split,
                         int rows_out, float* partial) {
  expert_gemv_body<T, kMaxT, false, true>(x, in_pairs, top_k, weight, cold_expert, cold_begin, cold_count, offs,
                                          pair_ids, lists, err_out, out_rows, k_dim, lists_ready, prefetch, nullptr,
                                          k_split, rows_out, partial);
}

// The list entries of one GEMV launch (see expert_gemv_kernel): the compacted cold lists, `entries` long; or
// offs [num_experts] (`entries`: the most experts that can have rows); or pair_ids [entries], one token, ids
// checked against [0, num_experts) and a bad one reported into err_out (0: not reported).
struct GemvLists {
  std::uintptr_t expert = 0, begin = 0, count = 0, offs = 0, pair_ids = 0, err_out = 0;
  int entries = 0, num_experts = 0;

  static GemvLists cold(std::uintptr_t expert, std::uintptr_t begin, std::uintptr_t count, int entries) {
    GemvLists l;
    l.expert = expert, l.begin = begin, l.count = count, l.entries = entries;
    return l;
  }
  static GemvLists hot(std::uintptr_t offs, int num_experts, int rows) {
    GemvLists l;
    l.offs = offs, l.num_experts = num_experts, l.entries = std::min(num_experts, rows);
    return l;
  }
  static GemvLists pairs(std::uintptr_t ids, int n, int num_experts, std::uintptr_t err_out) {
    GemvLists l;
    l.pair_ids = ids, l.num_experts = num_experts, l.entries = n, l.err_out = err_out;
    return l;
  }
};

// ---------------------------------------------------------------------------------------------------------
// Split-K for long rows (the down projection of experts with a large intermediate size): a projection's K is
// cut into `splits` ranges, each a grid.z slice of the launch, so a layer with few experts and long rows puts
// `splits` times the warps in flight, each streaming a shorter stretch of its rows. Every split writes its fp32
// partial sums into partial [splits][rows][out_rows]; splitk_reduce adds them in split order (fp32, no
// atomics: deterministic, the same bits on every run) and rounds once to the output dtype, as the unsplit
// kernel rounds its fp32 sum. Only the order of the fp32 additions differs from the unsplit kernel.
// K per split is a multiple of kSplitKGrain (every kernel's K step divides it); no split is empty.
constexpr int kSplitKGrain = 256;
struct SplitK {
  int splits = 1;   // splits launched (1: none)
  int k_split = 0;  // K elements per split
  int rows = 0;     // rows of the projection's output (the partials' rows per split)
  std::uintptr_t partial = 0;

  // `requested` splits of K (capped where a split would be shorter than kSplitKGrain); partial: fp32, at least
  // requested x rows x out_rows elements
  static SplitK make(int requested, int k_dim, int rows, std::uintptr_t partial) {
    SplitK s;
    if (requested < 1) throw std::invalid_argument("k_splits must be >= 1, got " + std::to_string(requested));
    if (requested == 1 || k_dim <= kSplitKGrain) return s;
    const int per = (k_dim + requested - 1) / requested;
    const int k_split = (per + kSplitKGrain - 1) / kSplitKGrain * kSplitKGrain;
    if (k_split >= k_dim) return s;
    if (!partial) throw std::invalid_argument("split-K needs a partial-sum buffer");
    s.k_split = k_split;
    s.splits = (k_dim + k_split - 1) / k_split;
    s.rows = rows;
    s.partial = partial;
    return s;
  }
  bool on() const { return splits > 1; }
};

// out[i] = sum over s in order of partial[s][i] (fp32), rounded once to T; 4 elements per thread where aligned.
template <typename T>
__global__ void splitk_reduce_kernel(const float* partial, int splits, i64 n, T* out) {
  pdl_wait();  // the partial sums come from the kernel just before
  pdl_trigger();
  const i64 i = (static_cast<i64>(blockIdx.x) * blockDim.x + threadIdx.x) * 4;
  if (i >= n) return;
  if (i + 4 <= n && n % 4 == 0) {
    float4 acc = *reinterpret_cast<const float4*>(partial + i);
    for (int s = 1; s < splits; ++s) {
      const float4 v = *reinterpret_cast<const float4*>(partial + static_cast<i64>(s) * n + i);
      acc.x = __fadd_rn(acc.x, v.x), acc.y = __fadd_rn(acc.y, v.y), acc.z = __fadd_rn(acc.z, v.z),
      acc.w = __fadd_rn(acc.w, v.w);
    }
    out[i] = from_f<T>(acc.x), out[i + 1] = from_f<T>(acc.y), out[i + 2] = from_f<T>(acc.z),
    out[i + 3] = from_f<T>(acc.w);
    return;
  }
  for (i64 j = i; j < min(n, i + 4); ++j) {
    float acc = partial[j];
    for (int s = 1; s < splits; ++s) acc = __fadd_rn(acc, partial[static_cast<i64>(s) * n + j]);
    out[j] = from_f<T>(acc);
  }
}

static void splitk_reduce(int dtype, const SplitK& split, int out_rows, std::uintptr_t out, cudaStream_t stream) {
  const i64 n = static_cast<i64>(split.rows) * out_rows;
  if (n == 0) return;
  const int threads = 256;
  const dim3 grid(static_cast<unsigned>((n + 4 * threads - 1) / (4 * threads)));
  with_dtype(dtype, "splitk_reduce: unknown dtype code ", [&](auto t) {
    using T = decltype(t);
    launch(splitk_reduce_kernel<T>, grid, dim3(threads), 0, stream, ptr<const float>(split.partial), split.splits, n,
           ptr<T>(out));
  });
  check(cudaGetLastError(), "splitk_reduce launch");
}

// One expert_gemv launch's arguments (host side); split-K where `partial` is set (grid.z splits of k_split).
struct GemvLaunch {
  dim3 grid;
  cudaStream_t stream;
  std::uintptr_t x, in_pairs, weight, out;
  GemvLists lists;
  int top_k, out_rows, k_dim;
  bool lists_ready;
  int k_split = 0, rows_out = 0;
  std::uintptr_t partial = 0;
};

template <typename T, int kMaxT>
static void launch_gemv_t(bool silu, const GemvLaunch& g) {
  const GemvLists& l = g.lists;
  auto go = [&](auto kernel) {
    launch(kernel, g.grid, dim3(kGemvWarps * 32), 0, g.stream, ptr<const T>(g.x), ptr<const int>(g.in_pairs), g.top_k,
           ptr<const T>(g.weight), ptr<const int>(l.expert), ptr<const int>(l.begin), ptr<const int>(l.count),
           ptr<const int>(l.offs), ptr<const i64>(l.pair_ids), l.num_experts, ptr<long long>(l.err_out), g.out_rows,
           g.k_dim, g.lists_ready, gemv_prefetch(), ptr<T>(g.out));
  };
  if (g.partial) {
    launch(expert_gemv_split_kernel<T, kMaxT>, g.grid, dim3(kGemvWarps * 32), 0, g.stream, ptr<const T>(g.x),
           ptr<const int>(g.in_pairs), g.top_k, ptr<const T>(g.weight), ptr<const int>(l.expert),
           ptr<const int>(l.begin), ptr<const int>(l.count), ptr<const int>(l.offs), ptr<const i64>(l.pair_ids),
           l.num_experts, ptr<long long>(l.err_out), g.out_rows, g.k_dim, g.lists_ready, gemv_prefetch(), g.k_split,
           g.rows_out, ptr<float>(g.partial));
    return;
  }
  if (silu) go(expert_gemv_kernel<T, kMaxT, true>);
  else go(expert_gemv_kernel<T, kMaxT, false>);
}

template <typename T>
static void launch_gemv_dtype(int max_tokens, bool silu, const GemvLaunch& g) {
  if (max_tokens <= 1) launch_gemv_t<T, 1>(silu, g);
  else if (max_tokens <= 2) launch_gemv_t<T, 2>(silu, g);
  else if (max_tokens <= 4) launch_gemv_t<T, 4>(silu, g);
  else launch_gemv_t<T, 8>(silu, g);
}

// x: [*, K] input rows (row in_pairs[pos] / top_k, or pos when in_pairs is 0, or pos / top_k for pair_ids
// lists); weight: [E, out_rows (x2 if silu_chunk), K]; out: [*, out_rows]; grid.y = the lists' entries;
// max_tokens: the most tokens an expert can have here (picks the per-pass token tile; more tokens loop).
static void run_gemv(int dtype, std::uintptr_t x, std::uintptr_t in_pairs, int top_k, std::uintptr_t weight,
                     const GemvLists& lists, int out_rows, int k_dim, bool silu_chunk, int max_tokens, bool lists_ready,
                     std::uintptr_t out, std::uintptr_t stream, const SplitK& split = SplitK{}) {
  if (lists.entries <= 0) return;
  if (split.on() && silu_chunk)
    throw std::invalid_argument("expert_gemv: split-K is for projections without the SiLU gate");
  const int vec = dtype == kF32 ? 4 : 8;
  if (k_dim % vec != 0 || x % 16 || weight % 16)
    throw std::invalid_argument("expert_gemv: K = " + std::to_string(k_dim) + " must be a multiple of " +
                                std::to_string(vec) + " and x, weight 16-byte aligned");
  const int tile = max_tokens <= 1 ? 1 : max_tokens <= 2 ? 2 : max_tokens <= 4 ? 4 : 8;
  const int rows_per_block = kGemvWarps * rows_per_warp(tile);
  GemvLaunch g{dim3((out_rows + rows_per_block - 1) / rows_per_block, lists.entries), as_stream(stream), x,
               in_pairs, weight, out, lists, top_k, out_rows, k_dim, lists_ready};
  if (split.on()) {
    g.grid.z = split.splits;
    g.k_split = split.k_split, g.rows_out = split.rows, g.partial = split.partial;
  }
  with_dtype(dtype, "expert_gemv: unknown dtype code ",
             [&](auto t) { launch_gemv_dtype<decltype(t)>(max_tokens, silu_chunk, g); });
  check(cudaGetLastError(), "expert_gemv launch");
  if (split.on()) splitk_reduce(dtype, split, out_rows, out, as_stream(stream));
}

// The Python entry point, expert_mma's list arguments: (cold_expert, cold_begin, cold_count) of length
// `lists`, or offs [lists] (the hot side; `rows` bounds the experts with rows).
static void expert_gemv(int dtype, std::uintptr_t x, std::uintptr_t in_pairs, int top_k, std::uintptr_t weight,
                        std::uintptr_t cold_expert, std::uintptr_t cold_begin, std::uintptr_t cold_count,
                        std::uintptr_t offs, int lists, int rows, int out_rows, int k_dim, bool silu_chunk,
                        int max_tokens, bool lists_ready, std::uintptr_t out, std::uintptr_t stream, int k_splits,
                        std::uintptr_t partial) {
  const GemvLists l = offs ? GemvLists::hot(offs, lists, rows) : GemvLists::cold(cold_expert, cold_begin, cold_count, lists);
  run_gemv(dtype, x, in_pairs, top_k, weight, l, out_rows, k_dim, silu_chunk, max_tokens, lists_ready, out, stream,
           SplitK::make(k_splits, k_dim, rows, partial));
}

// ---------------------------------------------------------------------------------------------------------
// expert_mma: expert_gemv's contract (the same lists, rows read through in_pairs, the SiLU gate of
// [gate; up] with the same roundings) on the tensor cores, for experts with more than a few tokens.
// A warp owns one or two 16-row fragments of weight rows (see mma_warp_rows): the weights are the A operand
// of mma.m16n8k16 (streamed from HBM, no L1 allocation, evict-first, the next K steps in flight while the
// MMAs of these run), the tokens the B operand in tiles of 8 (read through L1: the block's warps share them).
// A block runs one pass of up to kTiles x 8 tokens of one expert; an expert with more tokens is several
// work items (grid.x), next to each other, so the repeated weight reads of a hot expert meet in L2 in part.
// grid.y: blocks of rows.
// The K order of a fragment is permuted (thread q of a quad holds 8 contiguous elements, k 8q..8q+7, of
// each row and each token, one 16-byte load each): the same permutation on both operands leaves every dot
// product a sum over all of K, so only the fp32 summation order differs from the GEMV's.
// bf16 and fp16 (fp32 stays on the GEMV: TF32 would change its numbers); K a multiple of 8; sm_80+.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&c)[4], uint32_t a0, uint32_t a1, uint32_t a2, uint32_t a3, uint32_t b0,
                                          uint32_t b1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<T, __nv_bfloat16>)
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  else
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
#else
  __trap();
#endif
}

// Warp shapes (kFrags 16-row A fragments, kSteps 32-wide K steps per iteration, the loads of the next
// iteration in flight during this one's MMAs): 2 x 2 (32 rows, 128 bytes of each row per iteration) or 1 x 4
// (16 rows, 256 bytes of each row: half the rows in flight per warp, each read in longer runs; the same
// registers). With the gate, a warp's output rows are half its weight rows: with two fragments fragment 0
// holds the gate rows and fragment 1 the matching up rows; with one, rows g (gate) and g + 8 (up) of the
// fragment, so each lane's accumulators hold both halves of its outputs.
__host__ __device__ constexpr int mma_warp_rows(bool silu_chunk, int frags) { return (silu_chunk ? 8 : 16) * frags; }

// A weight vector from HBM, read once: no L1 allocation (the block's token vectors live there) and
// evict-first in L2, which is left to the activations (see the launch choices for what else was measured).
__device__ __forceinline__ uint4 ld_weight(const void* p, std::uint64_t policy) {
  uint4 r;
  asm("ld.global.nc.L1::no_allocate.L2::cache_hint.v4.u32 {%0, %1, %2, %3}, [%4], %5;"
      : "=r"(r.x), "=r"(r.y), "=r"(r.z), "=r"(r.w)
      : "l"(p), "l"(policy));
  return r;
}
__device__ __forceinline__ std::uint64_t evict_first_policy() {
  std::uint64_t policy;
  asm("createpolicy.fractional.L2::evict_first.b64 %0, 1.0;" : "=l"(policy));
  return policy;
}

template <typename T, int kSteps, int kFrags>
__device__ __forceinline__ void mma_load_a(uint4 (&a)[kSteps][kFrags][2], const T* const (&wp)[kFrags][2], int k,
                                           int k_dim, int q, std::uint64_t policy) {
#pragma unroll
  for (int s = 0; s < kSteps; ++s)
#pragma unroll
    for (int fr = 0; fr < kFrags; ++fr)
#pragma unroll
      for (int h = 0; h < 2; ++h)
        a[s][fr][h] = k + 32 * s + 8 * q < k_dim ? ld_weight(wp[fr][h] + k + 32 * s, policy)
                                                 : make_uint4(0, 0, 0, 0);  // K's tail: zeros on both sides
}

// A block's work item: which list entry (expert, its first row, its row count) and which pass of kPass tokens;
// false when the block has nothing to do (every warp of the block agrees).
struct MmaItem {
  int expert, begin, count, t0;
};
__device__ __forceinline__ bool mma_item(int k_pass, const int* list_expert, const int* list_begin,
                                         const int* list_count, const int* offs, int lists, bool passes,
                                         MmaItem& it) {
  int c = blockIdx.x, pass = 0;
  if (passes && !mma_work_item(blockIdx.x, lists, k_pass, list_count, offs, c, pass)) return false;
  if (offs) {  // the hot side's lists: every expert in order, inclusive ends
    it.expert = c;
    it.begin = c ? offs[c - 1] : 0;
    it.count = offs[c] - it.begin;
  } else {
    it.expert = list_expert[c];
    it.begin = list_begin[c];
    it.count = list_count[c];
  }
  it.t0 = pass * k_pass;
  return it.t0 < it.count;
}

// This lane's weight row pointers: the output row each fragment row feeds, and whether it is its up row;
// rows past out_rows are clamped (computed, never written).
template <typename T, bool kSiluChunk, int kFrags>
__device__ __forceinline__ void mma_weight_rows(const T* (&wp)[kFrags][2], const T* weight, int expert, int row0,
                                                int out_rows, int k_dim, int g, int q) {
  const i64 w_rows = kSiluChunk ? 2 * static_cast<i64>(out_rows) : out_rows;
  const T* w_e = weight + static_cast<i64>(expert) * w_rows * k_dim;
#pragma unroll
  for (int fr = 0; fr < kFrags; ++fr)
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const bool up = kSiluChunk && (kFrags == 2 ? fr == 1 : h == 1);
      const int r = kSiluChunk ? (kFrags == 2 ? g + 8 * h : g) : 16 * fr + g + 8 * h;
      const int row = min(row0 + r, out_rows - 1);
      wp[fr][h] = w_e + (up ? row + static_cast<i64>(out_rows) : row) * k_dim + 8 * q;
    }
}

// The MMAs of one K step s (32 wide) for token tile j: the tile's B operand b against every fragment.
template <typename T, int kSteps, int kFrags>
__device__ __forceinline__ void mma_step(float (&acc)[kFrags][4], const uint4 (&a)[kSteps][kFrags][2], int s,
                                         const uint4& b) {
#pragma unroll
  for (int fr = 0; fr < kFrags; ++fr) {
    const uint4& lo = a[s][fr][0];  // fragment row g
    const uint4& hi = a[s][fr][1];  // fragment row g + 8
    mma_16816<T>(acc[fr], lo.x, hi.x, lo.y, hi.y, b.x, b.y);
    mma_16816<T>(acc[fr], lo.z, hi.z, lo.w, hi.w, b.z, b.w);
  }
}

// accumulator i of fragment fr, tile j: fragment row g + 8 (i / 2), token j * 8 + 2 q + i % 2. Output rows:
// without the gate row0 + 16 fr + that row; with it (gate, up) = (fragment 0, fragment 1) at row0 + g + 8 (i / 2),
// or with one fragment (i, i + 2) at row0 + g
template <typename T, int kTiles, bool kSiluChunk, int kFrags>
__device__ __forceinline__ void mma_store(const float (&acc)[kTiles][kFrags][4], const MmaItem& it, int nt, int row0,
                                          int out_rows, int g, int q, T* out) {
  constexpr int kOutFrags = kSiluChunk ? 1 : kFrags;
  constexpr int kOutAcc = kSiluChunk && kFrags == 1 ? 2 : 4;
  const int tiles = (nt + 7) >> 3;
#pragma unroll
  for (int j = 0; j < kTiles; ++j) {
    if (j < tiles) {
#pragma unroll
      for (int fr = 0; fr < kOutFrags; ++fr)
#pragma unroll
        for (int i = 0; i < kOutAcc; ++i) {
          const int tok = j * 8 + 2 * q + (i & 1);
          const int row = row0 + 16 * fr + g + (kOutAcc == 4 ? 8 * (i >> 1) : 0);
          if (tok < nt && row < out_rows) {
            float v = acc[j][fr][i];
            if (kSiluChunk) {
              const float gb = to_f<T>(from_f<T>(v));
              const float ub = to_f<T>(from_f<T>(kFrags == 2 ? acc[j][kFrags - 1][i] : acc[j][0][(i + 2) & 3]));
              const float sg = to_f<T>(from_f<T>(gb / (1.0f + expf(-gb))));
              v = sg * ub;
            }
            out[static_cast<i64>(it.begin + it.t0 + tok) * out_rows + row] = from_f<T>(v);
          }
        }
    }
  }
}

// split-K (no gate): the fp32 sums of this split into partial [row of out][out_rows] (mma_store's layout)
template <int kTiles, int kFrags>
__device__ __forceinline__ void mma_store_partial(const float (&acc)[kTiles][kFrags][4], const MmaItem& it, int nt,
                                                  int row0, int out_rows, int g, int q, float* partial) {
  const int tiles = (nt + 7) >> 3;
#pragma unroll
  for (int j = 0; j < kTiles; ++j) {
    if (j < tiles) {
#pragma unroll
      for (int fr = 0; fr < kFrags; ++fr)
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          const int tok = j * 8 + 2 * q + (i & 1);
          const int row = row0 + 16 * fr + g + 8 * (i >> 1);
          if (tok < nt && row < out_rows)
            partial[static_cast<i64>(it.begin + it.t0 + tok) * out_rows + row] = acc[j][fr][i];
        }
    }
  }
}

template <typename T, int kTiles, bool kSiluChunk, int kWarps, int kFrags, int kSteps>
__global__ void __launch_bounds__(kWarps * 32)
expert_mma_kernel(const T* x, const int* in_pairs, int top_k, const T* weight, const int* list_expert,
                  const int* list_begin, const int* list_count, const int* offs, int lists, bool passes,
                  int out_rows, int k_dim, bool lists_ready, T* out) {
  constexpr int kPass = kTiles * 8;
  constexpr int kRows = mma_warp_rows(kSiluChunk, kFrags);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row0 = (blockIdx.y * kWarps + warp) * kRows;
  if (row0 >= out_rows) return;
  if (!lists_ready) pdl_wait();  // the lists come from the kernel just before
  MmaItem it;
  if (!mma_item(kPass, list_expert, list_begin, list_count, offs, lists, passes, it)) return;
  const int g = lane >> 2, q = lane & 3;
  const T* wp[kFrags][2];
  mma_weight_rows<T, kSiluChunk, kFrags>(wp, weight, it.expert, row0, out_rows, k_dim, g, q);
  uint4 a[kSteps][kFrags][2];
  const std::uint64_t policy = evict_first_policy();
  mma_load_a<T, kSteps, kFrags>(a, wp, 0, k_dim, q, policy);  // weights do not depend on the kernel before
  if (lists_ready) pdl_wait();
  pdl_trigger();
  const int nt = min(kPass, it.count - it.t0);
  const int tiles = (nt + 7) >> 3;
  const T* xp[kTiles];
#pragma unroll
  for (int j = 0; j < kTiles; ++j) {
    const int pos = it.begin + it.t0 + min(j * 8 + g, nt - 1);
    const int src = in_pairs ? in_pairs[pos] / top_k : pos;
    xp[j] = x + static_cast<i64>(src) * k_dim + 8 * q;
  }
  float acc[kTiles][kFrags][4] = {};  // zeros
  for (int k = 0; k < k_dim; k += 32 * kSteps) {
    uint4 b[kSteps][kTiles];  // this iteration's token vectors (L1 / L2), all in flight at once
#pragma unroll
    for (int s = 0; s < kSteps; ++s)
#pragma unroll
      for (int j = 0; j < kTiles; ++j)
        b[s][j] = j < tiles && k + 32 * s + 8 * q < k_dim ? __ldg(reinterpret_cast<const uint4*>(xp[j] + k + 32 * s))
                                                          : make_uint4(0, 0, 0, 0);
    uint4 next[kSteps][kFrags][2];  // the next iteration's weights (HBM), in flight during this one's MMAs
    mma_load_a<T, kSteps, kFrags>(next, wp, k + 32 * kSteps, k_dim, q, policy);
#pragma unroll
    for (int s = 0; s < kSteps; ++s)
#pragma unroll
      for (int j = 0; j < kTiles; ++j)
        if (j < tiles) mma_step<T, kSteps, kFrags>(acc[j], a, s, b[s][j]);
#pragma unroll
    for (int s = 0; s < kSteps; ++s)
#pragma unroll
      for (int fr = 0; fr < kFrags; ++fr)
#pragma unroll
        for (int h = 0; h < 2; ++h) a[s][fr][h] = next[s][fr][h];
  }
  mma_store<T, kTiles, kSiluChunk, kFrags>(acc, it, nt, row0, out_rows, g, q, out);
}

// expert_mma_kernel's loop over one split's K range (kept apart so that expert_mma_kernel's own code stays as
// measured; the two differ only in the K range and the store)
template <typename T, int kTiles, bool kSiluChunk, int kWarps, int kFrags, int kSteps, bool kSplit>
__device__ __forceinline__ void expert_mma_body(const T* x, const int* in_pairs, int top_k, const T* weight,
                                                const int* list_expert, const int* list_begin, const int* list_count,
                                                const int* offs, int lists, bool passes, int out_rows, int k_dim,
                                                bool lists_ready, T* out, int k_split, int rows_out, float* partial) {
  static_assert(!(kSplit && kSiluChunk), "split-K sums need the whole row before the SiLU gate");
  int k_begin = 0, k_end = k_dim;
  if constexpr (kSplit) {
    k_begin = blockIdx.z * k_split;
    k_end = min(k_dim, k_begin + k_split);
    partial += static_cast<i64>(blockIdx.z) * rows_out * out_rows;
  }
  constexpr int kPass = kTiles * 8;
  constexpr int kRows = mma_warp_rows(kSiluChunk, kFrags);
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row0 = (blockIdx.y * kWarps + warp) * kRows;
  if (row0 >= out_rows) return;
  if (!lists_ready) pdl_wait();  // the lists come from the kernel just before
  MmaItem it;
  if (!mma_item(kPass, list_expert, list_begin, list_count, offs, lists, passes, it)) return;
  const int g = lane >> 2, q = lane & 3;
  const T* wp[kFrags][2];
  mma_weight_rows<T, kSiluChunk, kFrags>(wp, weight, it.expert, row0, out_rows, k_dim, g, q);
  uint4 a[kSteps][kFrags][2];
  const std::uint64_t policy = evict_first_policy();
  mma_load_a<T, kSteps, kFrags>(a, wp, k_begin, k_end, q, policy);  // weights do not depend on the kernel before
  if (lists_ready) pdl_wait();
  pdl_trigger();
  const int nt = min(kPass, it.count - it.t0);
  const int tiles = (nt + 7) >> 3;
  const T* xp[kTiles];
#pragma unroll
  for (int j = 0; j < kTiles; ++j) {
    const int pos = it.begin + it.t0 + min(j * 8 + g, nt - 1);
    const int src = in_pairs ? in_pairs[pos] / top_k : pos;
    xp[j] = x + static_cast<i64>(src) * k_dim + 8 * q;
  }
  float acc[kTiles][kFrags][4] = {};  // zeros
  for (int k = k_begin; k < k_end; k += 32 * kSteps) {
    uint4 b[kSteps][kTiles];  // this iteration's token vectors (L1 / L2), all in flight at once
#pragma unroll
    for (int s = 0; s < kSteps; ++s)
#pragma unroll
      for (int j = 0; j < kTiles; ++j)
        b[s][j] = j < tiles && k + 32 * s + 8 * q < k_end ? __ldg(reinterpret_cast<const uint4*>(xp[j] + k + 32 * s))
                                                          : make_uint4(0, 0, 0, 0);
    uint4 next[kSteps][kFrags][2];  // the next iteration's weights (HBM), in flight during this one's MMAs
    mma_load_a<T, kSteps, kFrags>(next, wp, k + 32 * kSteps, k_end, q, policy);
#pragma unroll
    for (int s = 0; s < kSteps; ++s)
#pragma unroll
      for (int j = 0; j < kTiles; ++j)
        if (j < tiles) mma_step<T, kSteps, kFrags>(acc[j], a, s, b[s][j]);
#pragma unroll
    for (int s = 0; s < kSteps; ++s)
#pragma unroll
      for (int fr = 0; fr < kFrags; ++fr)
#pragma unroll
        for (int h = 0; h < 2; ++h) a[s][fr][h] = next[s][fr][h];
  }
  if constexpr (kSplit) mma_store_partial<kTiles, kFrags>(acc, it, nt, row0, out_rows, g, q, partial);
  else mma_store<T, kTiles, kSiluChunk, kFrags>(acc, it, nt, row0, out_rows, g, q, out);
}

// expert_mma_kernel split along K (grid.z splits; no gate): fp32 partial sums, reduced by splitk_reduce
template <typename T, int kTiles, int kWarps, int kFrags, int kSteps>
__global__ void __launch_bounds__(kWarps * 32)
expert_mma_split_kernel(const T* x, const int* in_pairs, int top_k, const T* weight, const int* list_expert,
                        const int* list_begin, const int* list_count, const int* offs, int lists, bool passes,
                        int out_rows, int k_dim, bool lists_ready, int k_split, int rows_out, float* partial) {
  expert_mma_body<T, kTiles, false, kWarps, kFrags, kSteps, true>(
      x, in_pairs, top_k, weight, list_expert, list_begin, list_count, offs, lists, passes, out_rows, k_dim,
      lists_ready, nullptr, k_split, rows_out, partial);
}

// expert_mma_smem: expert_mma for batches above 16 tokens, with the token tile in shared memory and the
// weights two K chunks deep. The block's threads copy each K chunk (kSteps x 32 elements) of its pass's token
// rows into shared memory with cp.async (L2 -> shared, no registers, kStages chunks in flight), and every
// warp reads its B operands from there: the token vectors are fetched once per block instead of once per
// warp and never keep a warp waiting on L2 in its MMA loop. The registers this frees hold a second chunk of
// weights: a step's A registers are refilled with the chunk after next as soon as its MMAs are issued, so
// each warp keeps two chunks of weight loads in flight through its MMAs and the block barrier (expert_mma
// keeps one, and with tens of tokens per expert its MMA phase outlasts the loads in flight). The cost: one
// block barrier per chunk, so every warp of a block computes (rows past out_rows clamped, never written).
// Shared layout: a chunk row is 4 kSteps vectors of 16 bytes (each 8 vectors span all 32 banks); vector v
// of row r is kept at v ^ 4 (r & 1), so the 8 lanes of one 16-byte load phase (rows g, g + 1, vectors 4 s + q)
// hit 8 different bank quads, and the 8 lanes of a copy phase too.
__device__ __forceinline__ void cp_async_16(void* smem, const void* gmem, bool valid) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(gmem), "r"(valid ? 16 : 0) : "memory");
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile("cp.async.wait_group %0;" ::"n"(kPending) : "memory");
#endif
}

template <typename T, int kTiles, bool kSiluChunk, int kWarps, int kFrags, int kSteps, bool kSplit>
__device__ __forceinline__ void expert_mma_smem_body(const T* x, const int* in_pairs, int top_k, const T* weight,
                                                     const int* list_expert, const int* list_begin,
                                                     const int* list_count, const int* offs, int lists, bool passes,
                                                     int out_rows, int k_dim, bool lists_ready, T* out, int k_split,
                                                     int rows_out, float* partial) {
  static_assert(!(kSplit && kSiluChunk), "split-K sums need the whole row before the SiLU gate");
  int k_begin = 0, k_end = k_dim;
  if constexpr (kSplit) {
    k_begin = blockIdx.z * k_split;
    k_end = min(k_dim, k_begin + k_split);
    partial += static_cast<i64>(blockIdx.z) * rows_out * out_rows;
  }
  constexpr int kChunk = 32 * kSteps, kVecs = 4 * kSteps;  // K elements per chunk: kVecs vectors of 8
  constexpr int kPass = kTiles * 8;
  constexpr int kRows = mma_warp_rows(kSiluChunk, kFrags);
  constexpr int kThreads = kWarps * 32;
  constexpr int kCopies = (kPass * kVecs + kThreads - 1) / kThreads;  // 16-byte copies per thread per chunk
  // three chunks in flight where they fit in the 48 KB of static shared memory, else two
  constexpr int kStages = 3 * kPass * kVecs * 16 + kPass * 4 <= 48 * 1024 ? 3 : 2;
  __shared__ __align__(16) uint4 tok[kStages][kPass][kVecs];
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  const int row0 = (blockIdx.y * kWarps + warp) * kRows;
  if (!lists_ready) pdl_wait();  // the lists come from the kernel just before
  MmaItem it;
  if (!mma_item(kPass, list_expert, list_begin, list_count, offs, lists, passes, it)) return;  // the whole block
  const int g = lane >> 2, q = lane & 3;
  const T* wp[kFrags][2];
  mma_weight_rows<T, kSiluChunk, kFrags>(wp, weight, it.expert, row0, out_rows, k_dim, g, q);
  // weights two chunks deep: chunk c in a[c % 2]; a step's registers are refilled with chunk c + 2 as soon as
  // its MMAs are issued, so the loads stay in flight through the MMAs, the barrier and the next chunk
  uint4 a[2][kSteps][kFrags][2];
  const std::uint64_t policy = evict_first_policy();
  mma_load_a<T, kSteps, kFrags>(a[0], wp, k_begin, k_end, q, policy);  // weights do not depend on the kernel before
  mma_load_a<T, kSteps, kFrags>(a[1], wp, k_begin + kChunk, k_end, q, policy);
  if (lists_ready) pdl_wait();
  pdl_trigger();
  const int nt = min(kPass, it.count - it.t0);
  const int tiles = (nt + 7) >> 3;
  // the pass's token rows of x, once per block (rows past nt repeat the last token: computed, never written);
  // this thread copies vector v = threadIdx.x % kVecs of rows (threadIdx.x + i * kThreads) / kVecs, of the
  // tiles that hold tokens
  __shared__ int x_row[kPass];
  for (int r = threadIdx.x; r < tiles * 8; r += kThreads) {
    const int pos = it.begin + it.t0 + min(r, nt - 1);
    x_row[r] = in_pairs ? in_pairs[pos] / top_k : pos;
  }
  __syncthreads();
  const int v = threadIdx.x % kVecs;
  const int chunks = (k_end - k_begin + kChunk - 1) / kChunk;
  auto copy_chunk = [&](int chunk) {
    const int k = k_begin + chunk * kChunk + 8 * v;
    const bool valid = k < k_end;  // K's tail: zeros (the weights' tail is zero too)
#pragma unroll
    for (int i = 0; i < kCopies; ++i) {
      const int r = (threadIdx.x + i * kThreads) / kVecs;
      if (r < tiles * 8)
        cp_async_16(&tok[chunk % kStages][r][v ^ ((r & 1) << 2)], valid ? x + static_cast<i64>(x_row[r]) * k_dim + k : x,
                    valid);
    }
  };
#pragma unroll
  for (int c = 0; c < kStages - 1; ++c) {
    if (c < chunks) copy_chunk(c);
    cp_async_commit();  // one group per chunk, empty ones too: the wait below counts groups
  }
  float acc[kTiles][kFrags][4] = {};  // zeros
  auto run_chunk = [&](auto buffer, int c) {
    constexpr int buf = decltype(buffer)::value;
    cp_async_wait<kStages - 2>();  // this thread's copies of chunk c landed
    __syncthreads();               // everyone's, and chunk c - 1's stage is free (all its readers are past it)
    if (c + kStages - 1 < chunks) copy_chunk(c + kStages - 1);
    cp_async_commit();
    const uint4(&stage)[kPass][kVecs] = tok[c % kStages];
    const int k_next = k_begin + (c + 2) * kChunk;
#pragma unroll
    for (int s = 0; s < kSteps; ++s) {
#pragma unroll
      for (int j = 0; j < kTiles; ++j)
        if (j < tiles) mma_step<T, kSteps, kFrags>(acc[j], a[buf], s, stage[j * 8 + g][(4 * s + q) ^ ((g & 1) << 2)]);
#pragma unroll
      for (int fr = 0; fr < kFrags; ++fr)
#pragma unroll
        for (int h = 0; h < 2; ++h)
          a[buf][s][fr][h] = k_next + 32 * s + 8 * q < k_end ? ld_weight(wp[fr][h] + k_next + 32 * s, policy)
                                                             : make_uint4(0, 0, 0, 0);
    }
  };
  for (int c = 0; c < chunks; c += 2) {
    run_chunk(std::integral_constant<int, 0>{}, c);
    if (c + 1 < chunks) run_chunk(std::integral_constant<int, 1>{}, c + 1);
  }
  cp_async_wait<0>();
  if constexpr (kSplit) mma_store_partial<kTiles, kFrags>(acc, it, nt, row0, out_rows, g, q, partial);
  else mma_store<T, kTiles, kSiluChunk, kFrags>(acc, it, nt, row0, out_rows, g, q, out);
}

template <typename T, int kTiles, bool kSiluChunk, int kWarps, int kFrags, int kSteps>
__global__ void __launch_bounds__(kWarps * 32, 16 / kWarps)  // 16 warps per SM: at most 128 registers
expert_mma_smem_kernel(const T* x, const int* in_pairs, int top_k, const T* weight, const int* list_expert,
                       const int* list_begin, const int* list_count, const int* offs, int lists, bool passes,
                       int out_rows, int k_dim, bool lists_ready, T* out) {
  expert_mma_smem_body<T, kTiles, kSiluChunk, kWarps, kFrags, kSteps, false>(
      x, in_pairs, top_k, weight, list_expert, list_begin, list_count, offs, lists, passes, out_rows, k_dim,
      lists_ready, out, 0, 0, nullptr);
}

// expert_mma_smem_kernel split along K (grid.z splits; no gate): fp32 partial sums, reduced by splitk_reduce
template <typename T, int kTiles, int kWarps, int kFrags, int kSteps>
__global__ void __launch_bounds__(kWarps * 32, 16 / kWarps)
expert_mma_smem_split_kernel(const T* x, const int* in_pairs, int top_k, const T* weight, const int* list_expert,
                             const int* list_begin, const int* list_count, const int* offs, int lists, bool passes,
                             int out_rows, int k_dim, bool lists_ready, int k_split, int rows_out, float* partial) {
  expert_mma_smem_body<T, kTiles, false, kWarps, kFrags, kSteps, true>(
      x, in_pairs, top_k, weight, list_expert, list_begin, list_count, offs, lists, passes, out_rows, k_dim,
      lists_ready, nullptr, k_split, rows_out, partial);
}

// Launch choices. Defaults: the best of H100 sweeps of the Qwen3-30B-A3B layer, gpu-only, graph clock
// (bench/results/gpu-mma-sweep-h100.json, gpu-mma-shapes-h100.json: the command and every variant measured);
// the variables override them, to measure. A launch is chosen by max_tokens, the caller's bound on an
// expert's tokens (the batch for gpu-only), not by the counts, which stay on the device.
//   HETEROMOE_MMA_SMEM: expert_mma_smem from this bound on (default 17; 33; 0 never): 4-tile passes, 4 warps
//     of one 16-row fragment x 4 K steps. With the weights two chunks deep: whole call at 64 / 128 / 256
//     344.8 / 365.5 / 431.8 us against expert_mma's 362.4 / 379.2 / 451.3 (same machine). Measured and
//     dropped (most before the weights went two chunks deep, when 8-tile passes were the best at 350 / 372 /
//     444 us): 2 x 2 warps (386 / 401 / 446 us), 2 warps per block (446 / 475 / 604 us), 8 warps (354 / 376 /
//     445 us); after it, 6- and 8-tile passes spill at 128 registers (8 tiles: 380 / 403 / 472 us), and a
//     createpolicy per weight load instead of one per thread cost 5-8 %.
// expert_mma (bounds up to 16, or every bound with HETEROMOE_MMA_SMEM=0):
//   tokens per pass: the bound rounded up to a tile of 8, at most HETEROMOE_MMA_TILES tiles (1, 2 or 4;
//     default 4: 8 tiles take so many registers that too few warps stay resident, 601 us at 256;
//     also measured and dropped: experts of more than 32 tokens in a second, 8-tile launch beside the
//     first, 502 us at 256, and normal L2 priority for their weights, 464 us; as kept 457 us; also the
//     weights staged through a per-warp shared-memory ring (cp.async, 3 stages) instead of registers:
//     224 / 377 / 524 us at 16 / 64 / 256 against 227 / 363 / 453, it took more registers, not fewer);
//   warp shape, HETEROMOE_MMA_SHAPE: 14 (one fragment, 4 steps) up to 2 tiles, 22 above (one fragment needs
//     twice the token loads per MMA: 1 x 4 228 / 382 / 541 us, 2 x 2 239 / 363 / 454 us);
//   HETEROMOE_MMA_WARPS per block: 4 up to 2 tiles, 2 above (at 4 tiles 4 warps measured 1.3 % slower).
static int env_choice(const char* name, int fallback, std::initializer_list<int> allowed) {
  const char* v = std::getenv(name);
  if (!v) return fallback;
  const int n = std::atoi(v);
  for (int a : allowed)
    if (a == n) return n;
  return fallback;
}
static int mma_tiles(int max_tokens) {
  static const int cap = env_choice("HETEROMOE_MMA_TILES", 4, {1, 2, 4});
  const int need = max_tokens <= 8 ? 1 : max_tokens <= 16 ? 2 : 4;
  return std::min(need, cap);
}
static int mma_warps(int tiles) {
  static const int warps = env_choice("HETEROMOE_MMA_WARPS", 0, {2, 4});
  return warps ? warps : tiles > 2 ? 2 : 4;
}
static int mma_frags(int tiles) {
  static const int shape = env_choice("HETEROMOE_MMA_SHAPE", 0, {22, 14});
  return shape ? shape / 10 : tiles > 2 ? 2 : 1;
}
constexpr int kMmaSmemTiles = 4, kMmaSmemWarps = 4;
static bool mma_smem(int max_tokens) {
  static const int from = env_choice("HETEROMOE_MMA_SMEM", 17, {0, 17, 33});
  return from && max_tokens >= from;
}

// One expert_mma launch's arguments (host side; the kernel takes them as scalars, measured faster than a
// struct: bench/results/gpu-mma-args-struct-ab-h100.json).
struct MmaLaunch {
  dim3 grid;
  cudaStream_t stream;
  std::uintptr_t x, in_pairs, weight, list_expert, list_begin, list_count, offs, out;
  int top_k, lists, out_rows, k_dim;
  bool passes, lists_ready;
  int k_split = 0, rows_out = 0;  // split-K where partial is set (grid.z splits)
  std::uintptr_t partial = 0;
};

// expert_mma_kernel and expert_mma_smem_kernel take the same arguments
template <typename T>
using MmaKernel = void (*)(const T*, const int*, int, const T*, const int*, const int*, const int*, const int*, int,
                           bool, int, int, bool, T*);
template <typename T>
static void launch_mma(MmaKernel<T> kernel, int warps, const MmaLaunch& m) {
  launch(kernel, m.grid, dim3(warps * 32), 0, m.stream, ptr<const T>(m.x), ptr<const int>(m.in_pairs), m.top_k,
         ptr<const T>(m.weight), ptr<const int>(m.list_expert), ptr<const int>(m.list_begin),
         ptr<const int>(m.list_count), ptr<const int>(m.offs), m.lists, m.passes, m.out_rows, m.k_dim, m.lists_ready,
         ptr<T>(m.out));
}
// the split kernels take the same arguments but `out`, then (k_split, rows_out, partial)
template <typename T>
using MmaSplitKernel = void (*)(const T*, const int*, int, const T*, const int*, const int*, const int*, const int*,
                                int, bool, int, int, bool, int, int, float*);
template <typename T>
static void launch_mma_split(MmaSplitKernel<T> kernel, int warps, const MmaLaunch& m) {
  launch(kernel, m.grid, dim3(warps * 32), 0, m.stream, ptr<const T>(m.x), ptr<const int>(m.in_pairs), m.top_k,
         ptr<const T>(m.weight), ptr<const int>(m.list_expert), ptr<const int>(m.list_begin),
         ptr<const int>(m.list_count), ptr<const int>(m.offs), m.lists, m.passes, m.out_rows, m.k_dim, m.lists_ready,
         m.k_split, m.rows_out, ptr<float>(m.partial));
}
template <typename T, int kTiles, bool kSilu, int kWarps, int kFrags>
static void launch_mma_kernel(const MmaLaunch& m) {
  if constexpr (!kSilu)
    if (m.partial)
      return launch_mma_split<T>(expert_mma_split_kernel<T, kTiles, kWarps, kFrags, 4 / kFrags>, kWarps, m);
  launch_mma<T>(expert_mma_kernel<T, kTiles, kSilu, kWarps, kFrags, 4 / kFrags>, kWarps, m);
}

// the run-time choices -> template arguments, one level each
template <typename T, int kTiles, bool kSilu, int kWarps>
static void launch_mma_frags(int frags, const MmaLaunch& m) {
  if (frags == 1) launch_mma_kernel<T, kTiles, kSilu, kWarps, 1>(m);
  else launch_mma_kernel<T, kTiles, kSilu, kWarps, 2>(m);
}
template <typename T, int kTiles, bool kSilu>
static void launch_mma_warps(int warps, int frags, const MmaLaunch& m) {
  if (warps == 4) launch_mma_frags<T, kTiles, kSilu, 4>(frags, m);
  else launch_mma_frags<T, kTiles, kSilu, 2>(frags, m);
}
template <typename T, int kTiles>
static void launch_mma_silu(bool silu, int warps, int frags, const MmaLaunch& m) {
  if (silu) launch_mma_warps<T, kTiles, true>(warps, frags, m);
  else launch_mma_warps<T, kTiles, false>(warps, frags, m);
}
template <typename T>
static void launch_mma_dtype(int tiles, bool silu, int warps, int frags, const MmaLaunch& m) {
  switch (tiles) {
    case 1: return launch_mma_silu<T, 1>(silu, warps, frags, m);
    case 2: return launch_mma_silu<T, 2>(silu, warps, frags, m);
    default: return launch_mma_silu<T, 4>(silu, warps, frags, m);
  }
}

template <typename T, int kTiles, bool kSilu, int kWarps>
static void launch_mma_smem_kernel(const MmaLaunch& m) {
  if constexpr (!kSilu)
    if (m.partial) return launch_mma_split<T>(expert_mma_smem_split_kernel<T, kTiles, kWarps, 1, 4>, kWarps, m);
  launch_mma<T>(expert_mma_smem_kernel<T, kTiles, kSilu, kWarps, 1, 4>, kWarps, m);
}
template <typename T>
static void launch_mma_smem_dtype(bool silu, const MmaLaunch& m) {
  if (silu) launch_mma_smem_kernel<T, kMmaSmemTiles, true, kMmaSmemWarps>(m);
  else launch_mma_smem_kernel<T, kMmaSmemTiles, false, kMmaSmemWarps>(m);
}

static bool mma_supported(int dtype, int k_dim) { return (dtype == kBF16 || dtype == kF16) && k_dim % 8 == 0; }

// expert_gemv's arguments; lists: either (list_expert, list_begin, list_count) of length `lists` (the cold
// side's compacted lists), or offs [lists] inclusive ends of every expert's rows (the hot side's hot_offs,
// list_* ignored). max_tokens: the most tokens an expert can have here; rows: the most rows all the lists
// hold together (the pairs), which bounds the work items.
static void expert_mma(int dtype, std::uintptr_t x, std::uintptr_t in_pairs, int top_k, std::uintptr_t weight,
                       std::uintptr_t list_expert, std::uintptr_t list_begin, std::uintptr_t list_count,
                       std::uintptr_t offs, int lists, int rows, int out_rows, int k_dim, bool silu_chunk,
                       int max_tokens, bool lists_ready, std::uintptr_t out, std::uintptr_t stream,
                       const SplitK& split = SplitK{}) {
  if (lists == 0 || max_tokens <= 0 || rows <= 0) return;
  if (split.on() && silu_chunk)
    throw std::invalid_argument("expert_mma: split-K is for projections without the SiLU gate");
  if (!mma_supported(dtype, k_dim))
    throw std::invalid_argument("expert_mma: bf16/fp16 with K a multiple of 8 only (dtype code " +
                                std::to_string(dtype) + ", K = " + std::to_string(k_dim) + ")");
  if (x % 16 || weight % 16) throw std::invalid_argument("expert_mma: x and weight must be 16-byte aligned");
  const bool smem = mma_smem(max_tokens);
  const int tiles = smem ? kMmaSmemTiles : mma_tiles(max_tokens);
  const int pass = tiles * 8;
  const i64 max_passes = (max_tokens + pass - 1) / pass;
  // items: one per entry when one pass holds any expert; else sum of ceil(n / pass) <= entries + rows / pass
  const i64 items = max_passes == 1 ? lists : std::min<i64>(lists * max_passes, lists + (rows + pass - 1) / pass);
  const int warps = smem ? kMmaSmemWarps : mma_warps(tiles), frags = smem ? 1 : mma_frags(tiles);
  const int block_rows = warps * mma_warp_rows(silu_chunk, frags);
  MmaLaunch m{dim3(static_cast<unsigned>(items), (out_rows + block_rows - 1) / block_rows), as_stream(stream), x,
              in_pairs, weight, list_expert, list_begin, list_count, offs, out, top_k, lists, out_rows, k_dim,
              max_passes > 1, lists_ready};
  if (split.on()) {
    m.grid.z = split.splits;
    m.k_split = split.k_split, m.rows_out = split.rows, m.partial = split.partial;
  }
  if (smem && dtype == kBF16) launch_mma_smem_dtype<__nv_bfloat16>(silu_chunk, m);
  else if (smem) launch_mma_smem_dtype<__half>(silu_chunk, m);
  else if (dtype == kBF16) launch_mma_dtype<__nv_bfloat16>(tiles, silu_chunk, warps, frags, m);
  else launch_mma_dtype<__half>(tiles, silu_chunk, warps, frags, m);
  check(cudaGetLastError(), "expert_mma launch");
  if (split.on()) splitk_reduce(dtype, split, out_rows, out, as_stream(stream));
}

// The Python entry point: expert_mma, its K cut into `k_splits` ranges (1: none) with the fp32 partial sums in
// `partial` (at least k_splits x rows x out_rows floats; 0 when k_splits is 1).
static void expert_mma_entry(int dtype, std::uintptr_t x, std::uintptr_t in_pairs, int top_k, std::uintptr_t weight,
                             std::uintptr_t list_expert, std::uintptr_t list_begin, std::uintptr_t list_count,
                             std::uintptr_t offs, int lists, int rows, int out_rows, int k_dim, bool silu_chunk,
                             int max_tokens, bool lists_ready, std::uintptr_t out, std::uintptr_t stream, int k_splits,
                             std::uintptr_t partial) {
  expert_mma(dtype, x, in_pairs, top_k, weight, list_expert, list_begin, list_count, offs, lists, rows, out_rows, k_dim,
             silu_chunk, max_tokens, lists_ready, out, stream, SplitK::make(k_splits, k_dim, rows, partial));
}

// ---------------------------------------------------------------------------------------------------------
// unpermute: out[t] = sum over slots s of w[t, s] * y[pair_row[t k + s]] in slot order, fp32, each product
// rounded to the output dtype first when round_products (what torch does for bf16 y * bf16 w). pair_row 0:
// y_hot's rows are in pair order (row t k + s).
template <typename T, typename W>
__global__ void unpermute_kernel(const T* y_hot, const T* y_cold, const int* pair_row, const W* weights, int n_pairs,
                                 int top_k, int d, bool round_products, T* out) {
  const int t = blockIdx.x;
  for (int j = threadIdx.x; j < d; j += blockDim.x) {
    float acc = 0.f;
    for (int s = 0; s < top_k; ++s) {
      const int p = t * top_k + s;
      const int row = pair_row ? pair_row[p] : p;
      if (row < 0) continue;
      const T* src = row < n_pairs ? y_hot + static_cast<i64>(row) * d : y_cold + static_cast<i64>(row - n_pairs) * d;
      float prod = __fmul_rn(to_f<T>(src[j]), to_f<W>(weights[p]));
      if (round_products) prod = to_f<T>(from_f<T>(prod));
      acc = __fadd_rn(acc, prod);
    }
    out[static_cast<i64>(t) * d + j] = from_f<T>(acc);
  }
}

// The same sums, one 16-byte vector of the row per thread, every slot's load in flight at once.
constexpr int kMaxSlots = 16;
template <typename T, typename W>
__global__ void unpermute_vec_kernel(const T* y_hot, const T* y_cold, const int* pair_row, const W* weights, int n_pairs,
                                     int top_k, int d, bool round_products, T* out) {
  constexpr int kVec = 16 / sizeof(T);
  const int t = blockIdx.x;
  const int j0 = (blockIdx.y * blockDim.x + threadIdx.x) * kVec;
  int rows[kMaxSlots];
  float ws[kMaxSlots];
#pragma unroll
  for (int s = 0; s < kMaxSlots; ++s) {  // written before the kernel just before this one (see pdl_wait)
    rows[s] = s < top_k ? (pair_row ? pair_row[t * top_k + s] : t * top_k + s) : -1;
    ws[s] = s < top_k ? to_f<W>(weights[t * top_k + s]) : 0.f;
  }
  pdl_wait();
  pdl_trigger();
  if (j0 >= d) return;
  uint4 v[kMaxSlots];
#pragma unroll
  for (int s = 0; s < kMaxSlots; ++s) {
    if (rows[s] >= 0) {
      const T* src = rows[s] < n_pairs ? y_hot + static_cast<i64>(rows[s]) * d : y_cold + static_cast<i64>(rows[s] - n_pairs) * d;
      v[s] = *reinterpret_cast<const uint4*>(src + j0);
    }
  }
  float acc[kVec];
#pragma unroll
  for (int j = 0; j < kVec; ++j) acc[j] = 0.f;
#pragma unroll
  for (int s = 0; s < kMaxSlots; ++s) {
    if (rows[s] >= 0) {
      const T* vs = reinterpret_cast<const T*>(&v[s]);
#pragma unroll
      for (int j = 0; j < kVec; ++j) {
        float prod = __fmul_rn(to_f<T>(vs[j]), ws[s]);
        if (round_products) prod = to_f<T>(from_f<T>(prod));
        acc[j] = __fadd_rn(acc[j], prod);
      }
    }
  }
  uint4 o;
  T* os = reinterpret_cast<T*>(&o);
#pragma unroll
  for (int j = 0; j < kVec; ++j) os[j] = from_f<T>(acc[j]);
  *reinterpret_cast<uint4*>(out + static_cast<i64>(t) * d + j0) = o;
}

template <typename T>
static void launch_unpermute_t(int w_dtype, int tokens, cudaStream_t s, std::uintptr_t y_hot, std::uintptr_t y_cold,
                               std::uintptr_t pair_row, std::uintptr_t weights, int n_pairs, int top_k, int d,
                               bool round_products, std::uintptr_t out) {
  constexpr int kVec = 16 / sizeof(T);
  if (top_k <= kMaxSlots && d % kVec == 0 && (y_hot | y_cold | out) % 16 == 0) {
    const int threads = 64;
    const dim3 grid(tokens, (d / kVec + threads - 1) / threads);
    return with_dtype(w_dtype, "unpermute: unknown weight dtype code ", [&](auto w) {
      using Wt = decltype(w);
      launch(unpermute_vec_kernel<T, Wt>, grid, dim3(threads), 0, s, ptr<const T>(y_hot), ptr<const T>(y_cold),
             ptr<const int>(pair_row), ptr<const Wt>(weights), n_pairs, top_k, d, round_products, ptr<T>(out));
    });
  }
  const int threads = d >= 1024 ? 256 : 128;
  with_dtype(w_dtype, "unpermute: unknown weight dtype code ", [&](auto w) {
    using Wt = decltype(w);
    unpermute_kernel<T, Wt><<<tokens, threads, 0, s>>>(ptr<const T>(y_hot), ptr<const T>(y_cold), ptr<const int>(pair_row),
                                                       ptr<const Wt>(weights), n_pairs, top_k, d, round_products, ptr<T>(out));
  });
}

static void unpermute(int dtype, int w_dtype, std::uintptr_t y_hot, std::uintptr_t y_cold, std::uintptr_t pair_row,
                      std::uintptr_t weights, int tokens, int top_k, int d, bool round_products, std::uintptr_t out,
                      std::uintptr_t stream) {
  if (tokens == 0) return;
  const int n_pairs = tokens * top_k;
  cudaStream_t s = as_stream(stream);
  with_dtype(dtype, "unpermute: unknown dtype code ", [&](auto t) {
    launch_unpermute_t<decltype(t)>(w_dtype, tokens, s, y_hot, y_cold, pair_row, weights, n_pairs, top_k, d,
                                    round_products, out);
  });
  check(cudaGetLastError(), "unpermute launch");
}

// ---------------------------------------------------------------------------------------------------------
// expert_gemv_combine: one token's down projection and combine in one kernel (gemv_layer's direct mode,
// top_k <= kMaxSlots). A block owns rows_per_warp(1) output rows and has one warp per slot s, which computes
// those rows of y_s = W_{e_s} h_s (e_s read from the routing, checked: a bad id's y_s is zero, as the direct
// GEMV writes it); the block then sums w_s * y_s over the slots in slot order with unpermute's roundings (y_s
// rounded to T as it would be stored, each product to T when round_products), so the output is that of the
// down GEMV + unpermute bit for bit (the same lanes' sums in the same order), with neither y in memory nor
// a launch of its own on a decode step's critical path.
template <typename T, typename W>
__global__ void __launch_bounds__(kMaxSlots * 32)
expert_gemv_combine_kernel(const T* h, const T* weight, const i64* pair_ids, int top_k, int num_experts,
                           const W* weights, int out_rows, int k_dim, bool round_products, T* out) {
  constexpr int kRows = rows_per_warp(1);
  constexpr int kLine = 128 / sizeof(T);
  __shared__ float s_y[kMaxSlots][kRows];
  const int lane = threadIdx.x & 31, slot = threadIdx.x >> 5;
  const int row0 = blockIdx.x * kRows;
  const i64 id = pair_ids[slot];  // the routing is older than the up projection just before
  const bool ok = id >= 0 && id < num_experts;
  const T* w_e = weight + (ok ? id : 0) * static_cast<i64>(out_rows) * k_dim;
  const T* w_row[kRows];
#pragma unroll
  for (int r = 0; r < kRows; ++r) w_row[r] = w_e + static_cast<i64>(min(row0 + r, out_rows - 1)) * k_dim;
  if (ok)  // the warp's weight slice into L2 while the up projection finishes (as the down GEMV does)
#pragma unroll
    for (int r = 0; r < kRows; ++r)
      for (int k = lane * kLine; k < k_dim; k += 32 * kLine) prefetch_l2(w_row[r] + k);
  pdl_wait();  // h comes from the kernel just before
  pdl_trigger();
  const T* x_row[1] = {h + static_cast<i64>(slot) * k_dim};
  float acc[kRows][1];
  if (ok) gemv_dot<T, 1, kRows>(w_row, x_row, 1, 0, k_dim, acc);  // ok is the same for the whole warp
#pragma unroll
  for (int r = 0; r < kRows; ++r) {
    const float v = ok ? warp_sum(acc[r][0]) : 0.f;
    if (lane == r) s_y[slot][r] = to_f<T>(from_f<T>(v));
  }
  __syncthreads();
  const int row = row0 + static_cast<int>(threadIdx.x);
  if (threadIdx.x < kRows && row < out_rows) {
    float sum = 0.f;
    for (int s = 0; s < top_k; ++s) {
      float prod = __fmul_rn(s_y[s][threadIdx.x], to_f<W>(weights[s]));
      if (round_products) prod = to_f<T>(from_f<T>(prod));
      sum = __fadd_rn(sum, prod);
    }
    out[row] = from_f<T>(sum);
  }
}

// Where the one-token path combines in the down projection: up to kMaxSlots slots and rows of at most
// kCombineMaxK elements; HETEROMOE_GEMV_COMBINE=0 never combines, =2 always (up to kMaxSlots slots; both for
// A/B). Measured on the H100 with the combine for every shape (bench/results/gpu-layer-h100.json; without it:
// HETEROMOE_GEMV_COMBINE=0 on the same machine, not kept): Qwen3-30B-A3B (top-8, K 768) batch 1 32.8 -> 28.9 us, Mixtral-8x7B
// (top-2, K 14336) 262.8 -> 275.6 us: with a warp per slot, a block of a top-2 layer has two warps, each
// streaming a 28 KB row, where the down GEMV runs four warps per block. The bound between the two measured
// shapes (4096) is a choice, not a measurement.
constexpr int kCombineMaxK = 4096;

static bool gemv_combine(int top_k, int k_dim) {
  static const int mode = env_choice("HETEROMOE_GEMV_COMBINE", 1, {0, 1, 2});
  return mode != 0 && top_k <= kMaxSlots && (mode == 2 || k_dim <= kCombineMaxK);
}

template <typename T>
static void launch_gemv_combine_t(int w_dtype, std::uintptr_t h, std::uintptr_t weight, std::uintptr_t ids, int top_k,
                                  int num_experts, std::uintptr_t weights, int out_rows, int k_dim,
                                  bool round_products, std::uintptr_t out, cudaStream_t s) {
  const dim3 grid((out_rows + rows_per_warp(1) - 1) / rows_per_warp(1)), block(top_k * 32);
  with_dtype(w_dtype, "expert_gemv_combine: unknown weight dtype code ", [&](auto w) {
    using Wt = decltype(w);
    launch(expert_gemv_combine_kernel<T, Wt>, grid, block, 0, s, ptr<const T>(h), ptr<const T>(weight),
           ptr<const i64>(ids), top_k, num_experts, ptr<const Wt>(weights), out_rows, k_dim, round_products,
           ptr<T>(out));
  });
}

static void expert_gemv_combine(int dtype, int w_dtype, std::uintptr_t h, std::uintptr_t weight, std::uintptr_t ids,
                                int top_k, int num_experts, std::uintptr_t weights, int out_rows, int k_dim,
                                bool round_products, std::uintptr_t out, std::uintptr_t stream) {
  cudaStream_t s = as_stream(stream);
  with_dtype(dtype, "expert_gemv_combine: unknown dtype code ", [&](auto t) {
    launch_gemv_combine_t<decltype(t)>(w_dtype, h, weight, ids, top_k, num_experts, weights, out_rows, k_dim,
                                       round_products, out, s);
  });
  check(cudaGetLastError(), "expert_gemv_combine launch");
}

// ---------------------------------------------------------------------------------------------------------
// gemv_layer: a whole layer call on the GEMV path in one host call (every expert on the list side):
// route_prep -> GEMV [gate; up] with the SiLU gate -> GEMV down -> unpermute; from `mma_min_tokens` tokens
// on (0: never) the two projections run on expert_mma, the same contract on the tensor cores. One workspace holds the
// routing lists (int32), then h [P, f] and y [P, d] (16-byte aligned). Cuts the host's work per layer to
// one call; the Python path does the same in four. `direct` (one token only): no route_prep; the GEMVs read
// each pair's expert from the routing (a token's k experts are distinct, so each is still read once), and
// the down projection combines the slots itself (one_token_tail; see gemv_combine for where a GEMV and
// unpermute in pair order run instead): two kernels on the critical path of a decode step instead of four,
// and no counts in the workspace.
static size_t align16(size_t n) { return (n + 15) / 16 * 16; }

// A layer call's routing lists at the start of a one-call workspace, in route_prep's order (RoutePrep's in
// Python): counts, hot_offs [E], hot_pairs, cold_pairs [n], cold_expert, cold_begin, cold_count [max_cold],
// pair_row [n], meta [4]; `end` is the first 16-byte-aligned address after them.
struct LayerLists {
  std::uintptr_t counts, hot_offs, hot_pairs, cold_pairs, cold_expert, cold_begin, cold_count, pair_row, meta, end;

  static size_t bytes(int n, int num_experts) {
    const int max_cold = std::min(num_experts, n);
    return align16((2 * static_cast<size_t>(num_experts) + 3 * static_cast<size_t>(n) + 3 * max_cold + 4) * sizeof(int));
  }
  LayerLists(std::uintptr_t workspace, int n, int num_experts) {
    const std::uintptr_t i = sizeof(int);
    const int max_cold = std::min(num_experts, n);
    counts = workspace;
    hot_offs = counts + i * num_experts;
    hot_pairs = hot_offs + i * num_experts;
    cold_pairs = hot_pairs + i * n;
    cold_expert = cold_pairs + i * n;
    cold_begin = cold_expert + i * max_cold;
    cold_count = cold_begin + i * max_cold;
    pair_row = cold_count + i * max_cold;
    meta = pair_row + i * n;
    end = workspace + bytes(n, num_experts);
  }
};

// One token's projections and combine, reading each pair's expert from the routing (a token's k experts are
// distinct, so each is still read once): GEMV [gate; up] with the SiLU gate into h (one row per pair), then
// the down projection combining the slots (expert_gemv_combine), or where gemv_combine says no, a down GEMV
// into y and unpermute in pair order. A bad id's rows are zero (it adds nothing); `err_out` (0: none) gets
// the first bad pair. The workspace holds h [k, f], then y [k, d].
static void one_token_tail(int dtype, int w_dtype, std::uintptr_t hidden, std::uintptr_t ids, int top_k,
                           int num_experts, std::uintptr_t up_weight, std::uintptr_t down_weight, int d, int f,
                           std::uintptr_t weights, bool round_products, std::uintptr_t workspace, std::uintptr_t out,
                           std::uintptr_t err_out, std::uintptr_t stream, int down_k_splits = 1) {
  const int elem = dtype == kF32 ? 4 : 2;
  const std::uintptr_t h = workspace;
  run_gemv(dtype, hidden, 0, top_k, up_weight, GemvLists::pairs(ids, top_k, num_experts, err_out), f, d, true, 1,
           false, h, stream);
  if (gemv_combine(top_k, f)) {  // the down projection and the combine in one kernel
    expert_gemv_combine(dtype, w_dtype, h, down_weight, ids, top_k, num_experts, weights, d, f, round_products, out,
                        stream);
    return;
  }
  // h has one row per pair: top_k 1
  const std::uintptr_t y = h + align16(static_cast<size_t>(top_k) * f * elem);
  const std::uintptr_t partial = y + align16(static_cast<size_t>(top_k) * d * elem);  // split-K's sums
  run_gemv(dtype, h, 0, 1, down_weight, GemvLists::pairs(ids, top_k, num_experts, 0), d, f, false, 1, true, y, stream,
           SplitK::make(down_k_splits, f, top_k, partial));
  unpermute(dtype, w_dtype, y, y, 0, weights, 1, top_k, d, round_products, out, stream);
}

// down_k_splits > 1: room for the down projection's split-K partial sums (fp32 [splits][P][d]) after y
static size_t gemv_layer_workspace(int n_pairs, int num_experts, int d, int f, int elem_bytes, int down_k_splits) {
  const size_t partial =
      down_k_splits > 1 ? align16(static_cast<size_t>(down_k_splits) * n_pairs * d * sizeof(float)) : 0;
  return LayerLists::bytes(n_pairs, num_experts) + align16(static_cast<size_t>(n_pairs) * f * elem_bytes) +
         align16(static_cast<size_t>(n_pairs) * d * elem_bytes) + partial;
}

static void gemv_layer(int dtype, int w_dtype, std::uintptr_t hidden, std::uintptr_t ids, int tokens, int top_k,
                       int num_experts, std::uintptr_t up_weight, std::uintptr_t down_weight, int d, int f,
                       std::uintptr_t weights, bool round_products, int mma_min_tokens, bool direct,
                       std::uintptr_t workspace, std::uintptr_t out, std::uintptr_t err_out, std::uintptr_t stream,
                       int down_k_splits) {
  const int n = tokens * top_k;
  if (n == 0) return;
  if (down_k_splits < 1)
    throw std::invalid_argument("gemv_layer: down_k_splits must be >= 1, got " + std::to_string(down_k_splits));
  const int elem = dtype == kF32 ? 4 : 2;
  if (direct) {
    if (tokens != 1) throw std::invalid_argument("gemv_layer: direct is for one token, got " + std::to_string(tokens));
    one_token_tail(dtype, w_dtype, hidden, ids, top_k, num_experts, up_weight, down_weight, d, f, weights,
                   round_products, workspace, out, err_out, stream, down_k_splits);
    return;
  }
  const int max_cold = std::min(num_experts, n);
  const LayerLists l(workspace, n, num_experts);
  const std::uintptr_t h = l.end;
  const std::uintptr_t y = h + align16(static_cast<size_t>(n) * f * elem);
  const SplitK down_split = SplitK::make(down_k_splits, f, n, y + align16(static_cast<size_t>(n) * d * elem));
  route_prep(ids, n, num_experts, 0, n /* nothing is hot */, max_cold, l.counts, l.hot_offs, l.hot_pairs, l.cold_pairs,
             l.cold_expert, l.cold_begin, l.cold_count, l.pair_row, l.meta, err_out, stream);
  if (mma_min_tokens > 0 && tokens >= mma_min_tokens && mma_supported(dtype, d) && mma_supported(dtype, f)) {
    // an expert has at most `tokens` tokens (a token's top-k experts are distinct)
    expert_mma(dtype, hidden, l.cold_pairs, top_k, up_weight, l.cold_expert, l.cold_begin, l.cold_count, 0, max_cold,
               n, f, d, true, tokens, false, h, stream);
    expert_mma(dtype, h, 0, top_k, down_weight, l.cold_expert, l.cold_begin, l.cold_count, 0, max_cold, n, d, f, false,
               tokens, true, y, stream, down_split);
  } else {
    const int max_tokens = std::min(tokens, 8);
    const GemvLists lists = GemvLists::cold(l.cold_expert, l.cold_begin, l.cold_count, max_cold);
    run_gemv(dtype, hidden, l.cold_pairs, top_k, up_weight, lists, f, d, true, max_tokens, false, h, stream);
    run_gemv(dtype, h, 0, top_k, down_weight, lists, d, f, false, max_tokens, true, y, stream, down_split);
  }
  unpermute(dtype, w_dtype, y, y, l.pair_row, weights, tokens, top_k, d, round_products, out, stream);
}

// ---------------------------------------------------------------------------------------------------------
// plan_layer: a layer call of a plan policy, planned on the device, in one host call: route_prep with the
// policy's planner (the plan's GPU tokens and the counts per expert into plan_out, [2, E]) -> the GPU set on
// expert_mma (main stream) beside the PIM set on the GEMV (its functional stand-in, on `side`), joined ->
// unpermute. Without `hot_mma` (decode-sized batches, where the GPU set runs on the GEMV too) both sets are
// entries of one GEMV launch per projection: the plan goes to plan_out only, and the call is gemv_layer's
// four kernels, route_prep planning; one token (the plan cannot change a row) is route_prep planning and
// gemv_layer's one-token tail, three kernels. The workspace holds gemv_layer's lists, then h and y for each side
// (plan_layer_workspace). The fork and the join are event record / wait pairs, so the call also captures in
// a CUDA graph.
// down_k_splits > 1: room for the GPU set's down projection split-K partial sums (fp32 [splits][P][d]) at the end
static size_t plan_layer_workspace(int n_pairs, int num_experts, int d, int f, int elem_bytes, int down_k_splits) {
  const size_t partial =
      down_k_splits > 1 ? align16(static_cast<size_t>(down_k_splits) * n_pairs * d * sizeof(float)) : 0;
  return LayerLists::bytes(n_pairs, num_experts) + 2 * align16(static_cast<size_t>(n_pairs) * f * elem_bytes) +
         2 * align16(static_cast<size_t>(n_pairs) * d * elem_bytes) + partial;
}

struct ForkJoin {  // one pair of events per device, made once (disable timing: record / wait only)
  cudaEvent_t fork, join;
};
static ForkJoin fork_join_events() {
  static std::unordered_map<int, ForkJoin> made;
  static std::mutex lock;
  int dev = 0;
  check(cudaGetDevice(&dev), "plan_layer: cudaGetDevice");
  std::lock_guard<std::mutex> guard(lock);
  auto it = made.find(dev);
  if (it != made.end()) return it->second;
  ForkJoin ev{};
  check(cudaEventCreateWithFlags(&ev.fork, cudaEventDisableTiming), "plan_layer: event");
  check(cudaEventCreateWithFlags(&ev.join, cudaEventDisableTiming), "plan_layer: event");
  made[dev] = ev;
  return ev;
}

static void plan_layer(int dtype, int w_dtype, std::uintptr_t hidden, std::uintptr_t ids, int tokens, int top_k,
                       int num_experts, std::uintptr_t up_weight, std::uintptr_t down_weight, int d, int f,
                       std::uintptr_t weights, bool round_products, int rule, std::uintptr_t flop, std::uintptr_t pim,
                       int table_len, double read_s, double launch_s, double comm, double gfix, double pfix,
                       std::uintptr_t plan_out, bool hot_mma, std::uintptr_t workspace, std::uintptr_t out,
                       std::uintptr_t err_out, std::uintptr_t stream, std::uintptr_t side, int down_k_splits) {
  const int n = tokens * top_k;
  if (n == 0) return;
  if (down_k_splits < 1)
    throw std::invalid_argument("plan_layer: down_k_splits must be >= 1, got " + std::to_string(down_k_splits));
  if (hot_mma && (!mma_supported(dtype, d) || !mma_supported(dtype, f)))
    throw std::invalid_argument("plan_layer: the GPU set runs on expert_mma: bf16/fp16 with d, f multiples of 8");
  const int elem = dtype == kF32 ? 4 : 2;
  const int max_cold = std::min(num_experts, n);
  const LayerLists l(workspace, n, num_experts);
  const size_t hf = align16(static_cast<size_t>(n) * f * elem), yd = align16(static_cast<size_t>(n) * d * elem);
  const std::uintptr_t h_hot = l.end, h_cold = h_hot + hf;
  const std::uintptr_t y_hot = h_cold + hf, y_cold = y_hot + yd;
  route_prep_plan_lists(ids, n, num_experts, max_cold, l.counts, l.hot_offs, l.hot_pairs, l.cold_pairs, l.cold_expert,
                        l.cold_begin, l.cold_count, l.pair_row, l.meta, err_out, rule, flop, pim, table_len, read_s,
                        launch_s, comm, gfix, pfix, plan_out, hot_mma, stream);
  if (!hot_mma && tokens == 1) {  // the plan changes no row: one token's path as gpu-only runs it (the ids were
                                  // checked, and a bad one reported, by route_prep)
    one_token_tail(dtype, w_dtype, hidden, ids, top_k, num_experts, up_weight, down_weight, d, f, weights,
                   round_products, l.end, out, 0, stream);
    return;
  }
  if (!hot_mma) {  // both sets on the GEMV: one launch per projection runs them all, no fork (rows bit for bit
                   // those of two launches: a row's sums do not depend on the other rows of its launch)
    const GemvLists all = GemvLists::cold(l.cold_expert, l.cold_begin, l.cold_count, max_cold);
    run_gemv(dtype, hidden, l.cold_pairs, top_k, up_weight, all, f, d, true, tokens, false, h_cold, stream);
    run_gemv(dtype, h_cold, 0, top_k, down_weight, all, d, f, false, tokens, true, y_cold, stream);
    unpermute(dtype, w_dtype, y_cold, y_cold, l.pair_row, weights, tokens, top_k, d, round_products, out, stream);
    return;
  }
  const ForkJoin ev = fork_join_events();
  check(cudaEventRecord(ev.fork, as_stream(stream)), "plan_layer: fork");
  check(cudaStreamWaitEvent(as_stream(side), ev.fork, 0), "plan_layer: fork");
  // the PIM set (a cold expert has at most `tokens` tokens) on the side stream
  const GemvLists cold = GemvLists::cold(l.cold_expert, l.cold_begin, l.cold_count, max_cold);
  run_gemv(dtype, hidden, l.cold_pairs, top_k, up_weight, cold, f, d, true, tokens, false, h_cold, side);
  run_gemv(dtype, h_cold, 0, top_k, down_weight, cold, d, f, false, tokens, true, y_cold, side);
  // the GPU set: every expert's hot rows (hot_offs), read through hot_pairs
  expert_mma(dtype, hidden, l.hot_pairs, top_k, up_weight, 0, 0, 0, l.hot_offs, num_experts, n, f, d, true, tokens,
             false, h_hot, stream);
  const SplitK hot_split = SplitK::make(down_k_splits, f, n, y_cold + yd);  // split-K's sums after y_cold
  expert_mma(dtype, h_hot, 0, top_k, down_weight, 0, 0, 0, l.hot_offs, num_experts, n, d, f, false, tokens, true,
             y_hot, stream, hot_split);
  check(cudaEventRecord(ev.join, as_stream(side)), "plan_layer: join");
  check(cudaStreamWaitEvent(as_stream(stream), ev.join, 0), "plan_layer: join");
  unpermute(dtype, w_dtype, y_hot, y_cold, l.pair_row, weights, tokens, top_k, d, round_products, out, stream);
}

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "heteromoe CUDA kernels: routing histogram/permute/unpermute and the cold-expert GEMV (raw pointers)";
  m.attr("F32") = static_cast<int>(kF32);
  m.attr("BF16") = static_cast<int>(kBF16);
  m.attr("F16") = static_cast<int>(kF16);
  m.attr("ROUTE_PREP_THREADS") = kPrepThreads;
  m.def("expert_histogram", &expert_histogram, py::arg("ids"), py::arg("n"), py::arg("num_experts"), py::arg("counts"),
        py::arg("stream"));
  m.def("route_prep", &route_prep, py::arg("ids"), py::arg("n"), py::arg("num_experts"), py::arg("take_hot"),
        py::arg("threshold"), py::arg("max_cold"), py::arg("counts"), py::arg("hot_offs"), py::arg("hot_pairs"),
        py::arg("cold_pairs"), py::arg("cold_expert"), py::arg("cold_begin"), py::arg("cold_count"), py::arg("pair_row"),
        py::arg("meta"), py::arg("err_out"), py::arg("stream"));
  m.def("route_prep_plan", &route_prep_plan, py::arg("ids"), py::arg("n"), py::arg("num_experts"), py::arg("max_cold"),
        py::arg("counts"), py::arg("hot_offs"), py::arg("hot_pairs"), py::arg("cold_pairs"), py::arg("cold_expert"),
        py::arg("cold_begin"), py::arg("cold_count"), py::arg("pair_row"), py::arg("meta"), py::arg("err_out"),
        py::arg("rule"), py::arg("flop"), py::arg("pim"), py::arg("table_len"), py::arg("read_s"), py::arg("launch_s"),
        py::arg("comm"), py::arg("gfix"), py::arg("pfix"), py::arg("plan_out"), py::arg("stream"));
  m.def("gather_rows", &gather_rows, py::arg("x"), py::arg("pairs"), py::arg("top_k"), py::arg("rows"), py::arg("row_bytes"),
        py::arg("out"), py::arg("stream"));
  m.def("expert_gemv", &expert_gemv, py::arg("dtype"), py::arg("x"), py::arg("in_pairs"), py::arg("top_k"),
        py::arg("weight"), py::arg("cold_expert"), py::arg("cold_begin"), py::arg("cold_count"), py::arg("offs"),
        py::arg("lists"), py::arg("rows"), py::arg("out_rows"), py::arg("k_dim"), py::arg("silu_chunk"), py::arg("max_tokens"), py::arg("lists_ready"),
        py::arg("out"), py::arg("stream"), py::arg("k_splits") = 1, py::arg("partial") = 0);
  m.def("gemv_layer_workspace", &gemv_layer_workspace, py::arg("n_pairs"), py::arg("num_experts"), py::arg("d"),
        py::arg("f"), py::arg("elem_bytes"), py::arg("down_k_splits") = 1);
  m.def("gemv_layer", &gemv_layer, py::arg("dtype"), py::arg("w_dtype"), py::arg("hidden"), py::arg("ids"),
        py::arg("tokens"), py::arg("top_k"), py::arg("num_experts"), py::arg("up_weight"), py::arg("down_weight"),
        py::arg("d"), py::arg("f"), py::arg("weights"), py::arg("round_products"), py::arg("mma_min_tokens"),
        py::arg("direct"), py::arg("workspace"), py::arg("out"), py::arg("err_out"), py::arg("stream"),
        py::arg("down_k_splits") = 1);
  m.def("plan_layer_workspace", &plan_layer_workspace, py::arg("n_pairs"), py::arg("num_experts"), py::arg("d"),
        py::arg("f"), py::arg("elem_bytes"), py::arg("down_k_splits") = 1);
  m.def("plan_layer", &plan_layer, py::arg("dtype"), py::arg("w_dtype"), py::arg("hidden"), py::arg("ids"),
        py::arg("tokens"), py::arg("top_k"), py::arg("num_experts"), py::arg("up_weight"), py::arg("down_weight"),
        py::arg("d"), py::arg("f"), py::arg("weights"), py::arg("round_products"), py::arg("rule"), py::arg("flop"),
        py::arg("pim"), py::arg("table_len"), py::arg("read_s"), py::arg("launch_s"), py::arg("comm"), py::arg("gfix"),
        py::arg("pfix"), py::arg("plan_out"), py::arg("hot_mma"), py::arg("workspace"), py::arg("out"),
        py::arg("err_out"), py::arg("stream"), py::arg("side"), py::arg("down_k_splits") = 1);
  m.def("expert_mma", &expert_mma_entry, py::arg("dtype"), py::arg("x"), py::arg("in_pairs"), py::arg("top_k"),
        py::arg("weight"), py::arg("list_expert"), py::arg("list_begin"), py::arg("list_count"), py::arg("offs"),
        py::arg("lists"), py::arg("rows"), py::arg("out_rows"), py::arg("k_dim"), py::arg("silu_chunk"), py::arg("max_tokens"),
        py::arg("lists_ready"), py::arg("out"), py::arg("stream"), py::arg("k_splits") = 1, py::arg("partial") = 0);
  m.def("split_k", [](int k_splits, int k_dim) {
          const SplitK s = SplitK::make(k_splits, k_dim, 0, 1);
          return py::make_tuple(s.splits, s.on() ? s.k_split : k_dim);
        }, py::arg("k_splits"), py::arg("k_dim"),
        "(splits launched, K per split) for `k_splits` requested splits of a row of k_dim elements");
  m.attr("SPLIT_K_GRAIN") = kSplitKGrain;
  m.def("unpermute", &unpermute, py::arg("dtype"), py::arg("w_dtype"), py::arg("y_hot"), py::arg("y_cold"),
        py::arg("pair_row"), py::arg("weights"), py::arg("tokens"), py::arg("top_k"), py::arg("d"),
        py::arg("round_products"), py::arg("out"), py::arg("stream"));
}
