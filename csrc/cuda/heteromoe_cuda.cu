// heteromoe._cuda: the MoE layer's device kernels (pybind11; torch-free: tensors arrive as raw pointers
// plus the CUDA stream to launch on, so the build needs only nvcc and the CUDA runtime).
//
//   expert_histogram  routing -> tokens per expert
//   route_prep        routing -> per-expert counts, the hot/cold split of every expert's pairs (stable:
//                     pairs keep ascending flat order inside an expert), the rows each side computes and
//                     where every pair's output will lie; one block, one launch, no host round trip
//   gather_rows       token permute: hidden rows into expert-contiguous order (the grouped GEMM's input)
//   expert_gemv       W_e x for each cold expert's few tokens, read once per weight element; optionally
//                     fused with the SiLU gate of a [gate; up] projection (the PIM set's stand-in, and
//                     the GPU's kernel for experts with few tokens)
//   unpermute         weighted sum of every token's k expert outputs back into token order
//
// Numerics follow the CPU twins (heteromoe/kernels/_cpu.py, csrc/heteromoe_ext.cpp): products and sums
// use __fmul_rn / __fadd_rn (no contraction) where the twins must agree bit for bit (unpermute); the
// GEMV accumulates in fp32 in its own order (agreement within fp32 rounding is what is tested).
//
// One translation unit: this file holds the Python bindings and includes each kernel family's header in
// order (each builds on the ones before it): common.cuh (shared helpers), route_prep.cuh (histogram,
// route_prep, gather_rows), gemv.cuh (expert_gemv kernels), splitk.cuh (split-K plan and reduction),
// gemv_launch.cuh (expert_gemv host side), mma.cuh and mma_smem.cuh (expert_mma kernels), mma_launch.cuh
// (expert_mma host side), unpermute.cuh (unpermute, expert_gemv_combine), layer.cuh (gemv_layer, plan_layer).
#include "common.cuh"
#include "route_prep.cuh"
#include "gemv.cuh"
#include "splitk.cuh"
#include "gemv_launch.cuh"
#include "mma.cuh"
#include "mma_smem.cuh"
#include "mma_launch.cuh"
#include "unpermute.cuh"
#include "layer.cuh"

PYBIND11_MODULE(_cuda, m) {
  m.doc() = "heteromoe CUDA kernels: routing histogram/permute/unpermute and the cold-expert GEMV (raw pointers)";
  m.attr("F32") = static_cast<int>(kF32);
  m.attr("BF16") = static_cast<int>(kBF16);
  m.attr("F16") = static_cast<int>(kF16);
  m.attr("ROUTE_PREP_THREADS") = kPrepThreads;
  m.def("expert_histogram", &expert_histogram, py::arg("ids"), py::arg("n"), py::arg("num_experts"), py::arg("counts"),
        py::arg("stream"));
  m.def("route_prep", &route_prep, py::arg("ids"), py::arg("n"), py::arg("num_experts"), py::arg("take_hot"),
        py::arg("threshold"), py::arg("max_cold"), py::arg("counts"), py::arg("hot_offs"), py::arg("hot_pairs"),
        py::arg("cold_pairs"), py::arg("cold_expert"), py::arg("cold_begin"), py::arg("cold_count"), py::arg("pair_row"),
        py::arg("meta"), py::arg("err_out"), py::arg("stream"));
  m.def("route_prep_plan", &route_prep_plan, py::arg("ids"), py::arg("n"), py::arg("num_experts"), py::arg("max_cold"),
        py::arg("counts"), py::arg("hot_offs"), py::arg("hot_pairs"), py::arg("cold_pairs"), py::arg("cold_expert"),
        py::arg("cold_begin"), py::arg("cold_count"), py::arg("pair_row"), py::arg("meta"), py::arg("err_out"),
        py::arg("rule"), py::arg("flop"), py::arg("pim"), py::arg("table_len"), py::arg("read_s"), py::arg("launch_s"),
        py::arg("comm"), py::arg("gfix"), py::arg("pfix"), py::arg("plan_out"), py::arg("stream"));
  m.def("gather_rows", &gather_rows, py::arg("x"), py::arg("pairs"), py::arg("top_k"), py::arg("rows"), py::arg("row_bytes"),
        py::arg("out"), py::arg("stream"));
  m.def("expert_gemv", &expert_gemv, py::arg("dtype"), py::arg("x"), py::arg("in_pairs"), py::arg("top_k"),
        py::arg("weight"), py::arg("cold_expert"), py::arg("cold_begin"), py::arg("cold_count"), py::arg("offs"),
        py::arg("lists"), py::arg("rows"), py::arg("out_rows"), py::arg("k_dim"), py::arg("silu_chunk"), py::arg("max_tokens"), py::arg("lists_ready"),
        py::arg("out"), py::arg("stream"), py::arg("k_splits") = 1, py::arg("partial") = 0);
  m.def("gemv_layer_workspace", &gemv_layer_workspace, py::arg("n_pairs"), py::arg("num_experts"), py::arg("d"),
        py::arg("f"), py::arg("elem_bytes"), py::arg("down_k_splits") = 1);
  m.def("gemv_layer", &gemv_layer, py::arg("dtype"), py::arg("w_dtype"), py::arg("hidden"), py::arg("ids"),
        py::arg("tokens"), py::arg("top_k"), py::arg("num_experts"), py::arg("up_weight"), py::arg("down_weight"),
        py::arg("d"), py::arg("f"), py::arg("weights"), py::arg("round_products"), py::arg("mma_min_tokens"),
        py::arg("direct"), py::arg("workspace"), py::arg("out"), py::arg("err_out"), py::arg("stream"),
        py::arg("down_k_splits") = 1, py::arg("mma_pass_tiles") = 0);
  m.def("plan_layer_workspace", &plan_layer_workspace, py::arg("n_pairs"), py::arg("num_experts"), py::arg("d"),
        py::arg("f"), py::arg("elem_bytes"), py::arg("down_k_splits") = 1);
  m.def("plan_layer", &plan_layer, py::arg("dtype"), py::arg("w_dtype"), py::arg("hidden"), py::arg("ids"),
        py::arg("tokens"), py::arg("top_k"), py::arg("num_experts"), py::arg("up_weight"), py::arg("down_weight"),
        py::arg("d"), py::arg("f"), py::arg("weights"), py::arg("round_products"), py::arg("rule"), py::arg("flop"),
        py::arg("pim"), py::arg("table_len"), py::arg("read_s"), py::arg("launch_s"), py::arg("comm"), py::arg("gfix"),
        py::arg("pfix"), py::arg("plan_out"), py::arg("hot_mma"), py::arg("workspace"), py::arg("out"),
        py::arg("err_out"), py::arg("stream"), py::arg("side"), py::arg("down_k_splits") = 1,
        py::arg("mma_pass_tiles") = 0);
  m.def("expert_mma", &expert_mma_entry, py::arg("dtype"), py::arg("x"), py::arg("in_pairs"), py::arg("top_k"),
        py::arg("weight"), py::arg("list_expert"), py::arg("list_begin"), py::arg("list_count"), py::arg("offs"),
        py::arg("lists"), py::arg("rows"), py::arg("out_rows"), py::arg("k_dim"), py::arg("silu_chunk"), py::arg("max_tokens"),
        py::arg("lists_ready"), py::arg("out"), py::arg("stream"), py::arg("k_splits") = 1, py::arg("partial") = 0,
        py::arg("pass_tiles") = 0);
  m.def("split_k", [](int k_splits, int k_dim) {
          const SplitK s = SplitK::make(k_splits, k_dim, 0, 1);
          return py::make_tuple(s.splits, s.on() ? s.k_split : k_dim);
        }, py::arg("k_splits"), py::arg("k_dim"),
        "(splits launched, K per split) for `k_splits` requested splits of a row of k_dim elements");
  m.attr("SPLIT_K_GRAIN") = kSplitKGrain;
  m.def("unpermute", &unpermute, py::arg("dtype"), py::arg("w_dtype"), py::arg("y_hot"), py::arg("y_cold"),
        py::arg("pair_row"), py::arg("weights"), py::arg("tokens"), py::arg("top_k"), py::arg("d"),
        py::arg("round_products"), py::arg("out"), py::arg("stream"));
}
