// Split-K along a projection's K: the split plan (SplitK) and splitk_reduce, the deterministic fp32
// reduction of the partial sums shared by expert_gemv and expert_mma.
// Part of heteromoe_cuda.cu's one translation unit: included there, after the headers before it.
#pragma once

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
