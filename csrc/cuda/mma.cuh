// expert_mma's tensor-core device code (mma.m16n8k16, tokens read through L1) and its split-K variant.
// Part of heteromoe_cuda.cu's one translation unit: included there, after the headers before it.
#pragma once

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
