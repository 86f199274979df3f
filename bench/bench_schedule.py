"""Cost of the public scheduling calls against the policy's own per-layer call (pytest-benchmark).

Run:  python -m pytest bench/bench_schedule.py --benchmark-json bench/results/schedule-cpu-2core.json

Three ways to plan the same layer call (synthetic bimodal routing, batch 64, b200-hbm3e-pim, decode attention
over 2048 tokens of context), for `sieve` and `heteromoe`, 128 experts on 1 GPU and 512 on 8:

- `policy-plan`: `Policy.plan(counts, placement, gpus, cost)` with the cost model, placement and policy built
  once: the floor, what the runtime calls per layer;
- `schedule`: `heteromoe.schedule(counts, model=..., system=..., gpus=..., policy=...)` called in a loop with
  preset names, as a user script would;
- `scheduler`: `heteromoe.Scheduler(model=..., system=..., gpus=..., policy=...).plan(counts)`.

Goals: `schedule` within 1.5x of `policy-plan` and `Scheduler.plan` within 1.1x (median). Each test of the
latter two records its ratio to `policy-plan` of the same case in `extra_info["ratio_to_policy_plan"]` and
fails if the goal is missed (the `policy-plan` test of a case runs first; with `--benchmark-disable` no ratio
is taken).
"""
from __future__ import annotations

import pytest

import heteromoe
from heteromoe.cost import CostModel
from heteromoe.routing import BimodalRouting
from heteromoe.sched import get_policy
from heteromoe.sched.placement import Placement, contiguous_placement

SYSTEM = "b200-hbm3e-pim"
CASES = [("qwen3-30b-a3b", 1), ("qwen3.5-397b-a17b", 8)]
IDS = [f"{m}-x{g}" for m, g in CASES]
GOALS = {"schedule": 1.5, "scheduler": 1.1}
_MEDIANS: dict[tuple, float] = {}


def _attn_kv_bytes(gpus: int) -> float:
    return 64 * 2048 * 2048 / gpus  # batch 64, 2048 tokens of context, 2 KiB of KV per token, per GPU


def _counts(model: str):
    return BimodalRouting.for_model(heteromoe.models.get(model), seed=0).counts(64, 1)[0]


def _call(kind: str, policy: str, model: str, gpus: int):
    """A zero-argument callable planning one layer call the way `kind` names."""
    counts = _counts(model)
    kv = _attn_kv_bytes(gpus)
    if kind == "policy-plan":
        spec = heteromoe.models.get(model)
        cost = CostModel(heteromoe.systems.get(SYSTEM), spec, attn_kv_bytes=kv)
        homes = Placement.from_homes(contiguous_placement(spec.num_experts, gpus), gpus)
        p = get_policy(policy)
        return lambda: p.plan(counts, homes, gpus, cost)
    if kind == "schedule":
        return lambda: heteromoe.schedule(counts, model=model, system=SYSTEM, gpus=gpus, policy=policy,
                                          attn_kv_bytes=kv)
    if not hasattr(heteromoe, "Scheduler"):
        pytest.skip("heteromoe.Scheduler is not in this version")
    scheduler = heteromoe.Scheduler(model=model, system=SYSTEM, gpus=gpus, policy=policy, attn_kv_bytes=kv)
    return lambda: scheduler.plan(counts)


@pytest.mark.parametrize("kind", ["policy-plan", "schedule", "scheduler"])
@pytest.mark.parametrize("policy", ["sieve", "heteromoe"])
@pytest.mark.parametrize("model,gpus", CASES, ids=IDS)
def test_schedule_call(benchmark, kind, policy, model, gpus):
    fn = _call(kind, policy, model, gpus)
    reference = fn()
    benchmark.group = f"{policy} {model} x{gpus}"
    plan = benchmark(fn)
    assert plan.predicted_time_s == reference.predicted_time_s  # every way plans the same layer call alike
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable
        return
    _MEDIANS[(kind, policy, model, gpus)] = stats.stats.median
    base = _MEDIANS.get(("policy-plan", policy, model, gpus))
    if kind in GOALS and base:
        ratio = stats.stats.median / base
        benchmark.extra_info["ratio_to_policy_plan"] = round(ratio, 3)
        assert ratio <= GOALS[kind], f"{kind} median is {ratio:.2f}x Policy.plan's (goal {GOALS[kind]}x)"
