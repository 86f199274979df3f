"""Per-layer scheduling cost, measured from Python (pytest-benchmark).

Run:  python -m pytest bench/bench_fastpath.py --benchmark-json bench/results/fastpath-<machine>.json
Loads are synthetic bimodal routing (`heteromoe.routing.BimodalRouting`), batch 64
decode tokens. Goal: a whole `Policy.plan()` call (counts in, validated Plan out) in at most
20 us for 128 experts on 1 GPU and 50 us for 512 experts on 8 GPUs on the 2-core CI machine.
"""
from __future__ import annotations

import pytest

import heteromoe
from heteromoe import _ext
from heteromoe.cost import CostModel
from heteromoe.routing import BimodalRouting
from heteromoe.sched import get_policy
from heteromoe.sched.placement import Placement, contiguous_placement
from heteromoe.sched.replicas import place_replicas

CASES = [("qwen3-30b-a3b", 1), ("qwen3.5-397b-a17b", 8)]
IDS = [f"{m}-x{g}" for m, g in CASES]


def setup_case(model: str, gpus: int):
    spec = heteromoe.models.get(model)
    cost = CostModel(heteromoe.systems.get("b200-hbm3e-pim"), spec, attn_kv_bytes=64 * 2048 * 2048 / gpus)
    counts = BimodalRouting.for_model(spec, seed=0).counts(64, 1)[0]
    return cost, counts, Placement.from_homes(contiguous_placement(spec.num_experts, gpus), gpus)


@pytest.mark.parametrize("policy", ["sieve", "heteromoe"])
@pytest.mark.parametrize("model,gpus", CASES, ids=IDS)
def test_plan_per_layer(benchmark, policy, model, gpus):
    """The runtime's per-layer call: checks, cost tables, fast-path decision + evaluation, validation."""
    cost, counts, homes = setup_case(model, gpus)
    p = get_policy(policy)
    plan = benchmark(p.plan, counts, homes, gpus, cost)
    benchmark.extra_info.update(fastpath=_ext.impl.name, pim_experts=int(plan.pim_experts.size),
                                gpu_experts=int(plan.gpu_experts.size))


def test_plan_per_layer_with_replicas(benchmark):
    """heteromoe on 8 GPUs with 2 replica slots per GPU: routing to replicas + two planning passes."""
    cost, counts, homes = setup_case("qwen3.5-397b-a17b", 8)
    placement = place_replicas(counts.astype(float), homes.home_gpu, 8, slots_per_gpu=2)
    p = get_policy("heteromoe")
    plan = benchmark(p.plan, counts, placement, 8, cost)
    benchmark.extra_info.update(fastpath=_ext.impl.name, slots=placement.num_slots, replicas_used=bool(plan.has_replicas))


@pytest.mark.parametrize("impl", list(_ext.IMPLEMENTATIONS))
@pytest.mark.parametrize("kernel", ["sieve_plan", "heteromoe_plan"])
@pytest.mark.parametrize("model,gpus", CASES, ids=IDS)
def test_plan_kernel(benchmark, impl, kernel, model, gpus):
    """The decision kernel alone, per implementation (C++ / numba / python)."""
    cost, counts, homes = setup_case(model, gpus)
    ctx = get_policy("sieve").context(counts, homes, cost)
    fn = getattr(_ext.IMPLEMENTATIONS[impl], kernel)
    args = ctx.fast_path_args()
    fn(*args)  # compile numba outside the timing
    benchmark(fn, *args)
    benchmark.extra_info["impl"] = impl
