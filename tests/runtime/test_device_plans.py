"""Device plans settled in bulk (runtime.plan_stats): the vectorized statistics equal the per-call path."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import heteromoe
from heteromoe import kernels
from heteromoe.cost.model import CostModel
from heteromoe.routing import BimodalRouting
from heteromoe.runtime import plan_stats
from heteromoe.runtime.plan_stats import exact_plan, settle_rows
from heteromoe.runtime.report import LayerStats
from heteromoe.sched import get_policy
from heteromoe.sched.placement import Placement
from heteromoe.sched.plan import PlanError

FIELDS = [f.name for f in dataclasses.fields(LayerStats) if f.name != "name"]


def assert_stats_equal(got: LayerStats, want: LayerStats) -> None:
    for name in FIELDS:
        a, b = getattr(got, name), getattr(want, name)
        if isinstance(b, float):
            assert a == pytest.approx(b, rel=1e-12, abs=1e-18), name
        else:
            assert a == b, name


def plans_for(policy: str, cost: CostModel, batches: list[int]):
    placement = Placement.from_homes(np.zeros(128, dtype=np.int64), 1)
    take, counts = [], []
    for i, batch in enumerate(batches):
        ids = BimodalRouting(num_experts=128, top_k=8, hot_share=0.5, ratio=14.0, seed=i).decode(batch, 1, 1)[0, 0]
        c = np.bincount(ids.reshape(-1), minlength=128)
        counts.append(c)
        take.append(get_policy(policy).plan(c, placement, 1, cost).gpu_tokens)
    return np.stack(take), np.stack(counts)


@pytest.mark.parametrize("policy", ["sieve", "heteromoe"])
@pytest.mark.parametrize("system", ["h100-hbm3-pim", "b200-hbm3e-pim"])
def test_bulk_settle_equals_the_per_call_path(policy, system):
    cost = CostModel(heteromoe.systems.get(system), heteromoe.models.get("qwen3-30b-a3b"))
    batches = [1, 3, 16, 64, 256, 8, 2]
    take, counts = plans_for(policy, cost, batches)
    take[1] = 0  # a call with everything on PIM, and one with everything on the GPU
    take[2] = counts[2]
    bulk = LayerStats("layer")
    with_pim, pim_pairs = settle_rows(cost, get_policy(policy), take, counts, np.array(batches), bulk)
    one_by_one = LayerStats("layer")
    for t, c, n in zip(take, counts, batches):
        one_by_one.add(exact_plan(cost, get_policy(policy), t, c), n)
    assert_stats_equal(bulk, one_by_one)
    assert bulk.calls == len(batches) and bulk.pairs == 8 * sum(batches)
    assert with_pim == int(((counts - take).sum(axis=1) > 0).sum()) and pim_pairs == int((counts - take).sum())
    assert with_pim == len(batches) - 1  # only the all-GPU call has no PIM work


def test_bulk_settle_names_an_impossible_plan():
    cost = CostModel(heteromoe.systems.get("h100-hbm3-pim"), heteromoe.models.get("qwen3-30b-a3b"))
    take, counts = plans_for("heteromoe", cost, [16, 16])
    e = int(np.flatnonzero(counts[1])[0])
    take[1, e] = counts[1, e] + 1
    with pytest.raises(PlanError, match=rf"call 1 of the batch: expert {e} has {counts[1, e]} routed tokens and "
                                        rf"{counts[1, e] + 1} on the GPU"):
        settle_rows(cost, get_policy("heteromoe"), take, counts, np.array([16, 16]), LayerStats("layer"))


@pytest.mark.gpu
@pytest.mark.skipif(not (torch.cuda.is_available() and kernels.HAS_CUDA_KERNELS),
                    reason="needs a CUDA GPU and heteromoe._cuda")
@pytest.mark.parametrize("policy", ["sieve", "heteromoe"])
def test_device_plans_settle_across_rings(policy, monkeypatch):
    """More calls than two rings hold (rings of 3 here): every call counted once, the statistics those of the
    host planner's plans, last_plans the last call's plan, the calls with PIM work and the PIM pairs counted;
    the PIM backend's own counters untouched (its code did not run: the fused kernels did)."""
    from heteromoe.device import registry
    from heteromoe.runtime.fused import FusedLayerPath
    from tests.helpers import device_plan_setup

    monkeypatch.setattr(plan_stats, "RING_CALLS", 3)
    pim = registry.get("pim-emulator")  # the registry's instance: the executor's PIM backend
    backend_counters = (pim.calls, pim.pairs)
    layer, cost, executor, placement, k = device_plan_setup(policy, FusedLayerPath(mma_min_warps_per_sm=0))
    gen = torch.Generator("cuda").manual_seed(3)
    want, pim_calls, pim_pairs = LayerStats("layer0"), 0, 0
    with torch.no_grad():
        for call, batch in enumerate([24, 5, 40, 24, 1, 17, 24, 9]):
            hidden = torch.randn(batch, layer.hidden_size, device="cuda", dtype=torch.bfloat16, generator=gen)
            ids = torch.stack([torch.randperm(layer.num_experts, device="cuda", generator=gen)[:k] for _ in range(batch)])
            weights = torch.rand(batch, k, device="cuda", generator=gen).to(torch.bfloat16)
            out = executor.run(layer, cost, placement, hidden, ids, weights)
            torch.testing.assert_close(out.float(), layer.module(hidden, ids, weights).float(), rtol=2e-2,
                                       atol=2e-2 * out.abs().max().item())
            counts = np.bincount(ids.cpu().numpy().reshape(-1), minlength=layer.num_experts)
            host = get_policy(policy).plan(counts, placement, 1, cost)
            want.add(exact_plan(cost, get_policy(policy), host.gpu_tokens, counts), batch)
            pim_calls += int(host.pim_tokens.any())
            pim_pairs += int(host.pim_tokens.sum())
        # rings of 3: the first is settled when the second fills (call 6), the second and the last two wait
        assert executor.stats["layer0"].calls == 3
        executor.flush()
    assert_stats_equal(executor.stats["layer0"], want)
    np.testing.assert_array_equal(executor.last_plans["layer0"].gpu_tokens, host.gpu_tokens)
    stats = executor.stats["layer0"]
    assert (stats.pim_calls, stats.pim_tokens) == (pim_calls, pim_pairs)
    assert (pim.calls, pim.pairs) == backend_counters
