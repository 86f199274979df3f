"""`heteromoe.schedule()` at large token counts: planning time must not grow with the count (pytest-benchmark).

Run:  python -m pytest bench/bench_plan_large_counts.py --benchmark-json bench/results/plan-large-counts-cpu-2core.json

One `schedule()` call per round, as a user makes it (a fresh cost model each call, so any per-count table is
rebuilt each time): Qwen3-30B-A3B (128 experts) on one h100-hbm3-pim (the shipped measured GPU table), a
Zipf-like load whose largest expert gets about `max_count` tokens, for `sieve`, `heteromoe`, `duplex` and
`pimoe`, from 10^3 to 10^7 tokens on the largest expert.
"""
from __future__ import annotations

import numpy as np
import pytest

import heteromoe

MODEL = "qwen3-30b-a3b"
SYSTEM = "h100-hbm3-pim"


def counts_for(max_count: int) -> np.ndarray:
    weights = 1.0 / np.arange(1, 129) ** 1.2
    counts = np.floor(weights / weights[0] * max_count).astype(np.int64)
    return np.random.default_rng(0).permutation(counts)


@pytest.mark.parametrize("max_count", [1_000, 100_000, 1_000_000, 10_000_000])
@pytest.mark.parametrize("policy", ["sieve", "heteromoe", "duplex", "pimoe"])
def test_schedule(benchmark, policy, max_count):
    counts = counts_for(max_count)
    plan = benchmark(heteromoe.schedule, counts, model=MODEL, system=SYSTEM, policy=policy)
    plan.validate(counts)
