"""Replicas of hot experts: placement checks, per-call routing, the CP-SAT slow loop, and the runtime."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import heteromoe
from heteromoe.routing import loads_from_topk
from heteromoe.runtime.executor import split_work
from heteromoe.sched import Placement, Plan, PlanError
from heteromoe.sched.replicas import ReplicaPlanner, place_replicas, route_to_replicas


def test_placement_checks():
    with pytest.raises(ValueError, match="home slots of experts 0..E-1"):
        Placement(np.array([1, 0]), np.array([0, 1]), 2)
    with pytest.raises(ValueError, match="two slots on one GPU"):
        Placement(np.array([0, 1, 0]), np.array([0, 1, 0]), 2)
    with pytest.raises(ValueError, match=r"slot GPUs must be in \[0, 2\)"):
        Placement(np.array([0, 1, 0]), np.array([0, 1, 2]), 2)
    p = Placement(np.array([0, 1, 2, 3, 0]), np.array([0, 0, 1, 1, 1]), 2)
    assert p.has_replicas and p.num_experts == 4 and p.num_slots == 5 and p.home_gpu.tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="placement is for 4 experts on 2 GPUs"):
        heteromoe.schedule([1] * 4, model="qwen3-30b-a3b", system="h100-hbm3-pim", placement=p)


def test_route_to_replicas_by_hand():
    # GPU 0 homes experts 0, 1 (loads 9, 5); GPU 1 homes 2, 3 (1, 1); expert 0 has a replica on GPU 1.
    p = Placement(np.array([0, 1, 2, 3, 0]), np.array([0, 0, 1, 1, 1]), 2)
    # fixed loads: GPU 0 = 5, GPU 1 = 2 -> expert 0 (9 tokens) goes to the replica on GPU 1
    assert route_to_replicas(np.array([9, 5, 1, 1]), p).tolist() == [0, 5, 1, 1, 9]
    # now GPU 1 is busier without it: fixed loads GPU 0 = 0, GPU 1 = 12 -> expert 0 stays home
    assert route_to_replicas(np.array([9, 0, 6, 6]), p).tolist() == [9, 0, 6, 6, 0]


def test_place_replicas_balances_expected_load():
    # GPU 0 homes the two hot experts; with one slot per GPU, one hot expert should get a copy on GPU 1.
    load = np.array([10.0, 10.0, 1.0, 1.0])
    p = place_replicas(load, np.array([0, 0, 1, 1]), num_gpus=2, slots_per_gpu=1)
    assert p.num_slots == 5 and p.phys2log[4] in (0, 1) and p.slot_gpu[4] == 1
    assert place_replicas(load, np.array([0, 0, 1, 1]), num_gpus=2, slots_per_gpu=0).num_slots == 4


def test_replica_planner_replans_every_n_calls():
    planner = ReplicaPlanner(np.array([0, 0, 1, 1]), 2, slots_per_gpu=1, replan_every=3, ema_alpha=0.5)
    for _ in range(2):
        assert not planner.observe(np.array([8, 8, 0, 1])).has_replicas
    placement = planner.observe(np.array([8, 8, 0, 1]))
    assert planner.replans == 1 and placement.has_replicas
    with pytest.raises(ValueError, match="replan_every >= 1"):
        ReplicaPlanner(np.array([0]), 1, 1, replan_every=0)


def test_heteromoe_uses_replicas_to_beat_sieve():
    rng = np.random.default_rng(0)
    spec = heteromoe.models.get("qwen3-30b-a3b")
    homes = np.repeat(np.arange(4), 32)
    counts = rng.poisson(0.5, size=128)
    counts[:6] += 60  # GPU 0 homes six very hot experts
    placement = place_replicas(counts.astype(float), homes, 4, slots_per_gpu=2)
    kw = dict(model=spec, system="b200-hbm3e-pim", gpus=4)
    sieve = heteromoe.schedule(counts, policy="sieve", placement=homes, **kw)
    ours = heteromoe.schedule(counts, policy="heteromoe", placement=placement, **kw)
    assert ours.has_replicas and ours.predicted_time_s < 0.95 * sieve.predicted_time_s
    ours.validate(counts)
    # replicas only help: on the same placement, never worse than without them
    no_rep = heteromoe.schedule(counts, policy="heteromoe", placement=homes, **kw)
    assert ours.predicted_time_s <= no_rep.predicted_time_s


def test_plan_with_replicas_validates_per_expert_and_splits_pairs():
    z = np.zeros(2)
    # expert 0 has two slots (0 on GPU 0, 2 on GPU 1); 3 tokens: 1 on slot 0's GPU, 2 on slot 2's PIM
    plan = Plan("t", np.array([0, 1, 1]), np.array([1, 0, 0]), np.array([0, 1, 2]), z, z, z,
                phys2log=np.array([0, 1, 0]))
    counts = np.array([3, 1])
    plan.validate(counts)
    loads = loads_from_topk(np.array([[0], [1], [0], [0]]), 2)
    gpu, pim = split_work(loads, plan)
    assert gpu.pair_index.tolist() == [0] and gpu.experts.tolist() == [0]
    assert sorted(pim.pair_index.tolist()) == [1, 2, 3] and pim.experts.tolist() == [1, 0]
    bad = Plan("t", np.array([0, 1, 1]), np.array([1, 0, 0]), np.array([0, 1, 1]), z, z, z,
               phys2log=np.array([0, 1, 0]))
    with pytest.raises(PlanError, match="expert 0 has 3 routed tokens but the plan runs 2"):
        bad.validate(counts)


def test_wrapped_model_with_replicas_is_exact():
    from tests.helpers import tiny_model

    model = tiny_model("qwen3_moe")
    ids = torch.randint(1, 128, (4, 6), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref = [model(ids[:, : i + 1]).logits for i in range(6)]
        runtime = heteromoe.wrap(model, policy="heteromoe", gpus=2, replicas_per_gpu=1, replan_every=2)
        out = [model(ids[:, : i + 1]).logits for i in range(6)]
    for a, b in zip(out, ref):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
    planners = [b.placement for b in runtime._bindings.values()]
    assert all(p.replans == 3 for p in planners) and any(p.placement.has_replicas for p in planners)
    runtime.unwrap()
