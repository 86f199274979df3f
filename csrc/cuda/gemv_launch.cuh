// expert_gemv's host side: the launch arguments, the template dispatch and the Python entry point.
// Part of heteromoe_cuda.cu's one translation unit: included there, after the headers before it.
#pragma once

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
