// Routing preparation: expert_histogram, route_prep (the hot/cold split and the rows of each side, with
// the on-device sieve / heteromoe planners) and gather_rows (the token permute).
// Part of heteromoe_cuda.cu's one translation unit: included there, after the headers before it.
#pragma once

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
