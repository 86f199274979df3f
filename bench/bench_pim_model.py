"""Cost of the PIM timing model's closed form per MoE layer call (pytest-benchmark).

Run:  python -m pytest bench/bench_pim_model.py --benchmark-json bench/results/pim-model-cpu-2core.json
Goal: all experts of a layer in one vectorized call, at most 2 us for 128 experts, for the streaming flow
(HBM3 presets) and Samsung's tile flow alike; the command walks are validation only.
"""
from __future__ import annotations

import numpy as np
import pytest

import heteromoe
from heteromoe.cost import BankPimTiming, default_pim_cost

CASES = [("b200-hbm3e-pim", "qwen3-30b-a3b"), ("b200-hbm3e-pim", "qwen3.5-397b-a17b"), ("h100-hbm3-pim", "mixtral-8x7b"),
         ("samsung-hbm2-pim", "qwen3-30b-a3b")]


def layer_cost(system, model):
    spec = heteromoe.models.get(model)
    sys_spec = heteromoe.systems.get(system)
    if sys_spec.gpu is None:  # host-attached PIM: the bank model directly
        from heteromoe.cost import BankPimCost

        return spec, BankPimCost(sys_spec.pim, spec)
    return spec, default_pim_cost(sys_spec, spec)


@pytest.mark.parametrize("system,model", CASES, ids=[f"{s}-{m}" for s, m in CASES])
def test_layer_times_closed_form(benchmark, system, model):
    """`times_s` for every expert of a layer: what the scheduler calls per layer."""
    spec, pim = layer_cost(system, model)
    tokens = np.random.default_rng(0).poisson(2.0, size=spec.num_experts)
    pim.times_s(tokens)  # first call derives the per-token time of the shape
    benchmark(pim.times_s, tokens)
    benchmark.extra_info["experts"] = spec.num_experts


@pytest.mark.parametrize("system", ["b200-hbm3e-pim", "samsung-hbm2-pim"])
def test_gemv_closed_form_uncached(benchmark, system):
    """One GEMV's closed form from scratch (a new shape)."""
    t = BankPimTiming(heteromoe.systems.get(system).pim)
    benchmark(t.gemv_s, 2048, 1536, 1)


@pytest.mark.parametrize("system", ["b200-hbm3e-pim", "samsung-hbm2-pim"])
def test_gemv_closed_form_all_experts_of_a_layer(benchmark, system):
    """The closed form for 128 experts' token counts at once (an array of GEMVs)."""
    t = BankPimTiming(heteromoe.systems.get(system).pim)
    tokens = np.random.default_rng(0).poisson(2.0, size=128) + 1
    benchmark(t.gemv_s, 2048, 1536, tokens)


def test_attention_closed_form(benchmark):
    """Decode attention of 64 requests x 4 KV heads (GQA 8) at 4K context on h100-hbm3-pim."""
    t = BankPimTiming(heteromoe.systems.get("h100-hbm3-pim").pim)
    benchmark(t.attention_s, 4096, 128, 256, 8)


@pytest.mark.parametrize("system", ["b200-hbm3e-pim", "samsung-hbm2-pim"])
def test_gemv_command_walk(benchmark, system):
    """The command-level path for the same GEMV (validation only)."""
    t = BankPimTiming(heteromoe.systems.get(system).pim)
    benchmark(t.gemv_commands, 2048, 1536, 1)
