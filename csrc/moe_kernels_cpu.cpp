// CPU twins of csrc/cuda/heteromoe_cuda.cu (float32 data, int32 indices): the same outputs for the same
// inputs, so the CUDA kernels are tested against them, and CPU runs can use the fused path. Mirrored
// statement by statement by heteromoe/kernels/_cpu.py (numba and python).
//   route_prep   histogram + hot/cold split + stable expert-contiguous order (see the CUDA kernel)
//   gather_rows  out[r] = x[pairs[r] / k]
//   expert_gemv  fp32 dot products, summed in ascending K order
//   unpermute    out[t] = sum_s w[t, s] y[pair_row[t k + s]] in slot order
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace py = pybind11;
using i64 = std::int64_t;
using i32 = std::int32_t;
template <typename T>
using carray = py::array_t<T, py::array::c_style | py::array::forcecast>;

static carray<i32> expert_histogram(carray<i64> ids, i64 num_experts) {
  carray<i32> counts(num_experts);
  i32* c = counts.mutable_data();
  std::fill(c, c + num_experts, 0);
  const i64* id = ids.data();
  for (i64 i = 0; i < ids.size(); ++i)
    if (id[i] >= 0 && id[i] < num_experts) ++c[id[i]];
  return counts;
}

static py::dict route_prep(carray<i64> ids, i64 num_experts, py::object take_hot_obj, i64 threshold, i64 max_cold) {
  const i64 n = ids.size(), E = num_experts;
  const i64* id = ids.data();
  carray<i32> counts(E), hot_offs(E), hot_pairs(n), cold_pairs(n), cold_expert(max_cold), cold_begin(max_cold),
      cold_count(max_cold), pair_row(n), meta(4);
  i32 *c = counts.mutable_data(), *ho = hot_offs.mutable_data(), *hp = hot_pairs.mutable_data(),
      *cp = cold_pairs.mutable_data(), *ce = cold_expert.mutable_data(), *cb = cold_begin.mutable_data(),
      *cc = cold_count.mutable_data(), *pr = pair_row.mutable_data(), *mt = meta.mutable_data();
  const i32* take = nullptr;
  carray<i32> take_hot;
  if (!take_hot_obj.is_none()) {
    take_hot = take_hot_obj.cast<carray<i32>>();
    if (take_hot.size() != E) throw std::invalid_argument("take_hot must have one entry per expert");
    take = take_hot.data();
  }
  std::fill(c, c + E, 0);
  i32 bad = 0;
  for (i64 i = 0; i < n; ++i) {
    if (id[i] >= 0 && id[i] < E) ++c[id[i]];
    else if (bad == 0) bad = static_cast<i32>(i + 1);
  }
  std::vector<i32> hot(E), hot_off(E), cold_off(E), cursor(E, 0);
  i32 n_hot = 0, n_cold = 0, k_cold = 0;
  for (i64 e = 0; e < E; ++e) {
    const i32 h = take ? std::min(std::max(take[e], 0), c[e]) : (c[e] > threshold ? c[e] : 0);
    hot[e] = h;
    hot_off[e] = n_hot;
    cold_off[e] = n_cold;
    n_hot += h;
    ho[e] = n_hot;
    if (c[e] > h) {
      ce[k_cold] = static_cast<i32>(e);
      cb[k_cold] = n_cold;
      cc[k_cold] = c[e] - h;
      ++k_cold;
    }
    n_cold += c[e] - h;
  }
  for (i64 s = k_cold; s < max_cold; ++s) { ce[s] = 0; cb[s] = 0; cc[s] = 0; }
  for (i64 r = n_hot; r < n; ++r) hp[r] = -1;
  for (i64 r = n_cold; r < n; ++r) cp[r] = -1;
  for (i64 i = 0; i < n; ++i) {
    if (id[i] < 0 || id[i] >= E) { pr[i] = -1; continue; }
    const i64 e = id[i];
    const i32 r = cursor[e]++;
    if (r < hot[e]) {
      hp[hot_off[e] + r] = static_cast<i32>(i);
      pr[i] = hot_off[e] + r;
    } else {
      const i32 row = cold_off[e] + (r - hot[e]);
      cp[row] = static_cast<i32>(i);
      pr[i] = static_cast<i32>(n) + row;
    }
  }
  mt[0] = n_hot; mt[1] = n_cold; mt[2] = k_cold; mt[3] = bad;
  py::dict out;
  out["counts"] = counts; out["hot_offs"] = hot_offs; out["hot_pairs"] = hot_pairs; out["cold_pairs"] = cold_pairs;
  out["cold_expert"] = cold_expert; out["cold_begin"] = cold_begin; out["cold_count"] = cold_count;
  out["pair_row"] = pair_row; out["meta"] = meta;
  return out;
}

static carray<float> gather_rows(carray<float> x, carray<i32> pairs, i64 top_k) {
  const i64 d = x.shape(1), rows = pairs.size();
  carray<float> out({rows, d});
  float* o = out.mutable_data();
  const float* xs = x.data();
  const i32* p = pairs.data();
  for (i64 r = 0; r < rows; ++r) {
    if (p[r] < 0) { std::fill(o + r * d, o + (r + 1) * d, 0.f); continue; }
    const float* src = xs + (p[r] / top_k) * d;
    std::copy(src, src + d, o + r * d);
  }
  return out;
}

// x [*, K]; in_pairs [*] or None (row = pos); weight [E, out_rows (x2 if silu_chunk), K]; out [rows, out_rows]
static carray<float> expert_gemv(carray<float> x, py::object in_pairs_obj, i64 top_k, carray<float> weight,
                                 carray<i32> cold_expert, carray<i32> cold_begin, carray<i32> cold_count, i64 out_rows,
                                 bool silu_chunk, i64 rows) {
  const i64 K = weight.shape(2);
  if (x.shape(1) != K) throw std::invalid_argument("expert_gemv: x has " + std::to_string(x.shape(1)) + " columns, weight " + std::to_string(K));
  const i64 w_rows = weight.shape(1);
  if (w_rows != (silu_chunk ? 2 * out_rows : out_rows)) throw std::invalid_argument("expert_gemv: weight rows do not match out_rows");
  const i32* in_pairs = nullptr;
  carray<i32> ip;
  if (!in_pairs_obj.is_none()) { ip = in_pairs_obj.cast<carray<i32>>(); in_pairs = ip.data(); }
  carray<float> out({rows, out_rows});
  float* o = out.mutable_data();
  std::fill(o, o + rows * out_rows, 0.f);
  const float *xs = x.data(), *w = weight.data();
  for (i64 c = 0; c < cold_count.size(); ++c) {
    const i64 e = cold_expert.data()[c], begin = cold_begin.data()[c], cnt = cold_count.data()[c];
    const float* we = w + e * w_rows * K;
    for (i64 t = 0; t < cnt; ++t) {
      const i64 pos = begin + t;
      const i64 src = in_pairs ? in_pairs[pos] / top_k : pos;
      const float* xr = xs + src * K;
      for (i64 j = 0; j < out_rows; ++j) {
        float g = 0.f;
        const float* wr = we + j * K;
        for (i64 k = 0; k < K; ++k) g += wr[k] * xr[k];
        if (silu_chunk) {
          float u = 0.f;
          const float* wu = we + (j + out_rows) * K;
          for (i64 k = 0; k < K; ++k) u += wu[k] * xr[k];
          const float s = g / (1.0f + std::exp(-g));
          o[pos * out_rows + j] = s * u;
        } else {
          o[pos * out_rows + j] = g;
        }
      }
    }
  }
  return out;
}

static carray<float> unpermute(carray<float> y_hot, carray<float> y_cold, carray<i32> pair_row, carray<float> weights,
                               i64 tokens, i64 top_k) {
  const i64 d = y_hot.shape(1), n_pairs = tokens * top_k;
  carray<float> out({tokens, d});
  float* o = out.mutable_data();
  const float *yh = y_hot.data(), *yc = y_cold.data(), *w = weights.data();
  const i32* pr = pair_row.data();
  for (i64 t = 0; t < tokens; ++t) {
    for (i64 j = 0; j < d; ++j) {
      float acc = 0.f;
      for (i64 s = 0; s < top_k; ++s) {
        const i64 p = t * top_k + s;
        const i64 row = pr[p];
        if (row < 0) continue;
        const float v = row < n_pairs ? yh[row * d + j] : yc[(row - n_pairs) * d + j];
        const float prod = v * w[p];
        acc = acc + prod;
      }
      o[t * d + j] = acc;
    }
  }
  return out;
}

void register_moe_kernels(py::module_& m) {
  m.def("expert_histogram", &expert_histogram, py::arg("ids"), py::arg("num_experts"));
  m.def("route_prep", &route_prep, py::arg("ids"), py::arg("num_experts"), py::arg("take_hot"), py::arg("threshold"),
        py::arg("max_cold"));
  m.def("gather_rows", &gather_rows, py::arg("x"), py::arg("pairs"), py::arg("top_k"));
  m.def("expert_gemv", &expert_gemv, py::arg("x"), py::arg("in_pairs"), py::arg("top_k"), py::arg("weight"),
        py::arg("cold_expert"), py::arg("cold_begin"), py::arg("cold_count"), py::arg("out_rows"),
        py::arg("silu_chunk"), py::arg("rows"));
  m.def("unpermute", &unpermute, py::arg("y_hot"), py::arg("y_cold"), py::arg("pair_row"), py::arg("weights"),
        py::arg("tokens"), py::arg("top_k"));
}
