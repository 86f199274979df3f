"""Policies on hand-made cases, plan validation, bad input, and property tests."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import heteromoe
from heteromoe.cost import CostModel
from heteromoe.sched import Plan, PlanError
from heteromoe.sched.placement import contiguous_placement
from heteromoe.spec import GpuSpec, LinkSpec, MoEModelSpec, PimSpec, SystemSpec

# A toy system with round numbers: one expert's weights take 1 s to read on the GPU (W = 1 byte at
# 1 B/s, eta 1), GPU compute is free, PIM reads at 2 B/s (X = 2): 0.5 s per token.
TOY_MODEL = MoEModelSpec(name="toy", hidden_size=1, moe_intermediate_size=1, num_experts=4, top_k=1, num_layers=1,
                         bytes_per_weight=1 / 3, bytes_per_activation=1.0)
TOY_SYSTEM = SystemSpec(
    name="toy",
    gpu=GpuSpec(name="toy", peak_flops_per_s=1e30, ext_bw_bytes_per_s=1.0, eta_bw=1.0, eta_fl=1.0, launch_overhead_s=0.0),
    pim=PimSpec(kind="bank", stacks_per_gpu=1, ext_bw_per_stack_bytes_per_s=1.0, internal_bw_multiplier=2.0,
                flops_per_byte=1e30, command_overhead_s=0.0),
    link=LinkSpec(bw_bytes_per_s_per_dir=1.0, latency_s=0.0),
    max_gpus=4,
)


def plan(counts, policy, gpus=1, **kw):
    return heteromoe.schedule(np.array(counts), model=TOY_MODEL, system=TOY_SYSTEM, policy=policy, gpus=gpus, **kw)


def test_gpu_only_and_all_exp():
    p = plan([6, 2, 1, 0], "gpu-only")
    assert p.gpu_tokens.tolist() == [6, 2, 1, 0] and p.pim_tokens.tolist() == [0, 0, 0, 0]
    assert p.t_gpu_s == pytest.approx(3.0) and p.t_pim_s == 0.0  # three experts read once each
    p = plan([6, 2, 1, 0], "all-exp")
    assert p.gpu_tokens.tolist() == [0, 0, 0, 0]
    assert p.t_pim_s == pytest.approx(4.5)  # 9 serialized tokens x 0.5 s
    assert p.predicted_time_s == pytest.approx(4.5)


def test_sieve_by_hand():
    # all on PIM: 4.5. Move e0 (6 tokens): GPU 1, PIM 1.5 -> 1.5. Move e1 (2): GPU 2, PIM 0.5 -> 2: stop.
    p = plan([6, 2, 1, 0], "sieve")
    assert p.gpu_tokens.tolist() == [6, 0, 0, 0]
    assert p.pim_tokens.tolist() == [0, 2, 1, 0]
    assert p.predicted_time_s == pytest.approx(1.5)
    assert p.gpu_experts.tolist() == [0] and p.pim_experts.tolist() == [1, 2]


def test_sieve_ties_take_lower_expert_first():
    p = plan([0, 4, 4, 0], "sieve")  # all PIM 4.0; move e1: GPU 1, PIM 2 -> 2; move e2: GPU 2, PIM 0 -> 2: stop
    assert p.gpu_tokens.tolist() == [0, 4, 0, 0]


def test_sieve_on_two_gpus_plans_each_gpu():
    # GPU 0 homes experts 0,1 (7 pairs), GPU 1 homes 2,3 (2 pairs); token origins uniform over 2 GPUs.
    # GPU 0 receives 7/2 = 3.5 remote pairs and sends 2/2 = 1; GPU 1 receives 1 and sends 3.5. Links are
    # full duplex: 3.5 pairs each, x2 (dispatch + combine) at 1 s per pair -> 7 s on both.
    p = plan([6, 1, 1, 1], "sieve", gpus=2)
    assert p.num_gpus == 2
    assert p.expert_gpu.tolist() == [0, 0, 1, 1]
    assert p.per_gpu_t_comm_s.tolist() == pytest.approx([7.0, 7.0])
    # comm 7 dominates everything, so no move lowers the max: all stay on PIM
    assert p.gpu_tokens.tolist() == [0, 0, 0, 0]
    assert p.predicted_time_s == pytest.approx(7.0)


def test_comm_follows_token_origins():
    # All tokens of experts 0,1 live on GPU 0 and those of 2,3 on GPU 1: nothing crosses the link.
    local = np.array([[6, 1, 0, 0], [0, 0, 1, 1]])
    p = plan([6, 1, 1, 1], "sieve", gpus=2, token_origin=local)
    assert p.per_gpu_t_comm_s.tolist() == [0.0, 0.0]
    # every token on the other GPU: GPU 0 receives 7 and sends 2 -> 14 s; GPU 1 receives 2, sends 7 -> 14 s
    swapped = local[::-1]
    p = plan([6, 1, 1, 1], "sieve", gpus=2, token_origin=swapped)
    assert p.per_gpu_t_comm_s.tolist() == pytest.approx([14.0, 14.0])
    with pytest.raises(ValueError, match="token origins of expert 0 add up to 5, not its 6 tokens"):
        plan([6, 1, 1, 1], "sieve", gpus=2, token_origin=np.array([[5, 1, 0, 0], [0, 0, 1, 1]]))
    with pytest.raises(ValueError, match=r"token origins must be \[gpus=2, experts=4\]"):
        plan([6, 1, 1, 1], "sieve", gpus=2, token_origin=np.zeros((3, 4)))


def test_runtime_token_origins_are_contiguous_blocks():
    from heteromoe.routing import loads_from_topk
    from heteromoe.runtime.executor import token_origins

    loads = loads_from_topk(np.array([[0, 1], [0, 2], [1, 2], [3, 0]]), 4)  # 4 tokens, k = 2
    origin = token_origins(loads, 2)  # tokens 0,1 on GPU 0; tokens 2,3 on GPU 1
    assert origin.tolist() == [[2, 1, 1, 0], [1, 1, 1, 1]]
    assert token_origins(loads, 1) is None


def test_sieve_never_worse_than_all_pim_on_real_presets():
    rng = np.random.default_rng(0)
    for _ in range(20):
        counts = rng.poisson(rng.choice([0.2, 3.0], size=128, p=[0.7, 0.3]))
        s = heteromoe.schedule(counts, model="qwen3-30b-a3b", system="b200-hbm3e-pim", policy="sieve")
        a = heteromoe.schedule(counts, model="qwen3-30b-a3b", system="b200-hbm3e-pim", policy="all-exp")
        assert s.predicted_time_s <= a.predicted_time_s


@pytest.mark.parametrize("counts,match", [
    ([1, 2, 3], "3 entries but the model has 4 experts"),
    ([1, -2, 3, 0], r"counts\[1\] = -2"),
    ([1.5, 2, 3, 0], r"counts\[0\] = 1.5"),
    ([[1, 2], [3, 4]], "1-D"),
    (["a", "b", "c", "d"], "integers"),
])
def test_schedule_rejects_bad_counts(counts, match):
    with pytest.raises(ValueError, match=match):
        plan(counts, "sieve")


def test_schedule_rejects_bad_gpus_placement_and_policy():
    with pytest.raises(ValueError, match="positive integer"):
        plan([1, 1, 1, 1], "sieve", gpus=0)
    with pytest.raises(ValueError, match="homeless"):
        heteromoe.schedule([1, 1, 1, 1], model=TOY_MODEL, system=TOY_SYSTEM, gpus=2, placement=[0, 1, 2, 0])
    with pytest.raises(ValueError, match="unknown policy 'nope'; known policies: all-exp, duplex, exact, gpu-only, heteromoe, no-exp, pimoe, sieve"):
        plan([1, 1, 1, 1], "nope")


def test_float_integral_counts_are_accepted():
    assert plan(np.array([2.0, 0.0, 1.0, 0.0]), "sieve").pim_tokens.sum() + \
        plan(np.array([2.0, 0.0, 1.0, 0.0]), "sieve").gpu_tokens.sum() == 3


def test_validator_catches_lost_and_doubled_pairs():
    z = np.zeros(1)
    lost = Plan("x", np.zeros(2, np.int64), np.array([1, 0]), np.array([0, 1]), z, z, z)
    lost.validate(np.array([1, 1]))
    with pytest.raises(PlanError, match="expert 1 has 2 routed tokens but the plan runs 1 of them"):
        lost.validate(np.array([1, 2]))
    doubled = Plan("x", np.zeros(2, np.int64), np.array([1, 1]), np.array([0, 1]), z, z, z)
    with pytest.raises(PlanError, match="expert 1"):
        doubled.validate(np.array([1, 1]))
    negative = Plan("x", np.zeros(2, np.int64), np.array([2, -1]), np.array([-1, 2]), z, z, z)
    with pytest.raises(PlanError, match="negative"):
        negative.validate(np.array([1, 1]))


@st.composite
def scheduling_cases(draw):
    system = draw(st.sampled_from(["b200-hbm3e-pim", "h100-hbm3-pim", "h200-hbm3e-pim", "h100-logic-pim"]))
    model = draw(st.sampled_from(["qwen3-30b-a3b", "gpt-oss-120b", "mixtral-8x7b", "qwen3-next-80b-a3b"]))
    num_experts = heteromoe.models.get(model).num_experts
    gpus = draw(st.integers(1, min(8, num_experts)))
    counts = draw(st.lists(st.integers(0, 300), min_size=num_experts, max_size=num_experts))
    shuffled = draw(st.booleans())
    placement = None
    if shuffled:
        placement = draw(st.permutations(contiguous_placement(num_experts, gpus).tolist()))
    attn = draw(st.sampled_from([0.0, 1e6, 1e8]))
    return system, model, gpus, np.array(counts), placement, attn


@settings(max_examples=80, deadline=None)
@given(case=scheduling_cases(),
       policy=st.sampled_from(["gpu-only", "no-exp", "all-exp", "duplex", "pimoe", "sieve", "heteromoe"]))
def test_every_plan_validates_and_respects_lower_bound(case, policy):
    system, model, gpus, counts, placement, attn = case
    p = heteromoe.schedule(counts, model=model, system=system, gpus=gpus, policy=policy, placement=placement,
                           attn_kv_bytes=attn)
    p.validate(counts)
    # Trivial lower bound: each GPU must at least do its comm, and its experts' work can at best be
    # shared perfectly between SMs and PIM at the faster side's per-expert rate.
    cost = CostModel(heteromoe.systems.get(system), heteromoe.models.get(model))
    comm = cost.comm_s(counts, p.expert_gpu, gpus)
    best_side = np.minimum(cost.gpu.flop_s(counts), cost.pim.times_s(counts))
    lower = np.maximum(comm, np.bincount(p.expert_gpu, weights=best_side, minlength=gpus) / 2)
    assert p.predicted_time_s >= lower.max() - 1e-15
    assert p.predicted_time_s >= 0.0


@settings(max_examples=40, deadline=None)
@given(case=scheduling_cases())
def test_heteromoe_never_worse_than_sieve(case):
    system, model, gpus, counts, placement, attn = case
    kw = dict(model=model, system=system, gpus=gpus, placement=placement, attn_kv_bytes=attn)
    ours = heteromoe.schedule(counts, policy="heteromoe", **kw)
    sieve = heteromoe.schedule(counts, policy="sieve", **kw)
    assert ours.predicted_time_s <= sieve.predicted_time_s * (1 + 1e-12)


@settings(max_examples=8, deadline=None)
@given(counts=st.lists(st.integers(0, 40), min_size=8, max_size=8), gpus=st.sampled_from([1, 2]))
def test_exact_is_a_lower_bound_for_every_policy(counts, gpus):
    from heteromoe.sched.policies.exact import ExactPolicy

    model = MoEModelSpec(name="m8", hidden_size=2048, moe_intermediate_size=768, num_experts=8, top_k=2, num_layers=1)
    counts = np.array(counts)
    kw = dict(model=model, system="h100-hbm3-pim", gpus=gpus, attn_kv_bytes=5e6)
    exact = heteromoe.schedule(counts, policy=ExactPolicy(time_limit_s=5.0), **kw)
    assert all(info["status"] in ("optimal", "empty") for info in exact.info["exact"])
    for policy in ("no-exp", "all-exp", "duplex", "sieve", "heteromoe"):
        other = heteromoe.schedule(counts, policy=policy, **kw)
        # CP-SAT works in 0.1 ns units: allow that rounding over a handful of terms
        assert exact.predicted_time_s <= other.predicted_time_s + 1e-9, policy


def _beyond_the_tables(seed: int, gpus: int):
    from heteromoe.cost.model import TABLE_MAX_COUNT

    rng = np.random.default_rng(seed)
    spec = heteromoe.models.get("qwen3-30b-a3b")
    counts = rng.poisson(rng.dirichlet(np.full(spec.num_experts, 0.3)) * 40 * TABLE_MAX_COUNT)
    counts[0] = 3 * TABLE_MAX_COUNT + 1
    return counts, dict(model=spec, system="h100-hbm3-pim", gpus=gpus, attn_kv_bytes=1e7)


@pytest.mark.parametrize("gpus", [1, 4])
def test_sieve_beyond_the_tables_is_the_dense_table_plan(gpus, monkeypatch):
    """Above TABLE_MAX_COUNT tokens per slot Sieve runs on the ranks of the distinct counts: the same plan and
    times the kernel makes on dense tables."""
    from heteromoe import _ext
    from heteromoe.sched.policy import PlacementContext

    counts, kw = _beyond_the_tables(gpus, gpus)
    ranked = heteromoe.schedule(counts, policy="sieve", **kw)
    monkeypatch.setattr(PlacementContext, "fast_path", lambda ctx, rule, *a: getattr(_ext, f"{rule}_plan")(
        *ctx.fast_path_args(*a)))
    dense = heteromoe.schedule(counts, policy="sieve", **kw)
    assert ranked.gpu_tokens.tolist() == dense.gpu_tokens.tolist()
    assert ranked.per_gpu_t_gpu_s.tolist() == dense.per_gpu_t_gpu_s.tolist()
    assert ranked.per_gpu_t_pim_s.tolist() == dense.per_gpu_t_pim_s.tolist()


@pytest.mark.parametrize("gpus", [1, 4])
def test_heteromoe_beyond_the_tables_is_valid_exactly_timed_and_no_worse_than_sieve(gpus):
    counts, kw = _beyond_the_tables(10 + gpus, gpus)
    ours = heteromoe.schedule(counts, policy="heteromoe", **kw)
    sieve = heteromoe.schedule(counts, policy="sieve", **kw)
    assert ours.predicted_time_s <= sieve.predicted_time_s
    cost = CostModel(heteromoe.systems.get("h100-hbm3-pim"), kw["model"], attn_kv_bytes=1e7)
    times = cost.times(counts, ours.gpu_tokens, ours.pim_tokens, ours.slot_gpu, gpus)
    np.testing.assert_allclose(ours.per_gpu_t_gpu_s, times.t_gpu_s, rtol=1e-12)
    np.testing.assert_allclose(ours.per_gpu_t_pim_s, times.t_pim_s, rtol=1e-12)
