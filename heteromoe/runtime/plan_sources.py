"""The plan source role: where a layer call's plan comes from, and how it reaches the statistics.

    HostPlans      the call's own counts on the host (one device-to-host copy), the policy's plan
    KernelChoice   no plan: every expert on the GPU, the fused kernels choose GEMV or GEMM per expert
    AheadPlans     the plan made from the layer's previous call's counts (copied without waiting)
    DevicePlans    the policy's rule inside the routing kernel (`kernels.DEVICE_RULES`), settled in bulk

Each is chosen once, when the executor is built (`runtime.roles.choose_roles`); AheadPlans and DevicePlans
run only CUDA calls (`accepts`) and leave the rest to HostPlans.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from heteromoe.cost.model import CostModel
from heteromoe.kernels.device_plan import DEVICE_RULES, DevicePlan
from heteromoe.routing.loads import loads_from_topk
from heteromoe.runtime.call import CallPlan, LayerCall
from heteromoe.runtime.dispatch import Dispatch
from heteromoe.runtime.plan_stats import PlanRing, exact_plan, settle_rows
from heteromoe.runtime.report import Records
from heteromoe.runtime.runners import ExpertsRunner

__all__ = ["AheadPlans", "DevicePlans", "HostPlans", "KernelChoice", "PlanSource"]


class PlanSource(ABC):
    """Gives each call its plan (`plan`) and records it (`done`, `flush`).

    Class attributes:
        name: for logs.
        host_plans: `CallPlan.plan` is this call's plan on the host (what the backends runner needs).
    """

    name: ClassVar[str] = ""
    host_plans: ClassVar[bool] = True

    def __init__(self, policy) -> None:
        self.policy = policy

    def supports(self, runner: ExpertsRunner) -> tuple[bool, str]:
        """Whether its plans suit `runner` and the policy, with the reason."""
        if runner.needs_host_plan and not self.host_plans:
            return False, f"runner {runner.name!r} needs a host plan of each call; {self.name} plans make none"
        return True, ""

    def accepts(self, call: LayerCall) -> bool:
        """Whether it plans this call (False: the host plans it)."""
        return True

    @abstractmethod
    def plan(self, call: LayerCall, dispatch: Dispatch, records: Records, runner: ExpertsRunner) -> CallPlan:
        """The call's plan for `runner`."""

    def done(self, call: LayerCall, planned: CallPlan, records: Records, runner: ExpertsRunner) -> None:
        """After the runner ran the call."""

    def flush(self, records: Records, runner: ExpertsRunner) -> None:
        """Record every plan not recorded yet."""


class HostPlans(PlanSource):
    """The policy's plan of the call's own counts, made on the host."""

    name = "host"

    def plan(self, call: LayerCall, dispatch: Dispatch, records: Records, runner: ExpertsRunner) -> CallPlan:
        plan = dispatch.plan(call, self.policy)
        # Policy.plan validated it: every pair once; without replicas (FusedRunner.accepts) slot e is expert e
        return CallPlan(plan, {"gpu_set": plan.gpu_tokens, "pim_set_max_tokens": int(plan.pim_tokens.max(initial=0))})

    def done(self, call: LayerCall, planned: CallPlan, records: Records, runner: ExpertsRunner) -> None:
        records.add(call.layer.name, planned.plan, call.num_tokens)


class KernelChoice(PlanSource):
    """No plan before the call: the fused kernels run every expert on the GPU, GEMV or GEMM by its tokens,
    so nothing waits for the device (policies that declare `every_expert_on_gpu`). Where the call's counts are on the
    host afterwards (CPU kernels), the policy's plan of them is recorded as on every other path; on the
    CUDA kernels they stay on the device and the call is recorded as unplanned (`LayerStats`)."""

    name = "kernel-choice"
    host_plans = False

    def plan(self, call: LayerCall, dispatch: Dispatch, records: Records, runner: ExpertsRunner) -> CallPlan:
        return CallPlan(None, {})

    def done(self, call: LayerCall, planned: CallPlan, records: Records, runner: ExpertsRunner) -> None:
        counts = None if call.hidden.is_cuda else runner.last_counts  # CUDA: not even a view (host time)
        if counts is None:
            records.layer(call.layer.name).add_unplanned(call.num_tokens, call.num_tokens * call.top_k)
            return
        counts = counts.numpy().astype(np.int64)
        records.add(call.layer.name, self.policy.plan(counts, call.placement, 1, call.cost), call.num_tokens)


@dataclass
class _AheadSlot:
    take_host: torch.Tensor  # [E] int32 pinned
    take_dev: torch.Tensor  # [E] int32 on the device
    counts_host: torch.Tensor  # [E] int32 pinned
    ready: torch.cuda.Event


@dataclass
class _AheadBuffers:
    """Two slots of pinned/device buffers per layer, used in turn: a slot is rewritten only after the event
    recorded behind its copies has been waited on (the next call of the layer waits on it first)."""

    slots: list
    turn: int = 0

    @classmethod
    def allocate(cls, num_experts: int, device: torch.device) -> _AheadBuffers:
        def slot():
            return _AheadSlot(torch.zeros(num_experts, dtype=torch.int32, pin_memory=True),
                              torch.zeros(num_experts, dtype=torch.int32, device=device),
                              torch.zeros(num_experts, dtype=torch.int32, pin_memory=True), torch.cuda.Event())
        return cls([slot(), slot()])

    def flip(self) -> _AheadSlot:
        self.turn ^= 1
        self.slots[self.turn].ready.synchronize()  # its last copies (two calls ago) are done
        return self.slots[self.turn]


class AheadPlans(PlanSource):
    """Plan ahead: a call runs the plan made from the layer's previous call's counts, and copies its own
    counts to the host without waiting; the next call plans from them. So the host never waits for the
    device, and the planning runs while the device works through the layers queued before.

    The plan is per expert: the GPU takes all tokens of its experts (and the planned share of a split
    expert), the PIM set the rest, experts not routed last time go to the PIM side; whatever the routing,
    the kernels run every pair exactly once. Stats record each plan against the counts it was made from.
    The first call of a layer plans synchronously.
    """

    name = "ahead"
    host_plans = False

    def __init__(self, policy) -> None:
        super().__init__(policy)
        self._last: dict[str, tuple[_AheadSlot, int]] = {}  # the layer's last slot, its tokens
        self._buffers: dict[str, _AheadBuffers] = {}

    def supports(self, runner: ExpertsRunner) -> tuple[bool, str]:
        ok, reason = super().supports(runner)
        if ok and not runner.leaves_counts:
            return False, f"runner {runner.name!r} leaves no counts on the device to plan the next call from"
        return ok, reason

    def accepts(self, call: LayerCall) -> bool:
        return call.hidden.is_cuda

    def plan(self, call: LayerCall, dispatch: Dispatch, records: Records, runner: ExpertsRunner) -> CallPlan:
        layer, num_tokens = call.layer, call.num_tokens
        last = self._last.get(layer.name)
        if last is None:
            counts, planned_tokens = loads_from_topk(call.top_k_index, layer.num_experts, where=layer.name).counts, num_tokens
        else:
            last_slot, planned_tokens = last
            last_slot.ready.synchronize()  # recorded one call ago: normally long done
            counts = last_slot.counts_host.numpy().astype(np.int64)
        plan = self.policy.plan(counts, call.placement, dispatch.num_gpus, call.cost, origin=None)
        records.add(layer.name, plan, planned_tokens)
        gpu = np.asarray(plan.gpu_tokens, dtype=np.int64)
        # all of a GPU expert's tokens, the planned share of a split one, none of a PIM (or unseen) one
        take = np.where((gpu == counts) & (counts > 0), np.iinfo(np.int32).max, gpu).astype(np.int32)
        buffers = self._buffers.get(layer.name)
        if buffers is None:
            buffers = self._buffers[layer.name] = _AheadBuffers.allocate(layer.num_experts, call.hidden.device)
        slot = buffers.flip()
        slot.take_host.numpy()[:] = take  # this slot's last copy finished: its event was waited on above
        slot.take_dev.copy_(slot.take_host, non_blocking=True)
        # a PIM expert can have every token of the batch this time
        return CallPlan(plan, {"gpu_set": slot.take_dev, "pim_set_max_tokens": num_tokens,
                               "gpu_set_nonempty": bool(take.any())})

    def done(self, call: LayerCall, planned: CallPlan, records: Records, runner: ExpertsRunner) -> None:
        slot = self._buffers[call.layer.name].slots[self._buffers[call.layer.name].turn]
        slot.counts_host.copy_(runner.last_counts, non_blocking=True)
        slot.ready.record()
        self._last[call.layer.name] = (slot, call.num_tokens)


class DevicePlans(PlanSource):
    """Plan on the device: route_prep runs the policy's planner (the C++ fast path's rule, same doubles)
    on this call's counts, in the same kernel; the host neither waits nor plans. The plan's GPU tokens
    and the counts go into the layer's device ring (`runtime.plan_stats`), settled into the plans and
    statistics in bulk, without waiting, every RING_CALLS calls (and by `flush()`)."""

    name = "device"
    host_plans = False

    def __init__(self, policy) -> None:
        super().__init__(policy)
        self._rings: dict[str, PlanRing] = {}
        self._tables: dict[str, tuple] = {}
        self._filling: PlanRing | None = None  # the ring this call's plan went to

    def supports(self, runner: ExpertsRunner) -> tuple[bool, str]:
        ok, reason = super().supports(runner)
        if ok and self.policy.device_rule not in DEVICE_RULES:
            return False, (f"the device planner runs the rules {sorted(DEVICE_RULES)}; policy {self.policy.name!r} "
                           f"declares none (Policy.device_rule)")
        return ok, reason

    def accepts(self, call: LayerCall) -> bool:
        return call.hidden.is_cuda

    def plan(self, call: LayerCall, dispatch: Dispatch, records: Records, runner: ExpertsRunner) -> CallPlan:
        layer, cost, num_tokens = call.layer, call.cost, call.num_tokens
        plan = self._device_plan(call, num_tokens)
        if torch.cuda.is_current_stream_capturing():  # in a CUDA graph: kernels only (replays keep no stats)
            scratch = torch.empty(2, layer.num_experts, dtype=torch.int32, device=call.hidden.device)
            return CallPlan(None, {"device_plan": plan, "plan_out": scratch})
        ring = self._rings.get(layer.name)
        if ring is None:
            ring = self._rings[layer.name] = PlanRing.allocate(layer.num_experts, call.hidden.device, cost)
        elif ring.cost is not cost:  # another cost model from now on: what the ring holds is settled with the old one
            self._settle(layer.name, records)
            ring.cost = cost
        self._filling = ring
        return CallPlan(None, {"device_plan": plan, "plan_out": ring.next_row(num_tokens)})

    def done(self, call: LayerCall, planned: CallPlan, records: Records, runner: ExpertsRunner) -> None:
        ring, self._filling = self._filling, None  # None after a captured call: it took no row
        if ring is not None and ring.full:
            ready = ring.ship()
            if ready is not None:
                self._settle_rows(call.layer.name, ring.cost, *ready, records=records)

    def _device_plan(self, call: LayerCall, num_tokens: int) -> DevicePlan:
        """The layer's cost tables on the device (re-uploaded when the cost model's tables change)."""
        cost: CostModel = call.cost
        flop_tab, pim_tab = cost.tables(num_tokens)
        cached = self._tables.get(call.layer.name)
        if cached is None or cached[0] is not flop_tab or cached[1] is not pim_tab:
            device = call.hidden.device
            gpu_fixed, pim_fixed = cost.fixed_arrays(1, self.policy.attention_on_pim)
            plan = DevicePlan(rule=self.policy.device_rule, flop=torch.from_numpy(flop_tab).to(device),
                              pim=torch.from_numpy(np.ascontiguousarray(pim_tab, dtype=np.float64)).to(device),
                              read_s=float(cost.gpu.read_s_per_expert), launch_s=float(cost.gpu.launch_s),
                              comm_s=0.0, gpu_fixed_s=float(gpu_fixed[0]), pim_fixed_s=float(pim_fixed[0]))
            cached = self._tables[call.layer.name] = (flop_tab, pim_tab, plan)
        return cached[2]

    def _settle(self, name: str, records: Records) -> None:
        """Settle every device plan of a layer not settled yet (waits for their copies)."""
        ring = self._rings.get(name)
        if ring is not None:
            for rows, tokens in ring.drain():
                self._settle_rows(name, ring.cost, rows, tokens, records=records)

    def _settle_rows(self, name: str, cost: CostModel, rows: np.ndarray, tokens: list, *, records: Records) -> None:
        """R device plans ([R, 2, E]: GPU tokens, counts) into the statistics (vectorized) and the last one
        into `last_plans` (the per-call path)."""
        take, counts = rows[:, 0], rows[:, 1]  # int32; settle_rows and exact_plan take them to int64
        settle_rows(cost, self.policy, take, counts, np.asarray(tokens), records.layer(name))
        records.last_plans[name] = exact_plan(cost, self.policy, take[-1], counts[-1])

    def flush(self, records: Records, runner: ExpertsRunner) -> None:
        for name in list(self._rings):
            self._settle(name, records)
