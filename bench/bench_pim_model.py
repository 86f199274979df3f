"""Cost of the PIM timing model's closed form per MoE layer call (pytest-benchmark).

Run:  python -m pytest bench/bench_pim_model.py --benchmark-json bench/results/pim-model-cpu-2core.json
Goal: all experts of a layer in one vectorized call, at most 2 us for 128 experts.
"""
from __future__ import annotations

import numpy as np
import pytest

import heteromoe
from heteromoe.cost import BankPimTiming, default_pim_cost

CASES = [("b200-hbm3e-pim", "qwen3-30b-a3b"), ("b200-hbm3e-pim", "qwen3.5-397b-a17b"), ("h100-hbm3-pim", "mixtral-8x7b")]


@pytest.mark.parametrize("system,model", CASES, ids=[f"{s}-{m}" for s, m in CASES])
def test_layer_times_closed_form(benchmark, system, model):
    """`times_s` for every expert of a layer: what the scheduler calls per layer."""
    spec = heteromoe.models.get(model)
    pim = default_pim_cost(heteromoe.systems.get(system), spec)
    tokens = np.random.default_rng(0).poisson(2.0, size=spec.num_experts)
    pim.times_s(tokens)  # first call derives the per-token time of the shape
    benchmark(pim.times_s, tokens)
    benchmark.extra_info["experts"] = spec.num_experts


def test_gemv_closed_form_uncached(benchmark):
    """One GEMV's closed form from scratch (a new shape)."""
    t = BankPimTiming(heteromoe.systems.get("b200-hbm3e-pim").pim)
    benchmark(t.gemv_s, 2048, 1536, 1)


def test_gemv_command_walk(benchmark):
    """The command-level path for the same GEMV (validation only)."""
    t = BankPimTiming(heteromoe.systems.get("b200-hbm3e-pim").pim)
    benchmark(t.gemv_commands, 2048, 1536, 1)
