"""The runtime: splitting a plan into backend slices, and falling back when a backend fails."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import heteromoe
from heteromoe.device import Backend, registry
from heteromoe.routing import loads_from_topk
from heteromoe.runtime.executor import split_work
from heteromoe.sched import Plan, PlanError
from tests.helpers import failing_pim_backend, tiny_model


def test_split_work_covers_every_pair_once():
    top_k_index = np.array([[0, 2], [2, 1], [2, 0], [3, 2]])
    loads = loads_from_topk(top_k_index, 4)  # counts [2, 1, 4, 1]
    z = np.zeros(1)
    plan = Plan("t", np.zeros(4, np.int64), np.array([1, 0, 3, 0]), np.array([1, 1, 1, 1]), z, z, z)
    gpu, pim = split_work(loads, plan)
    assert gpu.experts.tolist() == [0, 2] and gpu.pair_index.tolist() == [0, 1, 2, 4]
    assert pim.experts.tolist() == [0, 1, 2, 3] and pim.pair_index.tolist() == [5, 3, 7, 6]
    assert sorted(gpu.pair_index.tolist() + pim.pair_index.tolist()) == list(range(8))


def test_split_work_rejects_a_plan_that_loses_pairs():
    loads = loads_from_topk(np.array([[0], [0]]), 2)
    z = np.zeros(1)
    with pytest.raises(PlanError):
        split_work(loads, Plan("t", np.zeros(2, np.int64), np.array([1, 0]), np.array([0, 0]), z, z, z))


def test_backend_failure_falls_back_and_loses_no_token(caplog):
    model = tiny_model("mixtral")
    x = torch.randint(1, 128, (3, 6))
    with torch.no_grad():
        ref = model(x).logits
        flaky = failing_pim_backend("PIM channel 3 timed out")
        runtime = heteromoe.wrap(model, policy="all-exp", pim_backend=flaky)
        with caplog.at_level(logging.WARNING, logger="heteromoe.runtime.executor"):
            out = model(x).logits
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    assert flaky.calls == 2  # two layers, the second failed
    report = runtime.report()
    assert [layer["fallbacks"] for layer in report["layers"]] == [0, 1]
    assert "PIM channel 3 timed out" in caplog.text and "re-running them on 'torch'" in caplog.text
    runtime.unwrap()


class WrongShapeBackend(Backend):
    name = "wrong-shape"
    kind = "pim"

    def run_experts(self, layer, hidden, top_k_weights, work):
        return torch.zeros(1, 1)


def test_backend_returning_garbage_shape_falls_back():
    model = tiny_model("qwen3_moe")
    x = torch.randint(1, 128, (2, 4))
    with torch.no_grad():
        ref = model(x).logits
        runtime = heteromoe.wrap(model, policy="all-exp", pim_backend=WrongShapeBackend())
        out = model(x).logits
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    assert sum(layer["fallbacks"] for layer in runtime.report()["layers"]) == 2
    runtime.unwrap()


class TimedPimBackend(Backend):
    """A 'real' PIM backend: exact outputs, and measured times 1.7x what the timing model says."""

    name = "timed-pim"
    kind = "pim"

    def __init__(self, cost_for):
        self.cost_for = cost_for

    def run_experts(self, layer, hidden, top_k_weights, work):
        return registry.get("pim-emulator").run_experts(layer, hidden, top_k_weights, work)

    def reported_times_s(self, work):
        return 1.7 * self.cost_for.times_s(work.tokens_per_expert)


def test_runtime_feeds_reported_pim_times_to_the_learned_table():
    from heteromoe.cost import default_pim_cost

    spec = heteromoe.models.get("qwen3-30b-a3b")
    system = heteromoe.systems.get("b200-hbm3e-pim")
    model = tiny_model("qwen3_moe", num_experts=128, top_k=8)
    base = default_pim_cost(system, spec)
    runtime = heteromoe.wrap(model, system=system, model_spec=spec, policy="all-exp", learn_pim_costs=True,
                             pim_backend=TimedPimBackend(base))
    with torch.no_grad():
        for seed in range(3):
            model(torch.randint(1, 128, (2, 4), generator=torch.Generator().manual_seed(seed)))
    learned = next(iter(runtime._bindings.values())).cost.pim
    assert learned.seen[1]
    assert learned.times_s(np.array([1]))[0] == pytest.approx(1.7 * base.times_s(np.array([1]))[0])
    runtime.unwrap()
