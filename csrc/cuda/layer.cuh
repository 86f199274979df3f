// Whole-layer host calls: gemv_layer (route_prep -> GEMV / expert_mma -> unpermute in one call) and
// plan_layer (planned on the device, the GPU set beside the PIM set on two streams).
// Part of heteromoe_cuda.cu's one translation unit: included there, after the headers before it.
#pragma once

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
                       int down_k_splits, int mma_pass_tiles) {
  const int n = tokens * top_k;
  if (n == 0) return;
  if (down_k_splits < 1)
    throw std::invalid_argument("gemv_layer: down_k_splits must be >= 1, got " + std::to_string(down_k_splits));
  const MmaPass wide_pass = MmaPass::make(mma_pass_tiles);
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
               n, f, d, true, tokens, false, h, stream, SplitK{}, wide_pass);
    expert_mma(dtype, h, 0, top_k, down_weight, l.cold_expert, l.cold_begin, l.cold_count, 0, max_cold, n, d, f, false,
               tokens, true, y, stream, down_split, wide_pass);
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
                       std::uintptr_t err_out, std::uintptr_t stream, std::uintptr_t side, int down_k_splits,
                       int mma_pass_tiles) {
  const int n = tokens * top_k;
  if (n == 0) return;
  if (down_k_splits < 1)
    throw std::invalid_argument("plan_layer: down_k_splits must be >= 1, got " + std::to_string(down_k_splits));
  const MmaPass wide_pass = MmaPass::make(mma_pass_tiles);
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
             false, h_hot, stream, SplitK{}, wide_pass);
  const SplitK hot_split = SplitK::make(down_k_splits, f, n, y_cold + yd);  // split-K's sums after y_cold
  expert_mma(dtype, h_hot, 0, top_k, down_weight, 0, 0, 0, l.hot_offs, num_experts, n, d, f, false, tokens, true,
             y_hot, stream, hot_split, wide_pass);
  check(cudaEventRecord(ev.join, as_stream(side)), "plan_layer: join");
  check(cudaStreamWaitEvent(as_stream(stream), ev.join, 0), "plan_layer: join");
  unpermute(dtype, w_dtype, y_hot, y_cold, l.pair_row, weights, tokens, top_k, d, round_products, out, stream);
}
