"""One MoE layer on a GPU: heteromoe's runtime against transformers' grouped_mm (pytest-benchmark).

Run on a GPU machine:
    python -m pytest bench/bench_gpu_layer.py --benchmark-json bench/results/gpu-layer-<gpu>.json
Qwen3-30B-A3B-shaped layer (128 experts, d 2048, f 768, bf16) and Mixtral-8x7B-shaped (8 experts, d 4096,
f 14336), bimodal routing (`routing.synth`), batch 1-256. Each benchmark records in extra_info the bytes of
the weights its routing touches and the achievable read bandwidth measured in the same run (a large
reduction over HBM), so the JSON gives the share of bandwidth reached. Skipped without a CUDA GPU.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

SHAPES = {"qwen3-30b-a3b": (128, 8, 2048, 768), "mixtral-8x7b": (8, 2, 4096, 14336)}
BATCHES = [1, 2, 4, 16, 64, 256]


def read_bandwidth() -> float:
    """Achievable HBM read bandwidth: bytes of a 4 GiB bf16 tensor over the time of summing it."""
    x = torch.ones(2 * 1024**3, dtype=torch.bfloat16, device="cuda")
    for _ in range(3):
        x.sum()
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(10):
        x.sum()
    end.record()
    torch.cuda.synchronize()
    return 10 * x.numel() * 2 / (start.elapsed_time(end) / 1e3)


@pytest.fixture(scope="module")
def bandwidth():
    return read_bandwidth()


def layer(model: str):
    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeExperts

    E, k, d, f = SHAPES[model]
    config = Qwen3MoeConfig(hidden_size=d, moe_intermediate_size=f, num_experts=E, num_experts_per_tok=k)
    config._experts_implementation = "grouped_mm"
    torch.manual_seed(0)
    experts = Qwen3MoeExperts(config).to(device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        for p in experts.parameters():
            p.normal_(0.0, 0.02)
    return experts, config


def routing(model: str, batch: int):
    from heteromoe.routing import BimodalRouting

    E, k, d, _ = SHAPES[model]
    gen = BimodalRouting(num_experts=E, top_k=k, hot_share=0.5, ratio=14.0, seed=batch)
    ids = torch.from_numpy(gen.decode(batch, 1, 1)[0, 0]).cuda()
    weights = torch.softmax(torch.randn(batch, k, device="cuda"), dim=-1)
    hidden = torch.randn(batch, d, device="cuda", dtype=torch.bfloat16)
    touched = len(np.unique(ids.cpu().numpy())) * 3 * d * SHAPES[model][3] * 2
    return hidden, ids, weights, touched


def timed(benchmark, fn, touched, bandwidth):
    def run():
        out = fn()
        torch.cuda.synchronize()
        return out

    for _ in range(3):
        run()
    benchmark.pedantic(run, rounds=30, iterations=1)
    benchmark.extra_info.update(gpu=torch.cuda.get_device_name(), touched_weight_bytes=touched,
                                read_bandwidth_bytes_per_s=bandwidth,
                                share_of_read_bandwidth=touched / benchmark.stats.stats.median / bandwidth)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("model", list(SHAPES))
def test_transformers_grouped_mm(benchmark, bandwidth, model, batch):
    experts, _ = layer(model)
    hidden, ids, weights, touched = routing(model, batch)
    with torch.no_grad():
        timed(benchmark, lambda: experts(hidden, ids, weights), touched, bandwidth)


@pytest.mark.parametrize("batch", BATCHES)
@pytest.mark.parametrize("model", list(SHAPES))
def test_heteromoe_gpu_only(benchmark, bandwidth, model, batch):
    import heteromoe
    from heteromoe.cost.model import CostModel
    from heteromoe.device import registry
    from heteromoe.runtime.executor import MoEExecutor
    from heteromoe.runtime.layer import ExpertLayer
    from heteromoe.sched import get_policy
    from heteromoe.sched.placement import Placement

    experts, _ = layer(model)
    hidden, ids, weights, touched = routing(model, batch)
    E = SHAPES[model][0]
    spec = heteromoe.models.get(model)
    cost = CostModel(heteromoe.systems.get("h100-hbm3-pim"), spec)
    torch_backend = registry.get("torch")
    executor = MoEExecutor(get_policy("gpu-only"), torch_backend, registry.get("pim-emulator"), torch_backend)
    view = ExpertLayer.from_module("layer", experts)
    placement = Placement.from_homes(np.zeros(E, dtype=np.int64), 1)
    with torch.no_grad():
        ref = experts(hidden, ids, weights)
        out = executor.run(view, cost, placement, hidden, ids, weights)
        torch.testing.assert_close(out.float(), ref.float(), rtol=2e-2, atol=2e-2 * ref.abs().max().item())
        timed(benchmark, lambda: executor.run(view, cost, placement, hidden, ids, weights), touched, bandwidth)
