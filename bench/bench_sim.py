"""Cost of simulating one decode step (pytest-benchmark).

Run:  python -m pytest bench/bench_sim.py --benchmark-json bench/results/sim-cpu-2core.json
Goal: one Qwen3.5-397B-A17B decode step on 8 GPUs at batch 256 in at most 50 ms on the 2-core CPU.
Routing is generated beforehand (the workload), the simulation is timed.
"""
from __future__ import annotations

import pytest

import heteromoe
from heteromoe.sim import StepSimulator, SyntheticWorkload

POLICIES = ["gpu-only", "sieve", "heteromoe", "pimoe"]


@pytest.mark.parametrize("policy", POLICIES)
def test_qwen35_step_on_8_gpus_batch_256(benchmark, policy):
    spec = heteromoe.models.get("qwen3.5-397b-a17b")
    step = SyntheticWorkload(spec).steps(256, 1)[0]
    sim = StepSimulator(spec, "b200-hbm3e-pim", 8, policy, context=2048, record=False)
    result = benchmark(sim.run, step)
    benchmark.extra_info.update(step_time_s=result.step_time_s, layers=spec.num_layers)


def test_qwen35_step_with_timeline(benchmark):
    """The same with the timeline and plans recorded (what `--plot` and the API's default do)."""
    spec = heteromoe.models.get("qwen3.5-397b-a17b")
    step = SyntheticWorkload(spec).steps(256, 1)[0]
    sim = StepSimulator(spec, "b200-hbm3e-pim", 8, "sieve", context=2048, record=True)
    benchmark(sim.run, step)
