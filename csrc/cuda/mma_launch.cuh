// expert_mma's host side: the launch choices (and the variables that override them), the template
// dispatch and the Python entry points.
// Part of heteromoe_cuda.cu's one translation unit: included there, after the headers before it.
#pragma once

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
//     createpolicy per weight load instead of one per thread cost 5-8 %. The wide pass (MmaPass, per call, off
//     by default): 6, 8 or 16 tiles with the weights one chunk deep, which fits 128 registers without spills.
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

// A call's choice of expert_mma_smem's pass (the caller's, never a default): `tiles` 6, 8 or 16 (48 / 64 / 128
// tokens per pass, expert_mma_smem_wide_kernel: the weights one K chunk deep) for launches whose max_tokens
// exceeds the default pass of 32 tokens; 0 (or 4): the default kernels.
struct MmaPass {
  int tiles = 0;

  static MmaPass make(int tiles) {
    if (tiles != 0 && tiles != kMmaSmemTiles && tiles != 6 && tiles != 8 && tiles != 16)
      throw std::invalid_argument("pass_tiles must be 0 (the default), 4, 6, 8 or 16, got " + std::to_string(tiles));
    return MmaPass{tiles == kMmaSmemTiles ? 0 : tiles};
  }
  // whether the wide kernel runs a launch (expert_mma_smem chosen, more tokens than one default pass)
  bool wide(bool smem, int max_tokens) const { return tiles && smem && max_tokens > kMmaSmemTiles * 8; }
};

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

template <typename T, int kTiles>
static void launch_mma_smem_wide_kernel(bool silu, const MmaLaunch& m) {
  constexpr int kWarps = kMmaSmemWarps;
  if (m.partial) return launch_mma_split<T>(expert_mma_smem_wide_split_kernel<T, kTiles, kWarps>, kWarps, m);
  if (silu) launch_mma<T>(expert_mma_smem_wide_kernel<T, kTiles, true, kWarps>, kWarps, m);
  else launch_mma<T>(expert_mma_smem_wide_kernel<T, kTiles, false, kWarps>, kWarps, m);
}
template <typename T>
static void launch_mma_smem_wide_dtype(const MmaPass& wide_pass, bool silu, const MmaLaunch& m) {
  if (wide_pass.tiles == 16) launch_mma_smem_wide_kernel<T, 16>(silu, m);
  else if (wide_pass.tiles == 8) launch_mma_smem_wide_kernel<T, 8>(silu, m);
  else launch_mma_smem_wide_kernel<T, 6>(silu, m);
}

static bool mma_supported(int dtype, int k_dim) { return (dtype == kBF16 || dtype == kF16) && k_dim % 8 == 0; }

// expert_gemv's arguments; lists: either (list_expert, list_begin, list_count) of length `lists` (the cold
// side's compacted lists), or offs [lists] inclusive ends of every expert's rows (the hot side's hot_offs,
// list_* ignored). max_tokens: the most tokens an expert can have here; rows: the most rows all the lists
// hold together (the pairs), which bounds the work items; wide_pass: the caller's choice of a wide pass.
static void expert_mma(int dtype, std::uintptr_t x, std::uintptr_t in_pairs, int top_k, std::uintptr_t weight,
                       std::uintptr_t list_expert, std::uintptr_t list_begin, std::uintptr_t list_count,
                       std::uintptr_t offs, int lists, int rows, int out_rows, int k_dim, bool silu_chunk,
                       int max_tokens, bool lists_ready, std::uintptr_t out, std::uintptr_t stream,
                       const SplitK& split = SplitK{}, const MmaPass& wide_pass = MmaPass{}) {
  if (lists == 0 || max_tokens <= 0 || rows <= 0) return;
  if (split.on() && silu_chunk)
    throw std::invalid_argument("expert_mma: split-K is for projections without the SiLU gate");
  if (!mma_supported(dtype, k_dim))
    throw std::invalid_argument("expert_mma: bf16/fp16 with K a multiple of 8 only (dtype code " +
                                std::to_string(dtype) + ", K = " + std::to_string(k_dim) + ")");
  if (x % 16 || weight % 16) throw std::invalid_argument("expert_mma: x and weight must be 16-byte aligned");
  const bool smem = mma_smem(max_tokens);
  const bool wide = wide_pass.wide(smem, max_tokens);
  const int tiles = wide ? wide_pass.tiles : smem ? kMmaSmemTiles : mma_tiles(max_tokens);
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
  if (wide && dtype == kBF16) launch_mma_smem_wide_dtype<__nv_bfloat16>(wide_pass, silu_chunk, m);
  else if (wide) launch_mma_smem_wide_dtype<__half>(wide_pass, silu_chunk, m);
  else if (smem && dtype == kBF16) launch_mma_smem_dtype<__nv_bfloat16>(silu_chunk, m);
  else if (smem) launch_mma_smem_dtype<__half>(silu_chunk, m);
  else if (dtype == kBF16) launch_mma_dtype<__nv_bfloat16>(tiles, silu_chunk, warps, frags, m);
  else launch_mma_dtype<__half>(tiles, silu_chunk, warps, frags, m);
  check(cudaGetLastError(), "expert_mma launch");
  if (split.on()) splitk_reduce(dtype, split, out_rows, out, as_stream(stream));
}

// The Python entry point: expert_mma, its K cut into `k_splits` ranges (1: none) with the fp32 partial sums in
// `partial` (at least k_splits x rows x out_rows floats; 0 when k_splits is 1); pass_tiles: MmaPass.
static void expert_mma_entry(int dtype, std::uintptr_t x, std::uintptr_t in_pairs, int top_k, std::uintptr_t weight,
                             std::uintptr_t list_expert, std::uintptr_t list_begin, std::uintptr_t list_count,
                             std::uintptr_t offs, int lists, int rows, int out_rows, int k_dim, bool silu_chunk,
                             int max_tokens, bool lists_ready, std::uintptr_t out, std::uintptr_t stream, int k_splits,
                             std::uintptr_t partial, int pass_tiles) {
  const MmaPass wide_pass = MmaPass::make(pass_tiles);
  expert_mma(dtype, x, in_pairs, top_k, weight, list_expert, list_begin, list_count, offs, lists, rows, out_rows, k_dim,
             silu_chunk, max_tokens, lists_ready, out, stream, SplitK::make(k_splits, k_dim, rows, partial), wide_pass);
}
