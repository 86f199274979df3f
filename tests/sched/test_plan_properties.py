"""Property tests over random routing: every policy makes a valid plan, `exact` keeps to its time limit and its
model to a size set by the experts.

Count vectors: zero, one-hot, uniform, Zipf, bimodal (a hot set), and huge (up to 10^7 tokens per expert);
8-512 experts, 1-8 GPUs, placements with up to two replica slots per GPU.
"""
from __future__ import annotations

import dataclasses
import os
import tempfile
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import heteromoe
from heteromoe.cost import CostModel
from heteromoe.routing import loads_from_topk
from heteromoe.runtime.executor import split_work
from heteromoe.sched import POLICIES
from heteromoe.sched.exact import MODEL_ENTRIES, build_model
from heteromoe.sched.placement import Placement, contiguous_placement
from heteromoe.sched.policies.exact import STATUSES, ExactPolicy

KINDS = ["zero", "one-hot", "uniform", "zipf", "bimodal", "huge"]
SYSTEMS = ["h100-hbm3-pim", "b200-hbm3e-pim", "h100-logic-pim"]
FAST_POLICIES = sorted(p for p in POLICIES if p != "exact")
#: What `exact` may take beyond its time limit: Python around the solves, one model build, CP-SAT's stop.
EXACT_SLACK_S = 1.0
#: Bytes of a GPU model's CP-SAT proto per grid value, with room for the per-expert constraints.
PROTO_BYTES_PER_ENTRY = 64


def make_counts(kind: str, num_experts: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "zero":
        return np.zeros(num_experts, dtype=np.int64)
    if kind == "one-hot":
        counts = np.zeros(num_experts, dtype=np.int64)
        counts[rng.integers(num_experts)] = rng.integers(1, 5000)
        return counts
    if kind == "uniform":
        return rng.multinomial(int(rng.integers(1, 4000)), np.full(num_experts, 1 / num_experts)).astype(np.int64)
    if kind == "zipf":
        weights = 1.0 / np.arange(1, num_experts + 1) ** rng.uniform(0.8, 1.6)
        return rng.multinomial(int(rng.integers(1, 4000)), rng.permutation(weights / weights.sum())).astype(np.int64)
    if kind == "bimodal":
        hot = rng.random(num_experts) < 0.1
        return np.where(hot, rng.poisson(300, num_experts), rng.poisson(0.5, num_experts)).astype(np.int64)
    return rng.integers(0, 10_000_000, num_experts, dtype=np.int64) * (rng.random(num_experts) < 0.5)  # huge


def make_placement(num_experts: int, num_gpus: int, replicas: int, rng: np.random.Generator) -> Placement:
    """Contiguous homes plus `replicas` slots per GPU, each a random expert not already on that GPU."""
    homes = contiguous_placement(num_experts, num_gpus)
    if replicas == 0 or num_gpus == 1:
        return Placement.from_homes(homes, num_gpus)
    phys2log, slot_gpu = list(range(num_experts)), homes.tolist()
    for g in range(num_gpus):
        others = np.flatnonzero(homes != g)
        for e in rng.choice(others, size=min(replicas, others.size), replace=False):
            phys2log.append(int(e))
            slot_gpu.append(g)
    return Placement(np.array(phys2log), np.array(slot_gpu), num_gpus)


def model_spec(num_experts: int) -> heteromoe.MoEModelSpec:
    return dataclasses.replace(heteromoe.models.get("qwen3-30b-a3b"), num_experts=num_experts,
                               top_k=min(8, num_experts))


cases = st.fixed_dictionaries({
    "kind": st.sampled_from(KINDS),
    "num_experts": st.sampled_from([8, 16, 60, 128, 256, 512]),
    "num_gpus": st.integers(1, 8),
    "replicas": st.integers(0, 2),
    "system": st.sampled_from(SYSTEMS),
    "seed": st.integers(0, 2**31 - 1),
})


def check_plan(plan, counts: np.ndarray) -> None:
    """Every routed pair exactly once, nothing negative, every time finite and non-negative."""
    plan.validate(counts)
    assert (plan.gpu_tokens >= 0).all() and (plan.pim_tokens >= 0).all()
    for times in (plan.per_gpu_t_comm_s, plan.per_gpu_t_gpu_s, plan.per_gpu_t_pim_s):
        assert np.isfinite(times).all() and (times >= 0).all()
    assert np.isfinite(plan.predicted_time_s)
    if 0 < counts.sum() <= 50_000:  # cut real routed pairs by the plan: each runs exactly once
        ids = np.random.default_rng(0).permutation(np.repeat(np.arange(counts.size), counts))[:, None]
        gpu, pim = split_work(loads_from_topk(ids, counts.size), plan)
        assert np.array_equal(np.sort(np.concatenate([gpu.pair_index, pim.pair_index])), np.arange(ids.shape[0]))


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases)
def test_every_policy_makes_a_valid_plan(case):
    rng = np.random.default_rng(case["seed"])
    num_experts, num_gpus = case["num_experts"], min(case["num_gpus"], case["num_experts"])
    counts = make_counts(case["kind"], num_experts, rng)
    placement = make_placement(num_experts, num_gpus, case["replicas"], rng)
    for policy in FAST_POLICIES:
        plan = heteromoe.schedule(counts, model=model_spec(num_experts), system=case["system"], gpus=num_gpus,
                                  policy=policy, placement=placement, attn_kv_bytes=float(rng.uniform(0, 1e8)))
        check_plan(plan, counts)


@settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=cases, limit=st.sampled_from([0.05, 0.2]))
def test_exact_keeps_to_its_time_limit_and_reports_honestly(case, limit):
    rng = np.random.default_rng(case["seed"])
    num_experts, num_gpus = case["num_experts"], min(case["num_gpus"], case["num_experts"])
    counts = make_counts(case["kind"], num_experts, rng)
    placement = make_placement(num_experts, num_gpus, case["replicas"], rng)
    start = time.perf_counter()
    plan = heteromoe.schedule(counts, model=model_spec(num_experts), system=case["system"], gpus=num_gpus,
                              policy=ExactPolicy(time_limit_s=limit), placement=placement)
    elapsed = time.perf_counter() - start
    assert elapsed <= limit + EXACT_SLACK_S
    check_plan(plan, counts)
    per_gpu = plan.info["exact"]
    assert len(per_gpu) == num_gpus and sum(plan.info["statuses"].values()) == num_gpus
    for info in per_gpu:
        assert info["status"] in STATUSES
        if info["status"] in ("timed-out", "failed", "coarse"):
            assert info["gap"] != 0.0 or info["status"] == "timed-out"  # no gap of 0 without a proof
        if info["status"] in ("failed", "coarse"):
            assert info["gap"] is None
        if info["status"] == "optimal":
            assert info["gap"] == 0.0 and info["solver"] == "OPTIMAL" and info["granularity"] == 1
    if any(info["gap"] is None for info in per_gpu):
        assert plan.info["max_gap"] is None
    if not placement.has_replicas:  # exact plans the home slots; `heteromoe` may also route to replicas
        fast = heteromoe.schedule(counts, model=model_spec(num_experts), system=case["system"], gpus=num_gpus,
                                  policy="heteromoe", placement=placement)
        # exact keeps the fast path's plan where its own is not better (model time in 0.1 ns units)
        assert plan.predicted_time_s <= fast.predicted_time_s * (1 + 1e-9) + 1e-9


@settings(max_examples=40, deadline=None)
@given(kind=st.sampled_from(KINDS), num_experts=st.sampled_from([8, 64, 512]), seed=st.integers(0, 2**31 - 1))
def test_exact_model_size_is_set_by_the_experts(kind, num_experts, seed):
    """A GPU model holds at most max(MODEL_ENTRIES, 4 A) grid values, whatever the counts, and its proto (what
    CP-SAT copies and presolves) at most PROTO_BYTES_PER_ENTRY bytes per grid value."""
    rng = np.random.default_rng(seed)
    counts = make_counts(kind, num_experts, rng)
    experts = np.flatnonzero(counts > 0)
    if experts.size == 0:
        return
    cost = CostModel(heteromoe.systems.get("h100-hbm3-pim"), model_spec(num_experts))
    built = build_model(counts, experts, cost.gpu.read_s_per_expert, cost.gpu_flop_s, cost.pim_time_s, 1e-5, 0.0,
                        cost.gpu.launch_s, 1e-5, hint=counts[experts] // 2)
    budget = max(MODEL_ENTRIES, 4 * experts.size)
    assert built.entries <= budget
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.pb")
        assert built.model.export_to_file(path)
        assert os.path.getsize(path) <= PROTO_BYTES_PER_ENTRY * budget
    if counts[experts].sum() + experts.size <= MODEL_ENTRIES:
        assert built.granularity == 1  # the exact model wherever the counts fit


@pytest.mark.parametrize("policy", FAST_POLICIES)
def test_policy_on_one_expert_with_ten_million_tokens(policy):
    counts = np.zeros(128, dtype=np.int64)
    counts[3] = 10_000_000
    check_plan(heteromoe.schedule(counts, model="qwen3-30b-a3b", system="h100-hbm3-pim", policy=policy), counts)
