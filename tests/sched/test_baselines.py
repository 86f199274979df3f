"""Each published baseline, `exact` and `heteromoe` on hand-made cases worked out here."""
from __future__ import annotations

import numpy as np
import pytest

import heteromoe
from heteromoe.sched.policies.exact import ExactPolicy
from heteromoe.spec import GpuSpec, LinkSpec, MoEModelSpec, PimSpec, SystemSpec
from tests.sched.test_policies import TOY_MODEL, TOY_SYSTEM

# TOY (see test_policies): an expert's GPU weight read costs 1 s, GPU compute is free, PIM 0.5 s per
# token with Sieve's layout. 32 PIM channels: with 4 experts, PIMoE's layout gives each a quarter of them,
# so an expert on PIM costs 4 x 0.5 = 2 s per token there.


def plan(counts, policy, **kw):
    return heteromoe.schedule(np.array(counts), model=TOY_MODEL, system=TOY_SYSTEM, policy=policy, **kw)


def test_attention_placement_gpu_only_vs_no_exp():
    # 2 bytes of KV: 2 s on the GPU (1 B/s), 1 s on PIM (X = 2)
    g = plan([6, 2, 1, 0], "gpu-only", attn_kv_bytes=2.0)
    assert g.t_gpu_s == pytest.approx(3.0 + 2.0) and g.t_pim_s == 0.0
    n = plan([6, 2, 1, 0], "no-exp", attn_kv_bytes=2.0)
    assert n.gpu_tokens.tolist() == [6, 2, 1, 0]
    assert n.t_gpu_s == pytest.approx(3.0) and n.t_pim_s == pytest.approx(1.0)
    s = plan([6, 2, 1, 0], "sieve", attn_kv_bytes=2.0)
    # PIM starts at 1 (attention) + 4.5; move e0: GPU 1, PIM 2.5; move e1: GPU 2, PIM 1.5 -> 2; move e2: 3: stop
    assert s.gpu_tokens.tolist() == [6, 2, 0, 0] and s.predicted_time_s == pytest.approx(2.0)


def test_duplex_by_hand():
    # all on GPU: 3 reads -> 3. Move coldest e2 (1 token): GPU 2, PIM 0.5 -> 2. Move e1 (2): GPU 1,
    # PIM 1.5 -> 1.5. Move e0 (6): GPU 0, PIM 4.5 -> 4.5, not lower: stop.
    p = plan([6, 2, 1, 0], "duplex")
    assert p.gpu_tokens.tolist() == [6, 0, 0, 0] and p.predicted_time_s == pytest.approx(1.5)


def test_duplex_stops_at_first_non_improving_move():
    # loads 1, 1, 1, 1: all GPU 4; move one: 3 / 0.5 -> 3; two: 2 / 1 -> 2; three: 1 / 1.5 -> 1.5;
    # four: 0 / 2 -> 2, not lower: stop with one expert on the GPU.
    p = plan([1, 1, 1, 1], "duplex")
    assert p.gpu_tokens.sum() == 1 and p.gpu_tokens.tolist() == [0, 0, 0, 1]  # the coldest (ties: lower id) left
    assert p.predicted_time_s == pytest.approx(1.5)


def test_pimoe_layout_and_rule_by_hand():
    # Expert-parallel: per-expert PIM times 12, 4, 2 (x4 for a quarter of the channels). Start: GPU 0 <= PIM 12
    # -> move e0 (GPU 1); busiest now e1's group (4): 1 <= 4 -> move e1 (GPU 2); e2's group: 2 <= 2 -> move e2
    # (GPU 3); PIM empty: stop. Everything lands on the GPU: 3 s, twice Sieve's 1.5 s.
    from heteromoe.sched.policies.pimoe import PimoePolicy

    p = plan([6, 2, 1, 0], PimoePolicy(group_by="channel", overshoot=True))
    assert p.gpu_tokens.tolist() == [6, 2, 1, 0]
    assert p.predicted_time_s == pytest.approx(3.0)
    assert plan([6, 2, 1, 0], "sieve").predicted_time_s == pytest.approx(1.5)


def test_pimoe_groups_by_stack_and_keeps_the_gpu_faster_by_default():
    # TOY has one stack: one group holding every expert at full width, PIM times 3, 1, 0.5 (sum 4.5).
    # Move e0 (GPU 1 <= PIM 1.5); moving e1 would give GPU 2 > PIM 0.5: not made.
    p = plan([6, 2, 1, 0], "pimoe")
    assert p.gpu_tokens.tolist() == [6, 0, 0, 0]
    assert p.t_gpu_s == pytest.approx(1.0) and p.t_pim_s == pytest.approx(1.5)
    # the overshooting reading keeps the move that makes the GPU slower: e1 too (GPU 2, PIM 0.5)
    from heteromoe.sched.policies.pimoe import PimoePolicy

    assert plan([6, 2, 1, 0], PimoePolicy(overshoot=True)).gpu_tokens.tolist() == [6, 2, 0, 0]
    # one 1-token expert whose GPU time (1) exceeds its PIM time (0.5) stays on PIM
    assert plan([1, 0, 0, 0], "pimoe").gpu_tokens.tolist() == [0, 0, 0, 0]


def test_pimoe_is_timed_with_its_own_layout():
    # One expert on PIM in PIMoE's layout runs on a quarter of the channels: 4x Sieve's layout.
    from heteromoe.cost import CostModel
    from heteromoe.sched.placement import contiguous_placement

    cost = CostModel(TOY_SYSTEM, TOY_MODEL)
    homes = contiguous_placement(4, 1)
    tp = cost.pim_s_per_gpu(np.array([2, 1, 0, 0]), homes, 1, "tp")
    ep = cost.pim_s_per_gpu(np.array([2, 1, 0, 0]), homes, 1, "ep")
    assert tp.tolist() == pytest.approx([1.5]) and ep.tolist() == pytest.approx([4.0])  # max(2*0.5*4, 1*0.5*4)
    with pytest.raises(ValueError, match="unknown PIM layout 'xx'"):
        cost.pim_s_per_gpu(np.array([1, 0, 0, 0]), homes, 1, "xx")


def test_exact_matches_hand_optimum_and_reports_gap():
    p = plan([6, 2, 1, 0], ExactPolicy(time_limit_s=5.0))
    assert p.predicted_time_s == pytest.approx(1.5)
    info = p.info["exact"][0]
    assert info["status"] == "optimal" and info["solver"] == "OPTIMAL" and info["used"] == "solver"
    assert info["gap"] == 0.0 and info["objective_s"] == pytest.approx(1.5) and info["granularity"] == 1
    assert p.info["statuses"] == {"optimal": 1} and p.info["max_gap"] == 0.0


# A compute-bound toy: GPU compute 1 s per token, weight reads free; PIM 1 s per token.
CB_MODEL = MoEModelSpec(name="cb", hidden_size=1, moe_intermediate_size=1, num_experts=2, top_k=1, num_layers=1,
                        bytes_per_weight=1 / 3, bytes_per_activation=1.0)
CB_SYSTEM = SystemSpec(
    name="cb",
    gpu=GpuSpec(name="cb", peak_flops_per_s=6.0, ext_bw_bytes_per_s=1e30, eta_bw=1.0, eta_fl=1.0, launch_overhead_s=0.0),
    pim=PimSpec(kind="bank", stacks_per_gpu=1, ext_bw_per_stack_bytes_per_s=1.0, internal_bw_multiplier=1.0,
                flops_per_byte=1e30, command_overhead_s=0.0),
    link=LinkSpec(bw_bytes_per_s_per_dir=1.0, latency_s=0.0),
)


def test_heteromoe_beats_sieve_by_splitting_when_the_gpu_is_compute_bound():
    counts = np.array([10, 0])
    kw = dict(model=CB_MODEL, system=CB_SYSTEM)
    sieve = heteromoe.schedule(counts, policy="sieve", **kw)
    ours = heteromoe.schedule(counts, policy="heteromoe", **kw)
    exact = heteromoe.schedule(counts, policy=ExactPolicy(time_limit_s=5.0), **kw)
    # all on PIM: 10; all on GPU: 10 -> Sieve does not move. Split 5 / 5: 5.
    assert sieve.predicted_time_s == pytest.approx(10.0)
    assert ours.gpu_tokens.tolist() == [5, 0] and ours.pim_tokens.tolist() == [5, 0]
    assert ours.predicted_time_s == pytest.approx(5.0) == exact.predicted_time_s
    no_split = heteromoe.schedule(counts, policy=ExactPolicy(time_limit_s=5.0, allow_split=False), **kw)
    assert no_split.predicted_time_s == pytest.approx(10.0)


@pytest.mark.parametrize("result,status,gap", [
    (("UNKNOWN", None, float("inf"), 0.0), "timed-out", None),  # nothing found, nothing proved
    (("UNKNOWN", None, float("inf"), 1.2), "timed-out", 0.2),  # nothing found; a bound of 1.2 s was proved
    (("MODEL_INVALID", None, float("inf"), 0.0), "failed", None),
    (("INFEASIBLE", None, float("inf"), 0.0), "failed", None),
])
def test_exact_without_a_solution_uses_the_fast_path_and_says_so(caplog, monkeypatch, result, status, gap):
    import heteromoe.sched.policies.exact as exact_mod
    from heteromoe.sched.exact import SolveResult

    monkeypatch.setattr(exact_mod, "solve", lambda *a, **k: SolveResult(*result))
    with caplog.at_level("WARNING"):
        p = plan([6, 2, 1, 0], ExactPolicy())
    info = p.info["exact"][0]
    assert info["status"] == status and info["used"] == "fast path" and info["solver"] == result[0]
    assert info["gap"] == (None if gap is None else pytest.approx(gap))
    assert p.info["statuses"] == {status: 1} and p.info["max_gap"] == info["gap"]
    assert f"GPU 0 {status} (CP-SAT {result[0]}" in caplog.text
    assert p.gpu_tokens.tolist() == plan([6, 2, 1, 0], "heteromoe").gpu_tokens.tolist()


def test_exact_feasible_keeps_its_plan_with_the_proved_gap(monkeypatch):
    import heteromoe.sched.policies.exact as exact_mod
    from heteromoe.sched.exact import SolveResult

    # the hand optimum (1.5 s), found but not proved: bound 1.2 s
    monkeypatch.setattr(exact_mod, "solve", lambda *a, **k: SolveResult("FEASIBLE", np.array([6, 0, 0]), 1.5, 1.2))
    p = plan([6, 2, 1, 0], ExactPolicy())
    info = p.info["exact"][0]
    assert info["status"] == "feasible" and info["used"] == "solver" and info["gap"] == pytest.approx(0.2)
    assert p.predicted_time_s == pytest.approx(1.5)


def test_exact_time_limit_is_shared_by_the_gpus(monkeypatch):
    """Each GPU's solve gets what is left of the call's limit over the GPUs left: a solver that uses all of its
    time on every GPU keeps the whole call within the limit."""
    import time

    import heteromoe.sched.policies.exact as exact_mod
    from heteromoe.sched.exact import SolveResult

    limits = []

    def slow_solve(model, limit, workers):
        limits.append(limit)
        time.sleep(limit)
        return SolveResult("UNKNOWN", None, float("inf"), 0.0)

    monkeypatch.setattr(exact_mod, "solve", slow_solve)
    p = heteromoe.schedule(np.arange(16), model=heteromoe.MoEModelSpec(
        name="m16", hidden_size=256, moe_intermediate_size=128, num_experts=16, top_k=2, num_layers=1),
        system="h100-hbm3-pim", gpus=4, policy=ExactPolicy(time_limit_s=0.2))
    assert len(limits) == 4 and limits[0] <= 0.05 and sum(limits) <= 0.2
    assert p.info["statuses"] == {"timed-out": 4} and p.info["max_gap"] is None


def test_exact_rejects_bad_time_limit():
    with pytest.raises(ValueError, match="time_limit_s must be > 0"):
        ExactPolicy(time_limit_s=0)


@pytest.mark.parametrize("overshoot", [True, False])
@pytest.mark.parametrize("group_by", ["channel", "stack"])
def test_pimoe_prefix_path_equals_the_general_loop(group_by, overshoot):
    """Where each channel group holds one expert, PIMoE's vectorized prefix gives the loop's plan; with
    stack groups the compiled loop gives the python loop's plan."""
    from heteromoe.sched.policies.pimoe import PimoePolicy

    rng = np.random.default_rng(5)
    looped = PimoePolicy(group_by=group_by, overshoot=overshoot)
    looped.force_loop = True
    for model, gpus in (("qwen3.5-397b-a17b", 8), ("gpt-oss-120b", 4), ("qwen3-30b-a3b", 1), ("qwen3-30b-a3b", 4)):
        spec = heteromoe.models.get(model)
        for batch in (1, 8, 64, 256):
            counts = rng.poisson(rng.choice([0.1, 2.0, 20.0], size=spec.num_experts) * batch / 64)
            counts[rng.integers(0, spec.num_experts, 3)] = 3  # ties
            kw = dict(model=spec, system="b200-hbm3e-pim", gpus=gpus)
            fast = heteromoe.schedule(counts, policy=PimoePolicy(group_by=group_by, overshoot=overshoot), **kw)
            slow = heteromoe.schedule(counts, policy=looped, **kw)
            assert fast.gpu_tokens.tolist() == slow.gpu_tokens.tolist(), (model, gpus, batch)
