"""What checking a backend's output costs on the generic path, on the CPU (pytest-benchmark).

Run:  python -m pytest bench/bench_fault_check.py --benchmark-min-rounds=20 \
          --benchmark-json bench/results/fault-check-cpu-2core.json

`runtime.executor.check_backend_output` runs after every backend call of the generic path: metadata checks
(type, shape, dtype, device) and one `isfinite(out).all()` reduction read back as a bool. Timed here: the check
alone on slices of 2 to 2048 pairs of a Qwen3-30B-A3B-sized hidden state (d = 2048, fp32), and a whole
generic-path layer call (Qwen3-30B-A3B's expert shape, 8 experts, top-2; policy `sieve`, so a call has a GPU
and a PIM slice) with the check and with it replaced by a no-op, at 1, 16 and 256 tokens. Torch runs one intra-op thread here: on a shared
2-core machine a parallel reduction waits for a descheduled thread for milliseconds, which would time the
machine's load rather than the check.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from heteromoe.runtime import executor as executor_mod
from heteromoe.runtime.executor import check_backend_output
from heteromoe.runtime.work import WorkSlice

torch.set_num_threads(1)

HIDDEN = 2048
INTERMEDIATE = 768
EXPERTS = 8
TOP_K = 2


@pytest.mark.parametrize("pairs", [2, 32, 512, 2048])
def test_check_alone(benchmark, pairs):
    hidden = torch.randn(pairs, HIDDEN)
    weights = torch.rand(pairs, 1)
    out = torch.randn(pairs, HIDDEN)
    work = WorkSlice(experts=np.array([0]), offsets=np.array([0, pairs]), pair_index=np.arange(pairs), top_k=1)
    assert benchmark(check_backend_output, out, work, hidden, weights, torch.float32) is None


@pytest.fixture(scope="module")
def layer_setup():
    import dataclasses

    from transformers import Qwen3MoeConfig
    from transformers.models.qwen3_moe.modeling_qwen3_moe import Qwen3MoeExperts

    import heteromoe
    from heteromoe.cost.model import CostModel
    from heteromoe.device import registry
    from heteromoe.runtime.executor import MoEExecutor
    from heteromoe.runtime.layer import ExpertLayer
    from heteromoe.sched import get_policy
    from heteromoe.sched.placement import Placement

    torch.manual_seed(0)
    config = Qwen3MoeConfig(hidden_size=HIDDEN, moe_intermediate_size=INTERMEDIATE, num_experts=EXPERTS,
                            num_experts_per_tok=TOP_K)
    module = Qwen3MoeExperts(config)
    with torch.no_grad():
        for p in module.parameters():
            p.normal_(0, 0.02)
    layer = ExpertLayer.from_module("layer", module)
    spec = dataclasses.replace(heteromoe.models.get("qwen3-30b-a3b"), num_experts=EXPERTS, top_k=TOP_K)
    cost = CostModel(heteromoe.systems.get("h100-hbm3-pim"), spec)
    torch_backend = registry.get("torch")
    executor = MoEExecutor(get_policy("sieve"), torch_backend, registry.get("pim-emulator"), torch_backend)
    placement = Placement.from_homes(np.zeros(EXPERTS, dtype=np.int64), 1)
    return layer, cost, executor, placement


@pytest.mark.parametrize("checked", [True, False], ids=["checked", "unchecked"])
@pytest.mark.parametrize("tokens", [1, 16, 256])
def test_generic_layer_call(benchmark, layer_setup, monkeypatch, tokens, checked):
    layer, cost, executor, placement = layer_setup
    if not checked:
        monkeypatch.setattr(executor_mod, "check_backend_output", lambda *args, **kwargs: None)
    g = torch.Generator().manual_seed(tokens)
    hidden = torch.randn(tokens, HIDDEN, generator=g)
    top_k_index = torch.stack([torch.randperm(EXPERTS, generator=g)[:TOP_K] for _ in range(tokens)])
    top_k_weights = torch.rand(tokens, TOP_K, generator=g)
    with torch.no_grad():
        out = benchmark(executor.run, layer, cost, placement, hidden, top_k_index, top_k_weights)
    assert out.shape == (tokens, HIDDEN) and torch.isfinite(out).all()
