// expert_gemv's device code: the work items, the GEMV kernels (with the fused SiLU gate and the split-K
// variant) and the list entries a launch reads (GemvLists).
// Part of heteromoe_cuda.cu's one translation unit: included there, after the headers before it.
#pragma once

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
