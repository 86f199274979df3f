"""The widened per-layer yardstick (`sched.exact_layer`): it is the optimum of `estimate_layer` where it says
so (checked against brute force), no policy decision beats it, and `heteromoe`'s decision is no worse than
`sieve`'s on bimodal loads."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

pytest.importorskip("ortools")

from heteromoe.cost.model import CostModel  # noqa: E402
from heteromoe.routing.synth import BimodalRouting  # noqa: E402
from heteromoe.sched.exact_layer import _plain_context, exact_layer, layer_time, policy_layer_time  # noqa: E402
from heteromoe.sched.placement import Placement  # noqa: E402
from heteromoe.sched.policies.heteromoe_policy import HeteromoePolicy  # noqa: E402
from heteromoe.sched.step_plan import DenseCosts, _combos, estimate_layer  # noqa: E402
from heteromoe.sim.step import StepSimulator  # noqa: E402
from heteromoe.spec.presets import models, systems  # noqa: E402

MODEL = models.get("qwen3-30b-a3b")
COST = CostModel(systems.get("b200-hbm3e-pim"), MODEL)


def _costs(decode, proj=(7e-6, 0.6e-6), out=(6e-6, 0.9e-6), shared=(3e-6, 1e-6), attn=(5e-6, 3e-6)):
    decode = np.asarray(decode)[None]
    full = lambda v: np.full(decode.shape, v)  # noqa: E731
    return DenseCosts(proj_gpu=full(proj[0]), proj_pim=full(proj[1]) * decode, out_gpu=full(out[0]),
                      out_pim=full(out[1]) * decode, shared_gpu=full(shared[0]), shared_pim=full(shared[1]) * decode,
                      attn_gpu=full(attn[0]), attn_pim=full(attn[1]) * decode, core_gpu=full(0.0), decode=decode,
                      launch_s=1e-6)


def _placement(gpus: int) -> Placement:
    return Placement.from_homes(np.arange(MODEL.num_experts) % gpus, gpus)


def test_layer_time_is_estimate_layer_at_common_shares():
    c = _costs([5, 3])
    counts = np.zeros(MODEL.num_experts, dtype=np.int64)
    counts[[0, 1, 2, 5]] = [9, 4, 2, 1]
    placement = _placement(2)
    t, combo, attn, tokens = policy_layer_time(c, counts, placement, COST, "heteromoe")
    ctx = _plain_context(counts, placement, COST)
    e_gpu, e_pim = ctx.evaluate(tokens, ctx.slot_counts)
    for share in (0.0, 0.4, 1.0):
        est, _, _ = estimate_layer(c, *combo, np.array([share]), e_gpu[None], e_pim[None], ctx.comm_s[None])
        a = np.rint(share * c.decode[0]).astype(np.int64)
        assert layer_time(c, combo, a, counts, placement, COST, tokens) == pytest.approx(float(est[0]), rel=1e-12)


def test_yardstick_matches_brute_force_on_a_small_layer():
    c = _costs([4])
    counts = np.zeros(MODEL.num_experts, dtype=np.int64)
    counts[[0, 3, 7]] = [3, 2, 1]
    placement = _placement(1)
    ex = exact_layer(c, counts, placement, COST, time_limit_s=5.0)
    assert ex.proved
    busy = np.flatnonzero(counts)
    best = np.inf
    for combo in _combos(True, True):
        for a in range(5):
            for split in itertools.product(*(range(int(n) + 1) for n in counts[busy])):
                tokens = np.zeros_like(counts)
                tokens[busy] = split
                best = min(best, layer_time(c, combo, np.array([a]), counts, placement, COST, tokens))
    # CP-SAT works in 0.1 ns units; the float optimum may differ from its answer by that rounding
    assert ex.time_s == pytest.approx(best, abs=1e-9)
    assert layer_time(c, ex.placement, ex.attn_gpu_requests, counts, placement, COST, ex.gpu_tokens) == ex.time_s


@settings(max_examples=8, deadline=None)
@given(st.lists(st.integers(0, 6), min_size=2, max_size=2), st.integers(0, 2**16))
def test_no_policy_decision_beats_the_yardstick(decode, seed):
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(int(sum(decode)) * MODEL.top_k, np.full(MODEL.num_experts, 1 / MODEL.num_experts))
    c, placement = _costs(decode), _placement(2)
    ex = exact_layer(c, counts, placement, COST, time_limit_s=2.0)
    for rule in ("heteromoe", "sieve"):
        assert ex.time_s <= policy_layer_time(c, counts, placement, COST, rule)[0] * (1 + 1e-12)


class _Recording(HeteromoePolicy):
    def step_plan(self, candidates, dense_layers, placement, num_gpus, cost):
        self.inputs = (candidates, dense_layers, placement, cost)
        return super().step_plan(candidates, dense_layers, placement, num_gpus, cost)


@pytest.mark.parametrize("batch,seed", [(1, 0), (16, 1), (64, 2)])
def test_heteromoe_between_the_yardstick_and_sieve_on_bimodal_loads(batch, seed):
    policy = _Recording()
    StepSimulator(MODEL, "b200-hbm3e-pim", 1, policy, 2048, record=False).run(
        BimodalRouting.for_model(MODEL, seed=seed).decode(batch, 1, MODEL.num_moe_layers)[0])
    candidates, dense_layers, placement, cost = policy.inputs
    layers, counts, _ = candidates[1]
    c = layers[dense_layers]
    ex = exact_layer(c, counts[0], placement, cost, time_limit_s=2.0)
    het = policy_layer_time(c, counts[0], placement, cost, "heteromoe")[0]
    sieve = policy_layer_time(c, counts[0], placement, cost, "sieve")[0]
    assert ex.time_s <= het * (1 + 1e-12)
    assert het <= sieve * (1 + 1e-12)


def test_two_sub_batches_are_refused_with_the_reason():
    c = _costs([2])
    two = DenseCosts(**{k: np.concatenate([getattr(c, k)] * 2) for k in (
        "proj_gpu", "proj_pim", "out_gpu", "out_pim", "shared_gpu", "shared_pim", "attn_gpu", "attn_pim", "core_gpu",
        "decode")})
    with pytest.raises(ValueError, match="one sub-batch"):
        exact_layer(two, np.ones(MODEL.num_experts, dtype=np.int64), _placement(1), COST)
