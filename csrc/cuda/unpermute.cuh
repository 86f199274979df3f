// Combine: unpermute (every token's k expert outputs back into token order) and expert_gemv_combine
// (one token's down projection and combine in one kernel).
// Part of heteromoe_cuda.cu's one translation unit: included there, after the headers before it.
#pragma once

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
