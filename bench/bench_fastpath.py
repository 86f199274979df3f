"""Per-layer scheduling cost, measured from Python (pytest-benchmark).

Run:  python -m pytest bench/bench_fastpath.py --benchmark-json bench/results/fastpath-<machine>.json
Loads are synthetic two-class bimodal routing (DESIGN.md section 6: a share h of hot experts with r times
the popularity of the rest), batch 64 decode tokens.
"""
from __future__ import annotations

import numpy as np
import pytest

import heteromoe
from heteromoe import _ext
from heteromoe.cost import CostModel
from heteromoe.sched import get_policy
from heteromoe.sched.placement import contiguous_placement
from heteromoe.sched.policies.sieve import greedy_order

CASES = [("qwen3-30b-a3b", 1, 0.5, 10.0), ("qwen3.5-397b-a17b", 8, 0.3, 8.0)]


def bimodal_counts(num_experts: int, top_k: int, batch: int, hot_share: float, ratio: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    popularity = np.ones(num_experts)
    popularity[rng.permutation(num_experts)[: int(hot_share * num_experts)]] = ratio
    p = popularity / popularity.sum()
    counts = np.zeros(num_experts, dtype=np.int64)
    for _ in range(batch):
        counts[rng.choice(num_experts, size=top_k, replace=False, p=p)] += 1
    return counts


@pytest.mark.parametrize("model,gpus,hot,ratio", CASES, ids=[f"{m}-x{g}" for m, g, _, _ in CASES])
def test_sieve_plan_per_layer(benchmark, model, gpus, hot, ratio):
    """The runtime's per-layer path: cost arrays + greedy (fast path) + evaluation + validation."""
    spec = heteromoe.models.get(model)
    cost = CostModel(heteromoe.systems.get("b200-hbm3e-pim"), spec)
    counts = bimodal_counts(spec.num_experts, spec.top_k, 64, hot, ratio)
    homes = contiguous_placement(spec.num_experts, gpus)
    policy = get_policy("sieve")
    plan = benchmark(policy.plan, counts, homes, gpus, cost)
    benchmark.extra_info.update(fastpath=_ext.impl.name, pim_experts=int(plan.pim_experts.size),
                                gpu_experts=int(plan.gpu_experts.size))


@pytest.mark.parametrize("impl", list(_ext.IMPLEMENTATIONS))
@pytest.mark.parametrize("model,gpus,hot,ratio", CASES, ids=[f"{m}-x{g}" for m, g, _, _ in CASES])
def test_sieve_greedy_kernel(benchmark, impl, model, gpus, hot, ratio):
    """The greedy decision alone, per implementation (C++ / numba / numpy)."""
    spec = heteromoe.models.get(model)
    cost = CostModel(heteromoe.systems.get("b200-hbm3e-pim"), spec)
    counts = bimodal_counts(spec.num_experts, spec.top_k, 64, hot, ratio)
    homes = contiguous_placement(spec.num_experts, gpus)
    order, seg = greedy_order(counts, homes, gpus)
    args = (order, seg, cost.gpu.read_s(counts), cost.gpu.flop_s(counts), cost.pim.times_s(counts),
            cost.comm_s(counts, homes, gpus), np.zeros(gpus), cost.gpu.launch_s, np.zeros(gpus))
    fn = _ext.IMPLEMENTATIONS[impl].sieve_greedy
    fn(*args)  # compile numba outside the timing
    benchmark(fn, *args)
    benchmark.extra_info["impl"] = impl
