// expert_mma_smem: the tensor-core kernel with the token tile in shared memory (cp.async) and the
// weights two K chunks deep, and its split-K variant.
// Part of heteromoe_cuda.cu's one translation unit: included there, after the headers before it.
#pragma once

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

// kDepth: chunks of weights in registers (2, the default kernels; 1 for the wide passes: see
// expert_mma_smem_wide_kernel).
template <typename T, int kTiles, bool kSiluChunk, int kWarps, int kFrags, int kSteps, bool kSplit, int kDepth = 2>
__device__ __forceinline__ void expert_mma_smem_body(const T* x, const int* in_pairs, int top_k, const T* weight,
                                                     const int* list_expert, const int* list_begin,
                                                     const int* list_count, const int* offs, int lists, bool passes,
                                                     int out_rows, int k_dim, bool lists_ready, T* out, int k_split,
                                                     int rows_out, float* partial) {
  static_assert(!(kSplit && kSiluChunk), "split-K sums need the whole row before the SiLU gate");
  static_assert(kDepth == 1 || kDepth == 2, "weights one or two chunks deep");
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
  // weights kDepth chunks deep: chunk c in a[c % kDepth]; a step's registers are refilled with chunk c + kDepth
  // as soon as its MMAs are issued, so the loads stay in flight through the MMAs, the barrier and (two deep) the
  // next chunk
  uint4 a[kDepth][kSteps][kFrags][2];
  const std::uint64_t policy = evict_first_policy();
  mma_load_a<T, kSteps, kFrags>(a[0], wp, k_begin, k_end, q, policy);  // weights do not depend on the kernel before
  if constexpr (kDepth == 2) mma_load_a<T, kSteps, kFrags>(a[1], wp, k_begin + kChunk, k_end, q, policy);
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
    const int k_next = k_begin + (c + kDepth) * kChunk;
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
  for (int c = 0; c < chunks; c += kDepth) {
    run_chunk(std::integral_constant<int, 0>{}, c);
    if constexpr (kDepth == 2)
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

// The wide passes: kTiles = 6, 8 or 16 (48 / 64 / 128 tokens), so that an expert of up to that many tokens is
// read once per pass. The weights stay one chunk deep (kDepth 1): the accumulators grow by 8 / 16 / 48 registers
// and the weights shrink by 32 (16 tiles: K chunks of 2 steps, 64 elements, so the weights shrink by 48 and two
// stages of 128 token rows fit the 48 KB of static shared memory), so the kernels keep the default kernels' bound
// (16 warps per SM, at most 128 registers) without spills; the 16-tile split-K kernel spills there (8 bytes) and
// runs at 8 warps per SM (255 registers, none spilled). Two chunks deep the kernels spill at 128 registers and
// even at 255 (ptxas -v, sm_90: 16-40 bytes at 6 and 8 tiles), so that variant is not built. Chosen per call
// (MmaPass in mma_launch.cuh), never by default.
__host__ __device__ constexpr int mma_smem_wide_steps(int tiles) { return tiles > 8 ? 2 : 4; }
__host__ __device__ constexpr int mma_smem_wide_split_blocks(int tiles, int warps) { return (tiles > 8 ? 8 : 16) / warps; }

template <typename T, int kTiles, bool kSiluChunk, int kWarps>
__global__ void __launch_bounds__(kWarps * 32, 16 / kWarps)
expert_mma_smem_wide_kernel(const T* x, const int* in_pairs, int top_k, const T* weight, const int* list_expert,
                            const int* list_begin, const int* list_count, const int* offs, int lists, bool passes,
                            int out_rows, int k_dim, bool lists_ready, T* out) {
  expert_mma_smem_body<T, kTiles, kSiluChunk, kWarps, 1, mma_smem_wide_steps(kTiles), false, 1>(
      x, in_pairs, top_k, weight, list_expert, list_begin, list_count, offs, lists, passes, out_rows, k_dim,
      lists_ready, out, 0, 0, nullptr);
}

// expert_mma_smem_wide_kernel split along K (grid.z splits; no gate)
template <typename T, int kTiles, int kWarps>
__global__ void __launch_bounds__(kWarps * 32, mma_smem_wide_split_blocks(kTiles, kWarps))
expert_mma_smem_wide_split_kernel(const T* x, const int* in_pairs, int top_k, const T* weight,
                                  const int* list_expert, const int* list_begin, const int* list_count,
                                  const int* offs, int lists, bool passes, int out_rows, int k_dim, bool lists_ready,
                                  int k_split, int rows_out, float* partial) {
  expert_mma_smem_body<T, kTiles, false, kWarps, 1, mma_smem_wide_steps(kTiles), true, 1>(
      x, in_pairs, top_k, weight, list_expert, list_begin, list_count, offs, lists, passes, out_rows, k_dim,
      lists_ready, nullptr, k_split, rows_out, partial);
}
