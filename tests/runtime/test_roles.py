"""The executor's three roles on their own (dispatch, experts runner, plan source), and the combinations
`wrap()` builds, including a third-party backend through the composed executor."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import heteromoe
from heteromoe.cost.model import CostModel
from heteromoe.device import Backend, registry
from heteromoe.routing import loads_from_topk
from heteromoe.runtime.call import CallPlan, LayerCall
from heteromoe.runtime.dispatch import GPU_SIDE, PIM_SIDE, LocalDispatch
from heteromoe.runtime.distributed import route_pairs
from heteromoe.runtime.executor import MoEExecutor
from heteromoe.runtime.fused import FusedLayerPath
from heteromoe.runtime.fused_runner import FusedRunner
from heteromoe.runtime.layer import ExpertLayer, expert_forward
from heteromoe.runtime.plan_sources import AheadPlans, DevicePlans, HostPlans, KernelChoice
from heteromoe.runtime.report import Records
from heteromoe.runtime.roles import choose_plans, choose_roles
from heteromoe.runtime.runners import RUNNERS, BackendsRunner
from heteromoe.runtime.split import split_work
from heteromoe.sched import get_policy
from heteromoe.sched.placement import Placement
from tests.helpers import tiny_model

POLICIES = ["gpu-only", "all-exp", "sieve", "heteromoe"]


class ThirdPartyGpu(Backend):
    """A plug-in as a third party writes one: its own code per expert, nothing of the built-ins."""

    name = "third-party-gpu"
    kind = "gpu"

    def __init__(self) -> None:
        self.pairs = 0

    def run_experts(self, layer, hidden, top_k_weights, work):
        self.pairs += work.num_pairs
        return self._run_per_expert(layer, hidden, top_k_weights, work, lambda e, x: expert_forward(layer, e, x))


class TorchSubclass(type(registry.get("torch"))):
    """A subclass of the built-in torch backend: its code may differ, so the fused kernels must not stand in."""

    name = "torch-subclass"


def _call(policy: str = "sieve", tokens: int = 7, seed: int = 0) -> tuple[LayerCall, object]:
    model = tiny_model("qwen3_moe", seed=seed)
    layer = ExpertLayer.from_module("layer0", model.model.layers[0].mlp.experts)
    top_k = model.config.num_experts_per_tok
    gen = torch.Generator().manual_seed(seed)
    hidden = torch.randn(tokens, layer.hidden_size, generator=gen)
    ids = torch.stack([torch.randperm(layer.num_experts, generator=gen)[:top_k] for _ in range(tokens)])
    weights = torch.rand(tokens, top_k, generator=gen)
    spec = dataclasses.replace(heteromoe.models.get("qwen3-30b-a3b"), num_experts=layer.num_experts, top_k=top_k)
    cost = CostModel(heteromoe.systems.get("h100-hbm3-pim"), spec)
    placement = Placement.from_homes(np.zeros(layer.num_experts, dtype=np.int64), 1)
    return LayerCall(layer, cost, placement, hidden, ids, weights), get_policy(policy)


def _reference(call: LayerCall) -> torch.Tensor:
    return call.layer.module(call.hidden, call.top_k_index, call.top_k_weights)


# -- dispatch ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", POLICIES)
def test_local_dispatch_runs_each_side_once_and_combines(policy):
    call, pol = _call(policy)
    dispatch = LocalDispatch(1)
    plan = dispatch.plan(call, pol)
    seen = {GPU_SIDE: 0, PIM_SIDE: 0}

    def run_side(side, hidden, weights, work):  # the reference per pair, weighted
        seen[side] += work.num_pairs
        out = torch.empty(work.num_pairs, hidden.shape[-1])
        tokens, w = work.token_index(hidden.device), work.pair_weights(weights)
        for i, e in enumerate(work.experts.tolist()):
            lo, hi = work.offsets[i], work.offsets[i + 1]
            out[lo:hi] = expert_forward(call.layer, e, hidden[tokens[lo:hi]]) * w[lo:hi, None]
        return out

    out = dispatch.run(call, plan, run_side)
    torch.testing.assert_close(out, _reference(call), rtol=0, atol=1e-5)
    assert seen == {GPU_SIDE: int(plan.gpu_tokens.sum()), PIM_SIDE: int(plan.pim_tokens.sum())}


@pytest.mark.parametrize("gpu_tokens", [[1, 0, 3, 0], [2, 1, 0, 1], [0, 0, 0, 0]])
def test_all_to_all_routes_pairs_as_the_local_split_cuts_them(gpu_tokens):
    """One rank: route_pairs puts on the GPU side exactly the pairs split_work gives the GPU slice (the two
    share the slot-start arithmetic, `split.slot_starts`)."""
    from heteromoe.sched import Plan

    ids = np.array([[0, 2], [2, 1], [2, 0], [3, 2]])
    loads = loads_from_topk(ids, 4)
    z = np.zeros(1)
    gpu = np.array(gpu_tokens)
    plan = Plan("t", np.zeros(4, np.int64), gpu, loads.counts - gpu, z, z, z)
    dest, side = route_pairs(plan, loads.counts[None, :], 0, loads.counts, loads.offsets)
    gpu_slice, _ = split_work(loads, plan)
    assert (dest == 0).all()
    assert sorted(loads.order[side == GPU_SIDE].tolist()) == sorted(gpu_slice.pair_index.tolist())


# -- experts runners --------------------------------------------------------------------------------------
def test_backends_runner_alone_matches_the_reference():
    call, pol = _call("all-exp")
    dispatch = LocalDispatch(1)
    third = ThirdPartyGpu()
    runner = BackendsRunner(third, third, registry.get("torch"))
    records = Records()
    out = runner.run(call, CallPlan(dispatch.plan(call, pol), {}), dispatch, records)
    torch.testing.assert_close(out, _reference(call), rtol=0, atol=1e-5)
    assert third.pairs == call.top_k_index.numel() and records.layer("layer0").fallbacks == 0


@pytest.mark.parametrize("gpu, pim, ok", [("torch", "pim-emulator", True), ("torch", "torch", True),
                                          ("third", "pim-emulator", False), ("torch", "third", False),
                                          ("subclass", "pim-emulator", False)])
def test_fused_runner_stands_in_only_for_the_built_in_backends(gpu, pim, ok):
    backends = {"torch": registry.get("torch"), "pim-emulator": registry.get("pim-emulator"),
                "third": ThirdPartyGpu(), "subclass": TorchSubclass()}
    runner = RUNNERS["fused"](backends[gpu], backends[pim], registry.get("torch"), path=FusedLayerPath())
    supported, reason = runner.supports(LocalDispatch(1), get_policy("sieve"))
    assert supported is ok
    assert ok or "stand in only for the built-in" in reason


def test_fused_runner_needs_one_local_gpu_and_no_replicas():
    torch_backend = registry.get("torch")
    runner = FusedRunner(FusedLayerPath(), True, torch_backend, registry.get("pim-emulator"))
    ok, reason = runner.supports(LocalDispatch(2), get_policy("sieve"))
    assert not ok and "multi-GPU" in reason
    call, _ = _call()
    assert runner.accepts(call) is None
    from heteromoe.sched.replicas import ReplicaPlanner

    call.placement = ReplicaPlanner(np.zeros(call.layer.num_experts, dtype=np.int64), 1, 1)
    assert "replicas" in runner.accepts(call)
    call, _ = _call()
    assert "only when asked" in FusedRunner(FusedLayerPath(), False, torch_backend, torch_backend).accepts(call)


# -- plan sources -------------------------------------------------------------------------------------------
def test_host_plans_hand_the_kernels_the_gpu_share():
    call, pol = _call("sieve")
    planned = HostPlans(pol).plan(call, LocalDispatch(1), Records(), BackendsRunner(*[registry.get("torch")] * 3))
    np.testing.assert_array_equal(planned.kernel["gpu_set"], planned.plan.gpu_tokens)
    assert planned.kernel["pim_set_max_tokens"] == int(planned.plan.pim_tokens.max(initial=0))


@pytest.mark.parametrize("policy, ahead, on_device, want", [
    ("gpu-only", True, True, "kernel-choice"), ("sieve", False, True, "device"), ("heteromoe", True, True, "device"),
    ("all-exp", False, True, "host"), ("all-exp", True, True, "ahead"), ("sieve", True, False, "ahead"),
    ("sieve", False, False, "host")])
def test_plan_source_for_the_fused_runner(policy, ahead, on_device, want):
    torch_backend = registry.get("torch")
    runner = FusedRunner(FusedLayerPath(), True, torch_backend, registry.get("pim-emulator"))
    plans, passed_over = choose_plans(get_policy(policy), runner, ahead, on_device)
    assert plans.name == want
    if policy == "all-exp" and on_device:
        assert any("device planner runs" in why for why in passed_over)


def test_plan_sources_follow_what_the_policy_declares_not_its_name():
    """The device planner takes a policy whose `_place` is the rule it reproduces, under any name; a subclass
    with its own `_place` plans on the host; kernel choice takes any policy that puts every expert on the GPU."""
    from heteromoe.sched.policies.gpu_only import GpuOnlyPolicy
    from heteromoe.sched.policies.sieve import SievePolicy

    class RenamedSieve(SievePolicy):
        name = "my-sieve"

    class OwnRule(SievePolicy):
        name = "sieve"  # the name alone does not make it Sieve's rule

        def _place(self, ctx):
            return super()._place(ctx)

    class MyGpuOnly(GpuOnlyPolicy):
        name = "mine"

    assert RenamedSieve().device_rule == "sieve" and OwnRule().device_rule is None
    assert get_policy("heteromoe").device_rule == "heteromoe" and get_policy("duplex").device_rule is None
    runner = FusedRunner(FusedLayerPath(), True, registry.get("torch"), registry.get("pim-emulator"))
    assert choose_plans(RenamedSieve(), runner, False, True)[0].name == "device"
    plans, passed_over = choose_plans(OwnRule(), runner, False, True)
    assert plans.name == "host" and any("declares none" in why for why in passed_over)
    assert choose_plans(MyGpuOnly(), runner, False, False)[0].name == "kernel-choice"


def test_plan_sources_without_host_plans_refuse_the_backends_runner():
    runner = BackendsRunner(*[registry.get("torch")] * 3)
    for source in (KernelChoice(get_policy("gpu-only")), AheadPlans(get_policy("sieve")),
                   DevicePlans(get_policy("sieve"))):
        ok, reason = source.supports(runner)
        assert not ok and "needs a host plan" in reason
    assert choose_plans(get_policy("sieve"), runner, True, True)[0].name == "host"


def test_ahead_and_device_plans_leave_cpu_calls_to_the_host():
    call, pol = _call("sieve")
    assert not AheadPlans(pol).accepts(call) and not DevicePlans(pol).accepts(call)


# -- the composed executor ----------------------------------------------------------------------------------
def test_executor_is_final_and_its_roles_are_chosen_once():
    assert getattr(MoEExecutor, "__final__", False)
    torch_backend = registry.get("torch")
    executor = MoEExecutor(get_policy("sieve"), torch_backend, registry.get("pim-emulator"), torch_backend,
                           fused=FusedLayerPath(), fused_on_cpu=True, plan_on_device=True)
    roles = executor.roles
    assert (roles.dispatch.name, roles.runner.name, roles.plans.name) == ("local", "fused", "device")
    call, _ = _call("sieve")
    out = executor.run(call.layer, call.cost, call.placement, call.hidden, call.top_k_index, call.top_k_weights)
    torch.testing.assert_close(out, _reference(call), rtol=0, atol=1e-5)
    assert executor.roles is roles and executor.generic_reasons == {}
    assert executor.stats["layer0"].calls == 1 and executor.stats["layer0"].predicted_time_s > 0  # host plan (CPU)


def test_a_failing_runner_hands_the_layer_to_the_backends():
    class Broken(FusedRunner):
        def run(self, call, planned, dispatch, records):
            raise RuntimeError("kernel launch failed")

    torch_backend = registry.get("torch")
    runner = Broken(FusedLayerPath(), True, torch_backend, registry.get("pim-emulator"))
    executor = MoEExecutor(get_policy("sieve"), torch_backend, registry.get("pim-emulator"), torch_backend,
                           runner=runner)
    call, _ = _call("sieve")
    for _ in range(2):
        out = executor.run(call.layer, call.cost, call.placement, call.hidden, call.top_k_index, call.top_k_weights)
        torch.testing.assert_close(out, _reference(call), rtol=0, atol=1e-5)
    assert "kernel launch failed" in executor.generic_reasons["layer0"]
    stats = executor.stats["layer0"]
    assert stats.fallbacks == 1 and stats.calls == 2  # refused once, then the backends from the start


COMBOS = [  # (wrap keywords, the roles wrap must build)
    (dict(policy="sieve", fused=False), ("local", "backends", "host")),
    (dict(policy="sieve", fused=True), ("local", "fused", "host")),
    (dict(policy="gpu-only", fused=True), ("local", "fused", "kernel-choice")),
    (dict(policy="heteromoe", fused=True, plan_ahead=True), ("local", "fused", "ahead")),
    (dict(policy="heteromoe", fused=True, plan_on_device=True), ("local", "fused", "device")),
    (dict(policy="sieve", gpu_backend=ThirdPartyGpu()), ("local", "backends", "host")),
    (dict(policy="sieve", fused=True, pim_backend=ThirdPartyGpu()), ("local", "backends", "host")),
    (dict(policy="heteromoe", fused=True, gpus=2), ("local", "backends", "host")),
]


@pytest.mark.parametrize("kwargs, roles", COMBOS, ids=[str(i) for i in range(len(COMBOS))])
def test_wrap_builds_each_combination_and_it_matches_the_unwrapped_model(kwargs, roles):
    model = tiny_model("qwen3_moe")
    ids = torch.randint(1, 128, (2, 6), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        ref = model(ids).logits
        runtime = heteromoe.wrap(model, **kwargs)
        out = model(ids).logits
    runtime.unwrap()
    r = runtime.executor.roles
    assert (r.dispatch.name, r.runner.name, r.plans.name) == roles
    assert (r.plans is r.host_plans) == (roles[2] == "host") and (r.runner is r.generic) == (roles[1] == "backends")
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)
    layers = runtime.report()["layers"]
    assert all(layer["calls"] == 1 and layer["pairs"] == ids.numel() * 2 for layer in layers)
    backend = kwargs.get("gpu_backend") or kwargs.get("pim_backend")
    if isinstance(backend, ThirdPartyGpu):
        assert backend.pairs > 0  # its code ran: no kernel stood in for it


@pytest.mark.parametrize("policy", POLICIES)
def test_report_is_the_same_on_the_fused_and_the_backends_path(policy):
    """CPU, float32: the fused kernels and the backends run the same plans, so the reports agree field by
    field (gpu-only included: its plan is recorded from the counts the kernels leave on the host)."""
    reports = []
    for fused in (False, True):
        model = tiny_model("mixtral")
        with torch.no_grad():
            runtime = heteromoe.wrap(model, policy=policy, fused=fused)
            model(torch.randint(1, 128, (3, 5), generator=torch.Generator().manual_seed(2)))
        runtime.unwrap()
        assert runtime.executor.roles.runner.name == ("fused" if fused else "backends")
        reports.append(runtime.report()["layers"])
    for a, b in zip(*reports, strict=True):
        assert a.keys() == b.keys()
        for key in a:
            assert a[key] == (b[key] if isinstance(b[key], str) else pytest.approx(b[key], rel=1e-12)), key
    assert all(layer["unplanned_calls"] == 0 for layer in reports[1])


def test_roles_are_logged_once(caplog):
    import logging

    torch_backend = registry.get("torch")
    with caplog.at_level(logging.INFO, logger="heteromoe.runtime.roles"):
        choose_roles(get_policy("all-exp"), LocalDispatch(1), BackendsRunner(torch_backend, torch_backend, torch_backend),
                     FusedRunner(FusedLayerPath(), True, torch_backend, registry.get("pim-emulator")),
                     plan_ahead=False, plan_on_device=True)
    assert caplog.text.count("executor roles: local dispatch, fused runner, host plans") == 1
    assert "device planner runs" in caplog.text



def test_fused_options_group_wraps_fused_keywords():
    from heteromoe.runtime import FusedOptions, KernelTuning

    model = tiny_model("qwen3_moe")
    grouped = heteromoe.wrap(model, policy="heteromoe", fused=FusedOptions(enabled=True, plan_on_device=True,
                                                                          tuning=KernelTuning(gemv_max_tokens=3)))
    grouped.unwrap()
    flat = heteromoe.wrap(model, policy="heteromoe", fused=True, plan_on_device=True, gemv_max_tokens=3)
    flat.unwrap()
    for runtime in (grouped, flat):
        assert runtime.executor.roles.plans.name == "device" and runtime.executor.fused.tuning.gemv_max_tokens == 3
    with pytest.raises(ValueError, match=r"pass \['plan_ahead'\] inside FusedOptions"):
        heteromoe.wrap(model, fused=FusedOptions(), plan_ahead=True)
    with pytest.raises(ValueError, match="FusedOptions.enabled must be None, True or False, got 'yes'"):
        FusedOptions(enabled="yes")


def test_kernel_tuning_is_one_checked_object_with_todays_defaults():
    from heteromoe.kernels.splitk import H100_SPLIT_K
    from heteromoe.runtime import KernelTuning

    tuning = KernelTuning()
    assert (tuning.gemv_max_tokens, tuning.gemv_batch_tokens, tuning.mma_max_tokens, tuning.mma_min_warps_per_sm,
            tuning.streams, tuning.split_k) == (2, 4, 256, 8, True, H100_SPLIT_K)
    path = FusedLayerPath(tuning=KernelTuning(mma_max_tokens=0), gemv_max_tokens=5)
    assert (path.tuning.mma_max_tokens, path.tuning.gemv_max_tokens, path.tuning.gemv_batch_tokens) == (0, 5, 4)
    with pytest.raises(ValueError, match="gemv_batch_tokens must be >= 0, got -1"):
        KernelTuning(gemv_batch_tokens=-1)
    with pytest.raises(ValueError, match="split-K setting 'x'"):
        KernelTuning.from_env({"HETEROMOE_SPLIT_K": "x"})


def test_one_fast_path_for_planners_and_cpu_kernels():
    """The facade decides once (HETEROMOE_FASTPATH or priority); the CPU kernels follow the planners' pick."""
    from heteromoe import _ext, kernels

    assert _ext.FASTPATH == _ext.impl.name
    assert kernels.cpu_kernels() is kernels.CPU_IMPLEMENTATIONS[_ext.FASTPATH]
