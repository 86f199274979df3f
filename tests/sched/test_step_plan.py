"""The step plan as data: validation, and the dense placement rule's estimate."""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from heteromoe.sched.step_plan import DenseCosts, LayerPlacement, StepPlan, StepPlanError, choose_layer, estimate_layer


def _costs(decode, proj=(10e-6, 1e-6), out=(8e-6, 1e-6), shared=(0.0, 0.0), attn=(5e-6, 3e-6)):
    decode = np.asarray(decode)
    full = lambda v: np.full(decode.shape, v)  # noqa: E731
    return DenseCosts(proj_gpu=full(proj[0]), proj_pim=full(proj[1]) * decode, out_gpu=full(out[0]),
                      out_pim=full(out[1]) * decode, shared_gpu=full(shared[0]), shared_pim=full(shared[1]) * decode,
                      attn_gpu=full(attn[0]), attn_pim=full(attn[1]) * decode, core_gpu=full(0.0), decode=decode,
                      launch_s=1e-6)


def test_validate_accepts_whole_plans_and_names_what_is_wrong():
    decode = np.array([[3, 2]])
    StepPlan(1, (LayerPlacement("pim", "gpu", "gpu", np.array([[1, 2]])),) * 4).validate(decode, 4)
    StepPlan(1).validate(decode, 4)  # no layers: every layer default
    with pytest.raises(StepPlanError, match="sub_batches must be 1 or 2"):
        StepPlan(3).validate(np.zeros((3, 2)), 4)
    with pytest.raises(StepPlanError, match="split into 1 sub-batches, the plan has 2"):
        StepPlan(2).validate(decode, 4)
    with pytest.raises(StepPlanError, match="places 1 layers, the model has 4"):
        StepPlan(1, (LayerPlacement(),)).validate(decode, 4)
    with pytest.raises(StepPlanError, match="proj = 'npu'"):
        StepPlan(1, (LayerPlacement(proj="npu"),)).validate(decode, 1)
    with pytest.raises(StepPlanError, match="3 requests' attention on the SMs of GPU 1 in sub-batch 0, which holds 2"):
        StepPlan(1, (LayerPlacement(attn_gpu_requests=np.array([[0, 3]])),)).validate(decode, 1)


def test_small_batches_put_weight_bound_projections_on_pim():
    # one token: 1 us on PIM against 10 us on the SMs
    est = choose_layer(_costs([[1]]), np.zeros((1, 1)), np.zeros((1, 1)), np.zeros((1, 1)))
    assert (est.placement.proj, est.placement.out_router) == ("pim", "pim")
    # 32 tokens: PIM is linear in tokens (32 us), the SMs read the weights once (10 us)
    big = choose_layer(_costs([[32]]), np.zeros((1, 1)), np.zeros((1, 1)), np.zeros((1, 1)))
    assert (big.placement.proj, big.placement.out_router) == ("gpu", "gpu")
    off = choose_layer(_costs([[1]]), np.zeros((1, 1)), np.zeros((1, 1)), np.zeros((1, 1)), dense_on_pim=False)
    assert off.placement.proj == "gpu" and off.time_s > est.time_s


def test_attention_moves_to_idle_sms_when_pim_is_the_bottleneck():
    c = _costs([[64, 64]], attn=(20e-6, 1e-6))  # 64 us of PIM attention against 20 us on the SMs
    e = np.zeros((1, 2))
    est = choose_layer(c, e, e, e)
    assert est.placement.attn_gpu_requests is not None and (est.placement.attn_gpu_requests > 0).all()
    assert est.time_s < choose_layer(c, e, e, e, attention_split=False).time_s


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 64), st.integers(1, 64), st.floats(0.0, 1.0))
def test_the_chosen_placement_is_no_worse_than_the_default(d0, d1, share):
    c = _costs([[d0, d1], [d1, d0]], shared=(6e-6, 0.5e-6))
    e_gpu, e_pim, e_comm = np.full((2, 2), 20e-6), np.full((2, 2), 15e-6), np.full((2, 2), 5e-6)
    default, _, _ = estimate_layer(c, "gpu", "gpu", "gpu", np.array([0.0]), e_gpu, e_pim, e_comm)
    other, _, _ = estimate_layer(c, "pim", "gpu", "pim", np.array([share]), e_gpu, e_pim, e_comm)
    best = choose_layer(c, e_gpu, e_pim, e_comm)
    assert best.time_s <= min(default[0], other[0]) + 1e-15
    a = best.placement.attn_gpu_requests
    assert a is None or ((a >= 0) & (a <= c.decode)).all()
