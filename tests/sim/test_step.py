"""The step simulator: phase order and overlap, collectives, attention placement, policies unchanged.

The first two tests pin the serialized layer model (`StepOptions.legacy()`), whose expert window is the
planner's objective exactly; the physical model's graph is tested in test_graph.py."""
from __future__ import annotations

import numpy as np
import pytest

import heteromoe
from heteromoe.sim import StepSimulator, pareto_frontier, sweep
from heteromoe.sim.dense import local_requests
from heteromoe.sim.options import StepOptions
from heteromoe.sim.workload import SyntheticWorkload

SMALL = heteromoe.MoEModelSpec(name="small", hidden_size=2048, moe_intermediate_size=768, num_experts=32, top_k=4,
                               num_layers=3, num_moe_layers=2, num_attention_heads=32, num_kv_heads=4, head_dim=128)


def routing(batch, spec=SMALL, seed=0):
    return SyntheticWorkload(spec, seed).steps(batch, 1)[0]


def test_timeline_follows_the_dependencies():
    sim = StepSimulator(SMALL, "b200-hbm3e-pim", gpus=2, policy="sieve", context=1024, options=StepOptions.legacy())
    result = sim.run(routing(16))
    for layer in (1, 2):  # the MoE layers (layer 0 is dense: attention only)
        spans = {(s.gpu, s.name): s for s in result.timeline.layer(layer)}
        window = max(spans[h, "allgather_counts"].end_s for h in range(2))
        for g in range(2):
            assert spans[g, "qkv"].end_s <= spans[g, "attention"].start_s
            assert spans[g, "attention"].end_s <= spans[g, "o_proj+router"].start_s
            assert spans[g, "attention"].lane == "pim"
            assert spans[g, "allgather_counts"].start_s >= max(spans[h, "o_proj+router"].end_s for h in range(2))
            # the all-to-all is overlapped with the experts: both start when the window opens
            assert spans[g, "dispatch+combine"].start_s == pytest.approx(window)
            if (g, "experts_pim") in spans:
                assert spans[g, "experts_pim"].start_s == pytest.approx(window)
            if (g, "experts_gpu") in spans:
                assert spans[g, "experts_gpu"].start_s >= spans[g, "shared_experts"].end_s - 1e-15 \
                    if (g, "shared_experts") in spans else True
        # the window ends with its slowest lane on the slowest GPU, then the next layer starts
        window_end = max(s.end_s for s in result.timeline.layer(layer) if s.start_s >= window - 1e-15)
        nxt = [s.start_s for s in result.timeline.spans if s.layer == layer + 1]
        if nxt:
            assert min(nxt) == pytest.approx(window_end)
        # GPU and PIM experts overlap in time on some GPU
        assert any(spans[g, "experts_gpu"].start_s < spans[g, "experts_pim"].end_s
                   and spans[g, "experts_pim"].start_s < spans[g, "experts_gpu"].end_s
                   for g in range(2) if (g, "experts_gpu") in spans and (g, "experts_pim") in spans)
    assert result.step_time_s == pytest.approx(max(s.end_s for s in result.timeline.spans))
    for g in range(2):
        assert [s.name for s in result.timeline.layer(0) if s.gpu == g] == ["qkv", "attention", "o_proj+router"]


def test_expert_window_is_the_policy_objective():
    """The simulated expert window equals the plan's max(T_comm, T_GPU, T_PIM) on its own cost model."""
    spec = heteromoe.models.get("qwen3-30b-a3b")
    sim = StepSimulator(spec, "b200-hbm3e-pim", 4, "sieve", context=1024, options=StepOptions.legacy())
    result = sim.run(SyntheticWorkload(spec).steps(64, 1)[0])
    for layer, plan in enumerate(result.plans):
        spans = result.timeline.layer(layer)
        start = max(s.end_s for s in spans if s.name == "allgather_counts")
        end = max(s.end_s for s in spans if s.start_s >= start - 1e-15)
        assert end - start == pytest.approx(plan.predicted_time_s, rel=1e-9)


def test_gpu_only_runs_attention_on_the_gpu_and_nothing_on_pim():
    result = StepSimulator(SMALL, "b200-hbm3e-pim", 1, "gpu-only", context=1024).run(routing(8))
    assert {s.lane for s in result.timeline.spans} <= {"gpu", "link", "coll"}
    assert all(s.lane == "gpu" for s in result.timeline.spans if s.name == "attention")


def test_plans_come_from_the_policy_and_validate():
    steps = routing(32)
    result = StepSimulator(SMALL, "h100-hbm3-pim", 1, "heteromoe").run(steps)
    for plan, layer_ids in zip(result.plans, steps):
        counts = np.bincount(layer_ids.reshape(-1), minlength=SMALL.num_experts)
        plan.validate(counts)
        assert plan.policy == "heteromoe"


def test_longer_context_and_bigger_batch_take_longer():
    base = StepSimulator(SMALL, "b200-hbm3e-pim", 1, "sieve", context=512, record=False)
    longer = StepSimulator(SMALL, "b200-hbm3e-pim", 1, "sieve", context=8192, record=False)
    r = routing(16)
    assert longer.run(r).step_time_s > base.run(r).step_time_s
    assert base.run(routing(128)).step_time_s > base.run(routing(4)).step_time_s


def test_dense_work_splits_requests_over_gpus():
    from heteromoe.sim.layer_work import split_requests, sub_batch_work

    assert local_requests(10, 4).tolist() == [3, 3, 2, 2]
    b200 = heteromoe.systems.get("b200-hbm3e-pim")
    sub = split_requests(10, 4, 1, 2048)
    assert sub.context[0].tolist() == [3 * 2048, 3 * 2048, 2 * 2048, 2 * 2048]
    kw = dict(linear_attention=True, dense_launch=False, pim_attention="bytes")
    on_gpu = sub_batch_work(SMALL, b200, None, sub, 0, True, False, **kw)
    on_pim = sub_batch_work(SMALL, b200, None, sub, 0, True, True, **kw)
    kv_per_request = 2048 * 2 * 4 * 128 * 2
    gpu = b200.require_gpu()
    assert on_gpu.core_gpu_s.tolist() == pytest.approx(
        [n * kv_per_request / (gpu.eta_bw * gpu.ext_bw_bytes_per_s) for n in (3, 3, 2, 2)])
    assert (on_gpu.core_gpu_s > on_pim.attn_pim_busy_s).all() and not on_pim.core_gpu_s.any()
    assert not sub_batch_work(SMALL, b200, None, sub, 0, False, True, **kw).attn_pim_busy_s.any()


def test_bad_simulation_inputs():
    sim = StepSimulator(SMALL, "b200-hbm3e-pim", 1, "sieve")
    with pytest.raises(ValueError, match=r"routing must be \[moe_layers=2, batch, k=4\]"):
        sim.run(np.zeros((3, 4, 4), dtype=np.int64))
    with pytest.raises(ValueError, match="context must be >= 0"):
        StepSimulator(SMALL, "b200-hbm3e-pim", 1, "sieve", context=-1)
    with pytest.raises(ValueError, match="max_gpus"):
        StepSimulator(SMALL, "b200-hbm3e-pim", 9, "sieve")


def test_sweep_records_and_pareto():
    records = sweep(SMALL, "b200-hbm3e-pim", 2, ["all-exp", "sieve"], [1, 8, 64], steps=2)
    assert len(records) == 6
    for r in records:
        assert {"policy", "batch", "step_time_s", "throughput_per_gpu", "interactivity"} <= set(r)
        assert r["throughput_per_gpu"] == pytest.approx(r["batch"] / r["step_time_s"] / 2)
        assert r["interactivity"] == pytest.approx(1 / r["step_time_s"])
    frontier = pareto_frontier(records)
    for points in frontier.values():
        thr = [p["throughput_per_gpu"] for p in points]
        inter = [p["interactivity"] for p in points]
        assert thr == sorted(thr) and inter == sorted(inter, reverse=True)  # non-dominated
    by = {(r["policy"], r["batch"]): r["step_time_s"] for r in records}
    assert by["sieve", 64] < by["all-exp", 64]


def test_qwen35_on_eight_gpus_simulates():
    spec = heteromoe.models.get("qwen3.5-397b-a17b")
    steps = SyntheticWorkload(spec).steps(256, 1)[0]
    result = StepSimulator(spec, "b200-hbm3e-pim", 8, "sieve").run(steps)
    assert result.sub_batches == 2 and len(result.plans) == 60 * 2 and result.step_time_s > 0
    assert {s.gpu for s in result.timeline.spans} == set(range(8))


def test_per_request_context_lengths():
    from heteromoe.sim.dense import context_per_gpu

    assert context_per_gpu(100, 5, 2).tolist() == [300, 200]
    assert context_per_gpu([10, 20, 30, 40, 50], 5, 2).tolist() == [60, 90]
    with pytest.raises(ValueError, match="5 non-negative lengths"):
        context_per_gpu([1, 2], 5, 2)
    r = routing(4)
    same = StepSimulator(SMALL, "b200-hbm3e-pim", 2, "sieve", context=1000, record=False).run(r).step_time_s
    mixed = StepSimulator(SMALL, "b200-hbm3e-pim", 2, "sieve", context=np.array([1000, 1000, 1000, 1000]),
                          record=False).run(r).step_time_s
    longer = StepSimulator(SMALL, "b200-hbm3e-pim", 2, "sieve", context=np.array([1000, 1000, 1000, 400000]),
                           record=False).run(r).step_time_s
    assert mixed == pytest.approx(same) and longer > same
