"""`heteromoe calibrate`: measure the runtime's own GPU expert times and write a GPU cost table.

For each expert shape (a model preset's d, f) and token count n, the fused layer path runs m experts with
exactly n tokens each, captured in a CUDA graph and replayed (device time, no launch cost), for several values
of m (top_k up to 64 experts); the least-squares slope is one expert's time at n tokens, the intercept
the layer's fixed cost (median over n). The table
(`cost.gpu_table.GpuCostTable`) then replaces the roofline in `CostModel` for that GPU and shape.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch

__all__ = ["TOKEN_COUNTS", "exact_routing", "expert_layer", "graph_time_s", "measure_table", "read_bandwidth"]

TOKEN_COUNTS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)


def read_bandwidth(gib: float = 4.0) -> float:
    """Achievable HBM read bandwidth (bytes/s): a large bf16 tensor's bytes over the time of summing it."""
    x = torch.ones(int(gib * 1024**3 // 2), dtype=torch.bfloat16, device="cuda")
    for _ in range(3):
        x.sum()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        x.sum()
    end.record()
    torch.cuda.synchronize()
    bw = 10 * x.numel() * 2 / (start.elapsed_time(end) / 1e3)
    del x
    torch.cuda.empty_cache()
    return bw


def graph_time_s(fn, replays: int = 50, repeats: int = 5) -> float:
    """Median device seconds of one `fn()` call: captured once as a CUDA graph, replayed `replays` times
    between two events, `repeats` times. `fn` must not synchronize with the host."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    graph.replay()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(replays):
            graph.replay()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3 / replays)
    return float(np.median(times))


def expert_layer(num_experts: int, top_k: int, d: int, f: int, dtype=torch.bfloat16, seed: int = 0):
    """A Qwen3-MoE experts module of the given shape on the GPU, N(0, 0.02) weights (transformers' init)."""
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeExperts

    config = Qwen3MoeConfig(hidden_size=d, moe_intermediate_size=f, num_experts=num_experts,
                            num_experts_per_tok=top_k)
    config._experts_implementation = "grouped_mm"
    torch.manual_seed(seed)
    experts = Qwen3MoeExperts(config).to(device="cuda", dtype=dtype)
    with torch.no_grad():
        for p in experts.parameters():
            p.normal_(0.0, 0.02)
    return experts


def exact_routing(num_experts_used: int, tokens_each: int, top_k: int, d: int, dtype=torch.bfloat16):
    """Routing where experts 0..m-1 get exactly n tokens each: T = m n / k tokens, token t's slot s goes to
    expert (t k + s) mod m (distinct inside a token since k <= m)."""
    m, n = num_experts_used, tokens_each
    if top_k > m or (m * n) % top_k:
        raise ValueError(f"cannot give {m} experts {n} tokens each with top-{top_k}")
    tokens = m * n // top_k
    ids = (torch.arange(tokens)[:, None] * top_k + torch.arange(top_k)[None, :]) % m
    gen = torch.Generator(device="cuda").manual_seed(n)
    hidden = torch.randn(tokens, d, device="cuda", dtype=dtype, generator=gen)
    weights = torch.softmax(torch.randn(tokens, top_k, device="cuda", generator=gen), dim=-1).to(dtype)
    return hidden, ids.cuda(), weights


def measure_table(name: str, num_experts: int, top_k: int, d: int, f: int, counts=TOKEN_COUNTS,
                  dtype=torch.bfloat16, gemv_max_tokens: int = 2) -> dict:
    """One shape's table: {"per_expert_s": {n: s}, "fixed_s": s, ...} from the fused path (policy gpu-only)."""
    from heteromoe.runtime.fused import FusedLayerPath
    from heteromoe.runtime.layer import ExpertLayer

    experts = expert_layer(num_experts, top_k, d, f, dtype)
    layer = ExpertLayer.from_module(name, experts)
    runtime = FusedLayerPath()
    above = runtime.tuning.gemv_batch_tokens + 1  # the smallest batch past the all-GEMV regime
    hot_kernel = ("mma" if runtime.mma_ok(layer, above, above * top_k, layer.device)
                  else "triton" if runtime.hot_on_triton(layer, layer.device) else "grouped_mm")
    # each regime as the table models it: past the all-GEMV batches, every expert on the tensor-core kernel
    # where the runtime runs it so, else the kernel choice by token count (GEMV / grouped GEMM)
    path = (FusedLayerPath(gemv_max_tokens=gemv_max_tokens, gemv_batch_tokens=0, mma_min_warps_per_sm=0,
                           mma_max_tokens=1 << 30) if hot_kernel == "mma" else
            FusedLayerPath(gemv_max_tokens=gemv_max_tokens, gemv_batch_tokens=0, mma_max_tokens=0))
    dtype_name = str(dtype).replace("torch.", "")
    raw = _measure(path, layer, counts, top_k, d, dtype)
    table = table_from_measurements(num_experts, top_k, d, f, dtype_name, raw, gemv_max_tokens,
                                    runtime.tuning.gemv_batch_tokens)
    table["hot_kernel"] = hot_kernel
    if hot_kernel == "mma":  # the batches of at most gemv_batch_tokens tokens: every expert on the GEMV
        gemv = FusedLayerPath(gemv_max_tokens=gemv_max_tokens, gemv_batch_tokens=1 << 30, mma_max_tokens=0)
        small = _measure(gemv, layer, [n for n in counts if n <= runtime.tuning.gemv_batch_tokens], top_k, d, dtype)
        fit = table_from_measurements(num_experts, top_k, d, f, dtype_name, small, 1 << 30)
        table["small_batch"] = {"kernel": "gemv", "per_expert_s": fit["per_expert_s"], "fixed_s": fit["fixed_s"],
                                "measurements": small}
    return table


def _measure(path, layer, counts, top_k: int, d: int, dtype) -> list[dict]:
    """Per token count n: the layer call's graph time with m experts of n tokens each, m = top_k .. 64."""
    # experts per call: top_k, then doublings up to 64 (or E): a least-squares line through them
    used = sorted({min(layer.num_experts, m) for m in (top_k, 2 * top_k, 16, 32, 64) if m >= top_k})
    raw = []
    for n in counts:
        times = []
        for m in used:
            hidden, ids, weights = exact_routing(m, n, top_k, d, dtype)
            with torch.no_grad():
                times.append(graph_time_s(lambda: path.run(layer, hidden, ids, weights)))
        raw.append({"tokens": n, "experts": used, "layer_s": times})
    return raw


def table_from_measurements(num_experts: int, top_k: int, d: int, f: int, dtype: str, raw: list[dict],
                            gemv_max_tokens: int, gemv_batch_tokens: int = 4) -> dict:
    """Fit the table: per token count n, a least-squares line through (experts, layer seconds); its slope is
    one expert's time at n tokens. The intercepts give the fixed costs of the two regimes: `fixed_s` (median
    over n <= gemv_max_tokens: route_prep, unpermute, launches) and `grouped_fixed_s`, what a call adds once
    some expert has more tokens and the grouped-GEMM side runs (gather, two grouped GEMMs, the gate, the
    second stream)."""
    per_expert, small, large = {}, [], []
    for m in raw:
        slope, intercept = np.polyfit(np.asarray(m["experts"], dtype=np.float64), np.asarray(m["layer_s"]), 1)
        per_expert[int(m["tokens"])] = float(max(slope, 1e-9))
        (small if m["tokens"] <= gemv_max_tokens else large).append(float(intercept))
    fixed = max(float(np.median(small)), 0.0) if small else 0.0
    grouped = max(float(np.median(large)) - fixed, 0.0) if large else 0.0
    return {"shape": {"num_experts": num_experts, "top_k": top_k, "hidden_size": d, "intermediate_size": f,
                      "dtype": dtype},
            "gemv_max_tokens": gemv_max_tokens, "gemv_batch_tokens": gemv_batch_tokens, "per_expert_s": {str(n): s for n, s in sorted(per_expert.items())},
            "fixed_s": fixed, "grouped_fixed_s": grouped, "measurements": raw}


def calibrate(model_names: list[str], gpu_name: str | None, out: Path, counts=TOKEN_COUNTS) -> dict:
    """Measure every model preset's expert shape; write {"gpu", "device", "bandwidth", "tables"} as JSON."""
    import heteromoe

    if not torch.cuda.is_available():
        raise RuntimeError("heteromoe calibrate needs a CUDA GPU (it measures the runtime's own kernels)")
    from heteromoe import kernels

    if not kernels.HAS_CUDA_KERNELS:
        raise RuntimeError(f"heteromoe._cuda is not built here ({kernels.cuda_load_error}); reinstall with nvcc")
    result = {"gpu": gpu_name, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
              "date": time.strftime("%Y-%m-%d"), "read_bandwidth_bytes_per_s": read_bandwidth(), "tables": {}}
    for name in model_names:
        spec = heteromoe.models.get(name)
        result["tables"][spec.name] = measure_table(spec.name, spec.num_experts, spec.top_k, spec.hidden_size,
                                                    spec.moe_intermediate_size, counts)
    out.write_text(json.dumps(result, indent=1))
    return result
