"""runtime: executes plans on backends for real tensors, one MoE layer call at a time.

    routing (top_k_index) -> loads (counting sort) -> plan (policy) -> split pairs -> backends -> combine

On CUDA (and on CPU when asked) calls of the built-in backends take the fused kernel path instead
(`runtime.fused`: routing, plan split, GEMV / grouped GEMM and combine as a few device kernels), with the
plan made on the host, ahead from the previous call, or on the device; this generic path remains for
everything else and as the fallback when the fused path fails.

The combine follows transformers' own implementations: each pair's weighted output is kept in the
promoted dtype of hidden states and routing weights, then summed over the k slots of each token and
cast back, so wrapped and unwrapped models agree to rounding. A backend that raises mid-batch, or whose
output fails `check_backend_output` (form, dtype, device, non-finite values from finite inputs), is logged
and its slice re-runs on the fallback backend: no token is lost. The fused path runs only the built-in
backends' own kernels (no plug-in code) and is not checked per call: a check would cost a host sync per call
there; its kernels are tested against the generic path instead.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import torch

from heteromoe.cost.model import CostModel
from heteromoe.device import Backend
from heteromoe.kernels import DevicePlan
from heteromoe.routing.loads import RoutingLoads, loads_from_topk
from heteromoe.runtime.device_plans import PlanRing, exact_plan, settle_rows
from heteromoe.runtime.fused import FusedLayerPath, unsupported_reason
from heteromoe.runtime.layer import ExpertLayer
from heteromoe.runtime.report import LayerStats
from heteromoe.runtime.work import WorkSlice
from heteromoe.sched.plan import Plan, PlanError
from heteromoe.sched.policy import Policy

logger = logging.getLogger(__name__)

__all__ = ["BackendOutputError", "MoEExecutor", "check_backend_output", "check_inputs", "split_work",
           "token_origins"]


def check_inputs(layer: ExpertLayer, hidden: torch.Tensor, top_k_index: torch.Tensor,
                 top_k_weights: torch.Tensor) -> None:
    """ValueError naming the layer unless hidden is [T, d] and top_k_index / top_k_weights are both [T, k]."""
    if hidden.dim() != 2 or hidden.shape[-1] != layer.hidden_size:
        raise ValueError(f"layer {layer.name}: hidden states must be [tokens, {layer.hidden_size}], got {tuple(hidden.shape)}")
    if top_k_index.shape != top_k_weights.shape or top_k_index.shape[0] != hidden.shape[0]:
        raise ValueError(f"layer {layer.name}: top_k_index {tuple(top_k_index.shape)} and top_k_weights "
                         f"{tuple(top_k_weights.shape)} must both be [{hidden.shape[0]}, k]")


def token_origins(loads: RoutingLoads, num_gpus: int) -> np.ndarray | None:
    """[G, E] tokens of each expert by origin GPU, with the batch's tokens in contiguous blocks per GPU
    (data-parallel attention: GPU g holds tokens [g T / G, (g+1) T / G)). None on one GPU."""
    if num_gpus == 1:
        return None
    token = loads.order // loads.top_k  # (P,) token of each pair, grouped by expert
    expert = np.repeat(np.arange(loads.num_experts), loads.counts)
    gpu = token * num_gpus // max(loads.num_tokens, 1)
    return np.bincount(gpu * loads.num_experts + expert, minlength=num_gpus * loads.num_experts).reshape(
        num_gpus, loads.num_experts)


def split_work(loads: RoutingLoads, plan: Plan) -> tuple[WorkSlice, WorkSlice]:
    """Cut the routed pairs by the plan: per slot, a range of its expert's pairs; of each range the first
    `gpu_tokens[s]` go to the GPU slice, the rest to the PIM slice.

    Also checks that the two slices together hold every routed pair exactly once.
    """
    order = loads.order
    slot_expert = plan.slot_expert
    totals = plan.gpu_tokens + plan.pim_tokens
    # where each slot's range starts inside `order`: its expert's offset + the earlier slots of that expert
    by_expert = np.argsort(slot_expert, kind="stable")
    ends = np.cumsum(totals[by_expert])
    first_of_expert = np.searchsorted(slot_expert[by_expert], slot_expert[by_expert])  # index of the expert's first slot
    before = ends - totals[by_expert] - np.concatenate([[0], ends])[first_of_expert]
    start = np.empty_like(totals)
    start[by_expert] = loads.offsets[slot_expert[by_expert]] + before

    def take(begin: np.ndarray, length: np.ndarray) -> WorkSlice:
        used = np.flatnonzero(length > 0)
        offsets = np.zeros(used.size + 1, dtype=np.int64)
        np.cumsum(length[used], out=offsets[1:])
        idx = np.repeat(begin[used] - offsets[:-1], length[used]) + np.arange(offsets[-1])
        return WorkSlice(experts=slot_expert[used], offsets=offsets, pair_index=order[idx], top_k=loads.top_k)

    gpu = take(start, plan.gpu_tokens)
    pim = take(start + plan.gpu_tokens, plan.pim_tokens)
    covered = np.bincount(np.concatenate([gpu.pair_index, pim.pair_index]), minlength=order.shape[0])
    if covered.shape[0] != order.shape[0] or (covered != 1).any():
        raise PlanError(f"plan of policy {plan.policy!r} does not run every routed pair exactly once")
    return gpu, pim


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


@dataclass
class MoEExecutor:
    """Runs layer calls: loads -> plan -> backends -> combine, and keeps per-layer statistics."""

    policy: Policy
    gpu_backend: Backend
    pim_backend: Backend
    fallback_backend: Backend
    num_gpus: int = 1
    stats: dict[str, LayerStats] = field(default_factory=dict)
    last_plans: dict[str, Plan] = field(default_factory=dict)
    fused: FusedLayerPath | None = None
    fused_on_cpu: bool = False
    plan_ahead: bool = False
    plan_on_device: bool = False
    _rings: dict[str, PlanRing] = field(default_factory=dict)
    _device_tables: dict = field(default_factory=dict)
    _fused_off: dict[str, str] = field(default_factory=dict)
    _fused_ok: set = field(default_factory=set)
    _ahead: dict[str, tuple[_AheadSlot, int]] = field(default_factory=dict)  # last slot, its tokens
    _ahead_bufs: dict[str, _AheadBuffers] = field(default_factory=dict)

    def fused_reason(self, layer: ExpertLayer, hidden: torch.Tensor, placement) -> str | None:
        """Why this call cannot take the fused path (None: it can). Cached per layer once it says no."""
        if self.fused is None:
            return "the fused path is off"
        if layer.name in self._fused_off:
            return self._fused_off[layer.name]
        key = (layer.name, hidden.get_device(), hidden.dtype)  # get_device(): an int, quicker to hash
        if key in self._fused_ok:  # checked once per layer, device and dtype: this runs on every call
            return None
        reason = None
        if hidden.device.type == "cpu" and not self.fused_on_cpu:
            reason = "CPU calls take the fused path only when asked (wrap(..., fused=True))"
        elif type(self.gpu_backend).__name__ != "TorchBackend" or type(self.pim_backend).__name__ not in (
                "PimEmulatorBackend", "TorchBackend"):
            reason = (f"backends {self.gpu_backend.name!r}/{self.pim_backend.name!r}: the fused kernels stand in only "
                      "for the built-in torch and pim-emulator backends")
        elif self.num_gpus != 1 or hasattr(placement, "observe") or getattr(placement, "num_slots", layer.num_experts) != layer.num_experts:
            reason = "multi-GPU plans and replicas use the generic path"
        else:
            reason = unsupported_reason(layer, hidden)
        if reason is not None:
            self._fused_off[layer.name] = reason
            logger.info("layer %s: generic path (%s)", layer.name, reason)
        else:
            self._fused_ok.add(key)
        return reason

    def run(self, layer: ExpertLayer, cost: CostModel, placement, hidden: torch.Tensor,
            top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        """One MoE layer call.

        Args:
            layer: the experts.
            cost: the layer's cost model.
            placement: a Placement, or a ReplicaPlanner that observes the loads and returns one.
            hidden: [T, d]; top_k_index: [T, k]; top_k_weights: [T, k].
        Returns:
            [T, d] combined expert output in `hidden.dtype`.
        """
        check_inputs(layer, hidden, top_k_index, top_k_weights)
        if self.fused_reason(layer, hidden, placement) is None:
            try:
                return self._run_fused(layer, cost, placement, hidden, top_k_index, top_k_weights)
            except (ValueError, PlanError):
                raise  # bad input: the caller's error, not the path's
            except Exception as exc:  # noqa: BLE001 - a failing kernel path: generic path, no token lost
                if hidden.is_cuda and torch.cuda.is_current_stream_capturing():
                    raise  # the generic path cannot run in a CUDA graph either; the capture fails, not the layer
                self._fused_off[layer.name] = f"fused path failed: {type(exc).__name__}: {exc}"
                self._stats(layer.name).fallbacks += 1
                logger.warning("layer %s: fused path failed (%s: %s); re-running the call on the generic path",
                               layer.name, type(exc).__name__, exc)
        num_tokens, top_k = top_k_index.shape
        loads = loads_from_topk(top_k_index, layer.num_experts, where=layer.name)
        if hasattr(placement, "observe"):
            placement = placement.observe(loads.counts)
        plan = self.policy.plan(loads.counts, placement, self.num_gpus, cost, origin=token_origins(loads, self.num_gpus))
        gpu_work, pim_work = split_work(loads, plan)

        out_dtype = torch.promote_types(hidden.dtype, top_k_weights.dtype)
        pairs_out = torch.zeros(num_tokens * top_k, hidden.shape[-1], dtype=out_dtype, device=hidden.device)  # (T*k, d)
        stats = self._stats(layer.name)
        for backend, work in ((self.gpu_backend, gpu_work), (self.pim_backend, pim_work)):
            if work.is_empty():
                continue
            out, ran_on = self._run_with_fallback(backend, layer, hidden, top_k_weights, work, stats)
            pairs_out[work.pair_index_on(hidden.device)] = out.to(out_dtype)
            if backend is self.pim_backend and ran_on is backend and hasattr(cost.pim, "observe"):
                measured = backend.reported_times_s(work)
                if measured is not None:  # Sieve's learned table: what the PIM really took
                    cost.pim.observe(work.tokens_per_expert, measured)
        stats.add(plan, num_tokens)
        self.last_plans[layer.name] = plan
        return pairs_out.view(num_tokens, top_k, hidden.shape[-1]).sum(dim=1).to(hidden.dtype)

    def _run_fused(self, layer: ExpertLayer, cost: CostModel, placement, hidden: torch.Tensor,
                   top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        """The layer call on the fused kernels. `gpu-only` needs no plan on the host, so nothing waits for
        the device; other policies copy the counts to the host (the one sync), plan, and hand the plan's
        GPU share per expert to the kernels, whose cold side is then the PIM set."""
        num_tokens = int(top_k_index.shape[0])
        if self.policy.name == "gpu-only":
            out = self.fused.run(layer, hidden, top_k_index, top_k_weights)
            self._stats(layer.name).add_unplanned(num_tokens, num_tokens * int(top_k_index.shape[1]))
            return out
        if self.plan_on_device and hidden.is_cuda and self.policy.name in ("sieve", "heteromoe"):
            return self._run_fused_device_plan(layer, cost, placement, hidden, top_k_index, top_k_weights)
        if self.plan_ahead and hidden.is_cuda:
            return self._run_fused_ahead(layer, cost, placement, hidden, top_k_index, top_k_weights)
        loads = loads_from_topk(top_k_index, layer.num_experts, where=layer.name)
        # Policy.plan validated it: every pair once; without replicas (fused_reason) slot e is expert e
        plan = self.policy.plan(loads.counts, placement, self.num_gpus, cost, origin=None)
        out = self.fused.run(layer, hidden, top_k_index, top_k_weights, take_hot=plan.gpu_tokens,
                             max_cold_tokens=int(plan.pim_tokens.max(initial=0)))
        self._record(layer.name, plan, num_tokens)
        return out

    def _run_fused_ahead(self, layer: ExpertLayer, cost: CostModel, placement, hidden: torch.Tensor,
                         top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        """Plan ahead: this call runs the plan made from the layer's previous call's counts, and copies its
        own counts to the host without waiting; the next call plans from them. So the host never waits
        for the device, and the planning runs while the device works through the layers queued before.

        The plan is per expert: the GPU takes all tokens of its experts (and the planned share of a split
        expert), the PIM set the rest, experts not routed last time go to the PIM side; whatever the
        routing, the kernels run every pair exactly once. Stats record each plan against the counts it
        was made from. The first call of a layer plans synchronously.
        """
        num_tokens = int(top_k_index.shape[0])
        last = self._ahead.get(layer.name)
        if last is None:
            counts, planned_tokens = loads_from_topk(top_k_index, layer.num_experts, where=layer.name).counts, num_tokens
        else:
            last_slot, planned_tokens = last
            last_slot.ready.synchronize()  # recorded one call ago: normally long done
            counts = last_slot.counts_host.numpy().astype(np.int64)
        plan = self.policy.plan(counts, placement, self.num_gpus, cost, origin=None)
        self._record(layer.name, plan, planned_tokens)
        gpu = np.asarray(plan.gpu_tokens, dtype=np.int64)
        # all of a GPU expert's tokens, the planned share of a split one, none of a PIM (or unseen) one
        take = np.where((gpu == counts) & (counts > 0), np.iinfo(np.int32).max, gpu).astype(np.int32)
        buffers = self._ahead_buffers(layer, hidden.device)
        slot = buffers.flip()
        slot.take_host.numpy()[:] = take  # this slot's last copy finished: its event was waited on above
        slot.take_dev.copy_(slot.take_host, non_blocking=True)
        # a PIM expert can have every token of the batch this time
        out = self.fused.run(layer, hidden, top_k_index, top_k_weights, take_hot=slot.take_dev,
                             max_cold_tokens=num_tokens, hot_possible=bool(take.any()))
        slot.counts_host.copy_(self.fused.last_counts, non_blocking=True)
        slot.ready.record()
        self._ahead[layer.name] = (slot, num_tokens)
        return out

    def _run_fused_device_plan(self, layer: ExpertLayer, cost: CostModel, placement, hidden: torch.Tensor,
                               top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        """Plan on the device: route_prep runs the policy's planner (the C++ fast path's rule, same doubles)
        on this call's counts, in the same kernel; the host neither waits nor plans. The plan's GPU tokens
        and the counts go into the layer's device ring (`runtime.device_plans`), settled into the plans and
        statistics in bulk, without waiting, every RING_CALLS calls (and by `flush()`)."""
        num_tokens = int(top_k_index.shape[0])
        plan = self._device_plan(layer, cost, num_tokens, hidden.device)
        if torch.cuda.is_current_stream_capturing():  # in a CUDA graph: kernels only (replays keep no stats)
            scratch = torch.empty(2, layer.num_experts, dtype=torch.int32, device=hidden.device)
            return self.fused.run(layer, hidden, top_k_index, top_k_weights, device_plan=plan, plan_out=scratch)
        ring = self._rings.get(layer.name)
        if ring is None:
            ring = self._rings[layer.name] = PlanRing.allocate(layer.num_experts, hidden.device, cost)
        elif ring.cost is not cost:  # another cost model from now on: what the ring holds is settled with the old one
            self._settle(layer.name)
            ring.cost = cost
        out = self.fused.run(layer, hidden, top_k_index, top_k_weights, device_plan=plan,
                             plan_out=ring.next_row(num_tokens))
        if ring.full:
            ready = ring.ship()
            if ready is not None:
                self._settle_rows(layer.name, ring.cost, *ready)
        return out

    def _device_plan(self, layer: ExpertLayer, cost: CostModel, num_tokens: int, device: torch.device):
        """The layer's cost tables on the device (re-uploaded when the cost model's tables change)."""
        flop_tab, pim_tab = cost.tables(num_tokens)
        cached = self._device_tables.get(layer.name)
        if cached is None or cached[0] is not flop_tab or cached[1] is not pim_tab:
            gpu_fixed, pim_fixed = cost.fixed_arrays(1, self.policy.attention_on_pim)
            plan = DevicePlan(rule=self.policy.name, flop=torch.from_numpy(flop_tab).to(device),
                              pim=torch.from_numpy(np.ascontiguousarray(pim_tab, dtype=np.float64)).to(device),
                              read_s=float(cost.gpu.read_s_per_expert), launch_s=float(cost.gpu.launch_s),
                              comm_s=0.0, gpu_fixed_s=float(gpu_fixed[0]), pim_fixed_s=float(pim_fixed[0]))
            cached = self._device_tables[layer.name] = (flop_tab, pim_tab, plan)
        return cached[2]

    def _settle(self, name: str) -> None:
        """Settle every device plan of a layer not settled yet (waits for their copies)."""
        ring = self._rings.get(name)
        if ring is not None:
            for rows, tokens in ring.drain():
                self._settle_rows(name, ring.cost, rows, tokens)

    def _settle_rows(self, name: str, cost: CostModel, rows: np.ndarray, tokens: list) -> None:
        """R device plans ([R, 2, E]: GPU tokens, counts) into the statistics (vectorized) and the last one
        into `last_plans` (the per-call path); the PIM backend's counters as `_record` keeps them."""
        take, counts = rows[:, 0], rows[:, 1]  # int32; settle_rows and exact_plan take them to int64
        calls_with_pim, pim_pairs = settle_rows(cost, self.policy, take, counts, np.asarray(tokens), self._stats(name))
        self.last_plans[name] = exact_plan(cost, self.policy, take[-1], counts[-1])
        self._count_pim_calls(calls_with_pim, pim_pairs)

    def _record(self, name: str, plan: Plan, num_tokens: int) -> None:
        """A fused call's plan into the statistics, and into the PIM backend's counters (the fused kernels ran
        its share in its place)."""
        self._stats(name).add(plan, num_tokens)
        self.last_plans[name] = plan
        pim_pairs = int(plan.pim_tokens.sum())
        self._count_pim_calls(int(pim_pairs > 0), pim_pairs)

    def _count_pim_calls(self, calls: int, pairs: int) -> None:
        """The PIM backend's counters for calls whose PIM share the fused kernels ran in its place."""
        if pairs and hasattr(self.pim_backend, "calls"):
            self.pim_backend.calls += calls
            self.pim_backend.pairs += pairs

    def _stats(self, name: str) -> LayerStats:
        """The layer's statistics (created on its first call; a lookup on every other, so as not to build a
        LayerStats per call only to throw it away)."""
        stats = self.stats.get(name)
        if stats is None:
            stats = self.stats[name] = LayerStats(name)
        return stats

    def flush(self) -> None:
        """Settle every device plan not settled yet (statistics and `last_plans` are then complete)."""
        for name in list(self._rings):
            self._settle(name)

    def _ahead_buffers(self, layer: ExpertLayer, device: torch.device) -> _AheadBuffers:
        buffers = self._ahead_bufs.get(layer.name)
        if buffers is None:
            buffers = self._ahead_bufs[layer.name] = _AheadBuffers.allocate(layer.num_experts, device)
        return buffers

    def _run_with_fallback(self, backend: Backend, layer: ExpertLayer, hidden: torch.Tensor,
                           top_k_weights: torch.Tensor, work: WorkSlice, stats: LayerStats) -> tuple[torch.Tensor, Backend]:
        """The slice's outputs and the backend that produced them.

        A backend is a plug-in, possibly driving real hardware: its output is checked like any untrusted
        input (`check_backend_output`). An exception or a failed check is logged naming the backend and the
        layer, counted in the layer's `fallbacks`, and the slice re-runs on the fallback backend. The
        fallback's own output is checked for its form only: it is the reference (where the layer's inputs
        or weights make non-finite values, it makes them as the unwrapped model does).
        """
        out_dtype = torch.promote_types(hidden.dtype, top_k_weights.dtype)
        try:
            out = backend.run_experts(layer, hidden, top_k_weights, work)
            problem = check_backend_output(out, work, hidden, top_k_weights, out_dtype,
                                           finite=backend is not self.fallback_backend)
            if problem is None:
                return out, backend
            failure = f"returned {problem}"
        except Exception as exc:
            if backend is self.fallback_backend:
                raise
            failure = f"raised {type(exc).__name__}: {exc}"
        if backend is self.fallback_backend:
            raise BackendOutputError(f"layer {layer.name}: fallback backend {backend.name!r} {failure}")
        stats.fallbacks += 1
        logger.warning("layer %s: backend %r %s on %d pairs; re-running them on %r",
                       layer.name, backend.name, failure, work.num_pairs, self.fallback_backend.name)
        out = self.fallback_backend.run_experts(layer, hidden, top_k_weights, work)
        problem = check_backend_output(out, work, hidden, top_k_weights, out_dtype, finite=False)
        if problem is not None:
            raise BackendOutputError(f"layer {layer.name}: fallback backend {self.fallback_backend.name!r} "
                                     f"returned {problem}")
        return out, self.fallback_backend


class BackendOutputError(RuntimeError):
    """The fallback backend itself returned an output of the wrong form: nothing trusted is left to run on."""


def check_backend_output(out, work: WorkSlice, hidden: torch.Tensor, top_k_weights: torch.Tensor,
                         out_dtype: torch.dtype, finite: bool = True) -> str | None:
    """What is wrong with a backend's output for `work`, in words, or None when it is sound.

    Sound: a tensor of shape [P, d] in `out_dtype` on the hidden states' device and, with `finite`, no
    non-finite value in a row whose inputs (the token's hidden state and the pair's routing weight) are
    finite: such a row's NaN / Inf comes from the layer's inputs and is the unwrapped model's too.

    Cost: the form checks read metadata only; the finiteness check is one sum over the output (NaN or Inf
    anywhere makes it non-finite) and one host read of the result; only when that sum is not finite (a
    non-finite value, or a sum that overflows) are the rows and their inputs looked at.
    """
    if not isinstance(out, torch.Tensor):
        return f"a {type(out).__name__}, not a torch.Tensor"
    expected = (work.num_pairs, hidden.shape[-1])
    if tuple(out.shape) != expected:
        return f"shape {tuple(out.shape)}, expected {expected}"
    if out.dtype != out_dtype:
        return f"dtype {out.dtype}, expected {out_dtype}"
    if out.device != hidden.device:
        return f"a tensor on {out.device}, expected {hidden.device}"
    if not finite or bool(torch.isfinite(out.sum())):
        return None
    bad_rows = ~torch.isfinite(out).all(dim=1)
    tokens = work.token_index(hidden.device)
    inputs_finite = torch.isfinite(hidden[tokens]).all(dim=1) & torch.isfinite(work.pair_weights(top_k_weights))
    unexplained = bad_rows & inputs_finite
    if bool(unexplained.any()):
        return f"non-finite values in {int(unexplained.sum())} of {work.num_pairs} rows whose inputs are finite"
    return None
