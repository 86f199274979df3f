// heteromoe._C: the per-layer hot path in C++ (pybind11).
//
// Pure functions, mirrored statement by statement by heteromoe/_fallback.py (numba and python twins):
//   counting_sort   routing -> loads: per-expert token counts and the expert-contiguous pair order;
//   sieve_plan      loads -> plan: Sieve's greedy GPU/PIM split, per GPU;
//   heteromoe_plan  loads -> plan: the best prefix of the same order plus one split boundary expert.
// Both planners take the layer's costs as tables indexed by token count (all experts of a layer share
// one shape): read_s (weights streamed once on the GPU), flop_tab[n], pim_tab[n] for n tokens.
// Same arithmetic, same order as the twins: results are bit-identical across implementations.
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

struct LayerCosts {
  const i64* counts;
  const i64* home;
  i64 E, G;
  double read_s, launch_s;
  const double *flop, *pim, *comm, *gfix, *pfix;
};

// Active experts of each GPU by count descending, ties by lower id. seg[g]..seg[g+1] is GPU g's.
static void sorted_by_gpu(const LayerCosts& c, std::vector<i64>& order, std::vector<i64>& seg) {
  seg.assign(c.G + 1, 0);
  for (i64 e = 0; e < c.E; ++e)
    if (c.counts[e] > 0) ++seg[c.home[e] + 1];
  for (i64 g = 0; g < c.G; ++g) seg[g + 1] += seg[g];
  order.assign(seg[c.G], 0);
  std::vector<i64> cursor(seg.begin(), seg.end() - 1);
  for (i64 e = 0; e < c.E; ++e)
    if (c.counts[e] > 0) order[cursor[c.home[e]]++] = e;
  for (i64 g = 0; g < c.G; ++g)
    std::stable_sort(order.begin() + seg[g], order.begin() + seg[g + 1],
                     [&](i64 a, i64 b) { return c.counts[a] > c.counts[b]; });
}

static LayerCosts make_costs(const carray<i64>& counts, const carray<i64>& home, i64 num_gpus, double read_s,
                             const carray<double>& flop_tab, const carray<double>& pim_tab, const carray<double>& comm,
                             const carray<double>& gfix, double launch_s, const carray<double>& pfix) {
  const i64 E = counts.size();
  if (home.size() != E) throw std::invalid_argument("expert_gpu must have one entry per expert");
  if (num_gpus < 1) throw std::invalid_argument("num_gpus must be >= 1");
  if (comm.size() != num_gpus || gfix.size() != num_gpus || pfix.size() != num_gpus)
    throw std::invalid_argument("per-GPU arrays must have num_gpus entries");
  const i64* cnt = counts.data();
  const i64* h = home.data();
  i64 max_count = 0;
  for (i64 e = 0; e < E; ++e) {
    if (cnt[e] < 0) throw std::invalid_argument("counts must be >= 0");
    if (h[e] < 0 || h[e] >= num_gpus) throw std::invalid_argument("expert_gpu outside [0, num_gpus)");
    max_count = std::max(max_count, cnt[e]);
  }
  if (flop_tab.size() <= max_count || pim_tab.size() <= max_count)
    throw std::invalid_argument("cost tables must cover token counts up to " + std::to_string(max_count));
  return LayerCosts{cnt, h, E, num_gpus, read_s, launch_s, flop_tab.data(), pim_tab.data(), comm.data(), gfix.data(),
                    pfix.data()};
}

using PlanResult = std::tuple<carray<i64>, carray<double>, carray<double>>;

// T_PIM of GPU g with all of order[lo, hi) on PIM: its fixed PIM work plus every expert's PIM time.
static double all_on_pim(const LayerCosts& c, const std::vector<i64>& order, i64 lo, i64 hi, i64 g) {
  double pim = c.pfix[g];
  for (i64 i = lo; i < hi; ++i) pim += c.pim[c.counts[order[i]]];
  return pim;
}

// Per-GPU T_GPU and T_PIM of a split, summed in expert-id order (as numpy's bincount does, so the
// numbers equal CostModel.times bit for bit).
static PlanResult evaluate(const LayerCosts& c, carray<i64> gpu_tokens) {
  const i64* out = gpu_tokens.data();
  carray<double> t_gpu(c.G), t_pim(c.G);
  double* tg = t_gpu.mutable_data();
  double* tp = t_pim.mutable_data();
  std::vector<double> read(c.G, 0.0), flop(c.G, 0.0), pim(c.G, 0.0);
  std::vector<char> busy(c.G, 0);
  for (i64 e = 0; e < c.E; ++e) {
    const i64 g = c.home[e], k = out[e];
    if (k > 0) {
      read[g] += c.read_s;
      busy[g] = 1;
    }
    flop[g] += c.flop[k];
    pim[g] += c.pim[c.counts[e] - k];
  }
  for (i64 g = 0; g < c.G; ++g) {
    tg[g] = std::max(read[g], flop[g]) + (busy[g] ? c.launch_s : 0.0) + c.gfix[g];
    tp[g] = pim[g] + c.pfix[g];
  }
  return {gpu_tokens, t_gpu, t_pim};
}

// What both planners start from: the checked costs, each GPU's experts in Sieve's order, and zeroed output.
struct PlanSetup {
  LayerCosts c;
  std::vector<i64> order, seg;
  carray<i64> gpu_tokens;
};

static PlanSetup prepare(const carray<i64>& counts, const carray<i64>& home, i64 num_gpus, double read_s,
                         const carray<double>& flop_tab, const carray<double>& pim_tab, const carray<double>& comm,
                         const carray<double>& gfix, double launch_s, const carray<double>& pfix) {
  PlanSetup s{make_costs(counts, home, num_gpus, read_s, flop_tab, pim_tab, comm, gfix, launch_s, pfix), {}, {},
              carray<i64>(counts.size())};
  sorted_by_gpu(s.c, s.order, s.seg);
  std::fill(s.gpu_tokens.mutable_data(), s.gpu_tokens.mutable_data() + s.c.E, 0);
  return s;
}

// Sieve: all start on PIM; the hottest remaining expert moves to the GPU while
// max(T_comm, T_GPU, T_PIM) strictly falls. Returns gpu_tokens [E], T_GPU [G], T_PIM [G].
static PlanResult sieve_plan(carray<i64> counts, carray<i64> home, i64 num_gpus, double read_s, carray<double> flop_tab,
                              carray<double> pim_tab, carray<double> comm, carray<double> gfix, double launch_s,
                              carray<double> pfix) {
  PlanSetup s = prepare(counts, home, num_gpus, read_s, flop_tab, pim_tab, comm, gfix, launch_s, pfix);
  const LayerCosts& c = s.c;
  const std::vector<i64>&order = s.order, &seg = s.seg;
  i64* out = s.gpu_tokens.mutable_data();
  for (i64 g = 0; g < c.G; ++g) {
    double pim = all_on_pim(c, order, seg[g], seg[g + 1], g);
    double best = std::max(std::max(c.comm[g], c.gfix[g]), pim);
    double read = 0.0, flop = 0.0;
    for (i64 i = seg[g]; i < seg[g + 1]; ++i) {
      const i64 e = order[i], n = c.counts[e];
      const double n_read = read + c.read_s, n_flop = flop + c.flop[n];
      const double n_pim = pim - c.pim[n];
      const double t = std::max(std::max(c.comm[g], std::max(n_read, n_flop) + c.launch_s + c.gfix[g]), n_pim);
      if (!(t < best)) break;
      best = t;
      read = n_read;
      flop = n_flop;
      pim = n_pim;
      out[e] = n;
    }
  }
  return evaluate(c, s.gpu_tokens);
}

// heteromoe: among all prefixes of Sieve's order (not only up to the first non-improving move), take
// the best; then try splitting the expert on each side of the boundary between GPU and PIM.
static PlanResult heteromoe_plan(carray<i64> counts, carray<i64> home, i64 num_gpus, double read_s,
                                  carray<double> flop_tab, carray<double> pim_tab, carray<double> comm,
                                  carray<double> gfix, double launch_s, carray<double> pfix) {
  PlanSetup s = prepare(counts, home, num_gpus, read_s, flop_tab, pim_tab, comm, gfix, launch_s, pfix);
  const LayerCosts& c = s.c;
  const std::vector<i64>&order = s.order, &seg = s.seg;
  i64* out = s.gpu_tokens.mutable_data();
  for (i64 g = 0; g < c.G; ++g) {
    const i64 lo = seg[g], hi = seg[g + 1];
    const double cm = c.comm[g], gf = c.gfix[g];
    double pim = all_on_pim(c, order, lo, hi, g);
    // 1. best prefix m (experts order[lo, lo+m) on the GPU)
    double best = std::max(std::max(cm, gf), pim);
    i64 best_m = 0;
    double read = 0.0, flop = 0.0, best_read = 0.0, best_flop = 0.0, best_pim = pim;
    for (i64 i = lo; i < hi; ++i) {
      const i64 n = c.counts[order[i]];
      read = read + c.read_s;
      flop = flop + c.flop[n];
      pim = pim - c.pim[n];
      const double t = std::max(std::max(cm, std::max(read, flop) + c.launch_s + gf), pim);
      if (t < best) {
        best = t;
        best_m = i - lo + 1;
        best_read = read;
        best_flop = flop;
        best_pim = pim;
      }
    }
    for (i64 i = lo; i < lo + best_m; ++i) out[order[i]] = c.counts[order[i]];
    // 2. split the next expert (part of it joins the GPU) or the last one (part of it goes back to PIM)
    i64 split_e = -1, split_g = 0;
    if (best_m < hi - lo) {
      const i64 e = order[lo + best_m], n = c.counts[e];
      for (i64 k = 1; k < n; ++k) {
        const double t_gpu = std::max(best_read + c.read_s, best_flop + c.flop[k]) + c.launch_s + gf;
        const double t_pim = best_pim - c.pim[n] + c.pim[n - k];
        const double t = std::max(std::max(cm, t_gpu), t_pim);
        if (t < best) {
          best = t;
          split_e = e;
          split_g = k;
        }
      }
    }
    if (best_m > 0) {
      const i64 e = order[lo + best_m - 1], n = c.counts[e];
      for (i64 k = 1; k < n; ++k) {
        const double t_gpu = std::max(best_read, best_flop - c.flop[n] + c.flop[k]) + c.launch_s + gf;
        const double t_pim = best_pim + c.pim[n - k];
        const double t = std::max(std::max(cm, t_gpu), t_pim);
        if (t < best) {
          best = t;
          split_e = e;
          split_g = k;
        }
      }
    }
    if (split_e >= 0) out[split_e] = split_g;
  }
  return evaluate(c, s.gpu_tokens);
}

// Replica routing: each replicated expert's tokens go, whole, to the slot (home first, then replicas in
// slot order) whose GPU holds the fewest tokens so far; hottest expert first, ties by lower expert id.
// Args: counts [E], phys2log [P] (first E slots are the homes), slot_gpu [P]. Returns slot_counts [P].
static carray<i64> route_to_replicas(carray<i64> counts, carray<i64> phys2log, carray<i64> slot_gpu, i64 num_gpus) {
  const i64 E = counts.size(), P = phys2log.size();
  if (slot_gpu.size() != P || P < E) throw std::invalid_argument("phys2log and slot_gpu must have P >= E entries");
  const i64 *c = counts.data(), *p2l = phys2log.data(), *sg = slot_gpu.data();
  for (i64 s = 0; s < P; ++s) {
    if (p2l[s] < 0 || p2l[s] >= E) throw std::invalid_argument("phys2log outside [0, E)");
    if (sg[s] < 0 || sg[s] >= num_gpus) throw std::invalid_argument("slot_gpu outside [0, num_gpus)");
  }
  carray<i64> slot_counts(P);
  i64* out = slot_counts.mutable_data();
  std::fill(out, out + P, 0);
  std::vector<char> replicated(E, 0);
  for (i64 s = E; s < P; ++s) replicated[p2l[s]] = 1;
  std::vector<i64> load(num_gpus, 0), order;
  for (i64 e = 0; e < E; ++e) {
    if (replicated[e]) {
      order.push_back(e);
    } else {
      out[e] = c[e];
      load[sg[e]] += c[e];
    }
  }
  std::stable_sort(order.begin(), order.end(), [&](i64 a, i64 b) { return c[a] > c[b]; });
  for (const i64 e : order) {
    if (c[e] == 0) continue;
    i64 best = e;
    for (i64 s = E; s < P; ++s)
      if (p2l[s] == e && load[sg[s]] < load[sg[best]]) best = s;
    out[best] = c[e];
    load[sg[best]] += c[e];
  }
  return slot_counts;
}

void register_moe_kernels(py::module_& m);  // csrc/moe_kernels_cpu.cpp

PYBIND11_MODULE(_C, m) {
  m.doc() = "heteromoe C++ fast path: counting sort of routing pairs, Sieve's greedy and heteromoe's split";
  m.def("counting_sort", &counting_sort, py::arg("expert_ids"), py::arg("num_experts"));
#define PLAN_ARGS                                                                                                 \
  py::arg("counts"), py::arg("expert_gpu"), py::arg("num_gpus"), py::arg("read_s"), py::arg("flop_tab"),          \
      py::arg("pim_tab"), py::arg("comm_s"), py::arg("gpu_fixed_s"), py::arg("launch_s"), py::arg("pim_fixed_s")
  m.def("sieve_plan", &sieve_plan, PLAN_ARGS);
  m.def("heteromoe_plan", &heteromoe_plan, PLAN_ARGS);
  m.def("route_to_replicas", &route_to_replicas, py::arg("counts"), py::arg("phys2log"), py::arg("slot_gpu"),
        py::arg("num_gpus"));
#undef PLAN_ARGS
  register_moe_kernels(m);
}
