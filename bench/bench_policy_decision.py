"""Decision time of the `heteromoe` policy per layer (pytest-benchmark, public API).

Run:  python -m pytest bench/bench_policy_decision.py --benchmark-json bench/results/policy-decision-cpu-2core.json
Goal (2-core CPU, median): at most 30 us per layer for 128 experts on 1 GPU (Qwen3-30B-A3B) and 75 us for 512
experts on 8 GPUs (Qwen3.5-397B-A17B). One round is one decode step's decisions: `HeteromoePolicy.step_plan`
(sub-batches and the dense placement, from the step's dense cost tables and the first MoE layer's counts)
and `HeteromoePolicy.plan` for every MoE layer's routed experts, once per sub-batch the step plan chose; `per_layer_us` in extra_info is the median
divided by the layers. The inputs (cost tables, counts) are built beforehand, as a runtime keeps them.
"""
from __future__ import annotations

import numpy as np
import pytest

import heteromoe
from heteromoe.sim import StepSimulator, SyntheticWorkload
from heteromoe.sim.layer_work import split_requests

CASES = [("qwen3-30b-a3b", 1, 16), ("qwen3-30b-a3b", 1, 256), ("qwen3.5-397b-a17b", 8, 16),
         ("qwen3.5-397b-a17b", 8, 256)]


def _inputs(model: str, gpus: int, batch: int):
    spec = heteromoe.models.get(model)
    steps = SyntheticWorkload(spec).steps(batch, 2)
    sim = StepSimulator(spec, "b200-hbm3e-pim", gpus, "heteromoe", record=False)
    sim.run(steps[0])  # the EMA table sees one step
    seen = {}
    policy = sim.policy
    original = policy.step_plan

    def capture(*args):
        seen["args"] = args
        return original(*args)

    policy.step_plan = capture
    sim.run(steps[1])
    del policy.step_plan
    subs = {S: split_requests(batch, gpus, S, 2048).rows for S in (1, 2)}
    counts = {S: [[np.bincount(layer[r].ravel(), minlength=spec.num_experts) for r in rows] for layer in steps[1]]
              for S, rows in subs.items()}
    return spec, policy, seen["args"], counts, sim.placement, sim._plain_cost


@pytest.mark.parametrize("model,gpus,batch", CASES)
def test_step_decisions(benchmark, model, gpus, batch):
    spec, policy, args, counts, placement, cost = _inputs(model, gpus, batch)

    def decide():
        plan = policy.step_plan(*args)
        return plan, [policy.plan(c, placement, gpus, cost, step=plan) for layer in counts[plan.sub_batches]
                      for c in layer]

    plan, _ = benchmark(decide)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(layers=spec.num_layers, experts=spec.num_experts, gpus=gpus, batch=batch,
                                sub_batches=plan.sub_batches, per_layer_us=median / spec.num_layers * 1e6)
