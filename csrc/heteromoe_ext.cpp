// heteromoe._C: the per-layer hot path in C++ (pybind11).
//
// Two pure functions, mirrored exactly by heteromoe/_fallback.py (numba and numpy versions):
//   counting_sort  routing -> loads: per-expert token counts and the expert-contiguous pair order;
//   sieve_greedy   loads -> plan: Sieve's greedy GPU/PIM split for each GPU's experts.
// Both use the same arithmetic in the same order as the fallbacks, so results are bit-identical.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <algorithm>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

namespace py = pybind11;
using i64 = std::int64_t;
template <typename T>
using carray = py::array_t<T, py::array::c_style | py::array::forcecast>;

// Counting sort of flat (token, slot) pairs by expert id.
// Args: expert_ids [P] int64 (flattened top_k_index), num_experts E.
// Returns: counts [E], offsets [E+1], order [P] (pair indices grouped by expert, ascending within).
static std::tuple<carray<i64>, carray<i64>, carray<i64>> counting_sort(carray<i64> expert_ids, i64 num_experts) {
  if (num_experts <= 0) throw std::invalid_argument("num_experts must be positive, got " + std::to_string(num_experts));
  const i64 n = expert_ids.size();
  const i64* ids = expert_ids.data();
  carray<i64> counts(num_experts), offsets(num_experts + 1), order(n);
  i64* c = counts.mutable_data();
  i64* off = offsets.mutable_data();
  i64* ord = order.mutable_data();
  std::fill(c, c + num_experts, 0);
  for (i64 i = 0; i < n; ++i) {
    const i64 e = ids[i];
    if (e < 0 || e >= num_experts)
      throw std::invalid_argument("expert id " + std::to_string(e) + " at pair " + std::to_string(i) +
                                  " is outside [0, " + std::to_string(num_experts) + ")");
    ++c[e];
  }
  off[0] = 0;
  for (i64 e = 0; e < num_experts; ++e) off[e + 1] = off[e] + c[e];
  std::vector<i64> cursor(off, off + num_experts);
  for (i64 i = 0; i < n; ++i) ord[cursor[ids[i]]++] = i;
  return {counts, offsets, order};
}

// Sieve's greedy split, one segment of `order` per GPU.
// order[seg[g]:seg[g+1]] lists GPU g's active experts by token count, descending. All start on PIM;
// the hottest remaining one moves to the GPU while max(T_comm, T_GPU, T_PIM) strictly falls.
//   T_GPU = max(sum read_s, sum flop_s) + launch_s + gpu_other_s[g]   (launch only if the GPU set is non-empty)
//   T_PIM = pim_fixed_s[g] + sum pim_s
// Returns moved [G]: how many experts of each segment's prefix run on the GPU.
static carray<i64> sieve_greedy(carray<i64> order, carray<i64> seg, carray<double> read_s, carray<double> flop_s,
                                carray<double> pim_s, carray<double> comm_s, carray<double> gpu_other_s,
                                double launch_s, carray<double> pim_fixed_s) {
  const i64 g_count = seg.size() - 1;
  if (g_count < 1) throw std::invalid_argument("seg must have at least 2 entries");
  if (comm_s.size() != g_count || gpu_other_s.size() != g_count || pim_fixed_s.size() != g_count)
    throw std::invalid_argument("per-GPU arrays must have len(seg) - 1 entries");
  const i64* o = order.data();
  const i64* s = seg.data();
  const double *rd = read_s.data(), *fl = flop_s.data(), *pm = pim_s.data();
  const double *cm = comm_s.data(), *go = gpu_other_s.data(), *pf = pim_fixed_s.data();
  carray<i64> moved(g_count);
  i64* mv = moved.mutable_data();
  for (i64 g = 0; g < g_count; ++g) {
    double pim = pf[g];
    for (i64 i = s[g]; i < s[g + 1]; ++i) pim += pm[o[i]];
    double best = std::max(std::max(cm[g], go[g]), pim);
    double read = 0.0, flop = 0.0;
    i64 m = 0;
    for (i64 i = s[g]; i < s[g + 1]; ++i) {
      const i64 e = o[i];
      const double n_read = read + rd[e], n_flop = flop + fl[e];
      const double t_gpu = std::max(n_read, n_flop) + launch_s + go[g];
      const double n_pim = pim - pm[e];
      const double t = std::max(std::max(cm[g], t_gpu), n_pim);
      if (!(t < best)) break;
      best = t;
      read = n_read;
      flop = n_flop;
      pim = n_pim;
      ++m;
    }
    mv[g] = m;
  }
  return moved;
}

PYBIND11_MODULE(_C, m) {
  m.doc() = "heteromoe C++ fast path: counting sort of routing pairs and Sieve's greedy split";
  m.def("counting_sort", &counting_sort, py::arg("expert_ids"), py::arg("num_experts"));
  m.def("sieve_greedy", &sieve_greedy, py::arg("order"), py::arg("seg"), py::arg("read_s"), py::arg("flop_s"),
        py::arg("pim_s"), py::arg("comm_s"), py::arg("gpu_other_s"), py::arg("launch_s"), py::arg("pim_fixed_s"));
}
