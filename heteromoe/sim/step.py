"""sim: one decode step of a model on G GPUs with PIM, as a dependency graph of operations on per-GPU lanes.

    routing -> sub-batches -> loads -> plan (the policy, unchanged) -> operations on lanes (`sim.graph`)

Per layer, for each sub-batch in flight (the policy's `sub_batches`, paper §3.4 / Fig. 6a) and GPU, on the
lanes SMs (gpu), PIM, NVLink (link) and collectives (coll):
  1. projections (gpu): QKV, or a Gated DeltaNet layer's input projections;
  2. the attention core: decode attention on PIM (bank-level model) for the PIM policies, on the SMs for
     `gpu-only`; prefill attention and Gated DeltaNet state on the SMs;
  3. output projection + router (gpu);
  4. AllGather of routing counts (coll; a collective: it starts when every GPU has routed);
  5. the expert window of paper §6.1: shared experts then the plan's GPU experts (gpu), the plan's PIM
     experts (pim) and the dispatch + combine all-to-all (link), which is chunked and overlaps the expert
     compute (Eq. 1's max, after Comet [54]); the window closes with a collective combine and the
     sub-batch's next layer may start.
With two sub-batches, sub-batch 1's attention runs on PIM while sub-batch 0's experts run on the SMs, and
the PIM lane holds attention and PIM experts back to back: what Sieve's T_PIM counts (§5.1). A free lane
starts its ready operation issued first (`sim.graph`); the issue order is the software pipeline described in
docs/step-model.md.

`StepOptions` names each modeling change (`StepOptions.legacy()`: the serialized layer model).
Durations come from `cost/`, `sim.layer_work` (dense work) and `sim.pim_truth` (PIM with refresh at the
real start time); the plan comes from the policy through its public interface, with the inputs its paper
says it uses (Sieve: attention in T_PIM, dense GPU work in T_GPU; PIMoE: neither).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from heteromoe.cost.ema import EmaPimCost
from heteromoe.cost.model import CostModel
from heteromoe.cost.pim_bank import BankPimTiming
from heteromoe.sched.factory import get_policy
from heteromoe.sched.placement import Placement, as_placement
from heteromoe.sched.plan import Plan
from heteromoe.sched.policy import Policy
from heteromoe.sim.graph import LaneGraph
from heteromoe.sim.layer_work import SubBatches, split_requests, sub_batch_work
from heteromoe.sim.memory import MemoryCheck, memory_check
from heteromoe.sim.options import StepOptions
from heteromoe.sim.pim_truth import ExpertPimTruth
from heteromoe.sim.timeline import Timeline
from heteromoe.spec.hardware import SystemSpec
from heteromoe.spec.model import MoEModelSpec
from heteromoe.spec.presets import models, systems

__all__ = ["StepResult", "StepSimulator"]


@dataclass
class StepResult:
    """One simulated decode step.

    `estimates`: per MoE layer and sub-batch, (the plan's predicted time, what it predicts as simulated):
    with sub-batches in flight the planners estimate the layer (Sieve §5.1), so the layer's span from the
    previous layer's end divided by the sub-batches; with one, the expert window (AllGather to combine)."""

    step_time_s: float
    timeline: Timeline
    plans: list[Plan] = field(default_factory=list)
    loads: list[np.ndarray] = field(default_factory=list)  # [E] tokens per expert, per MoE layer (all sub-batches)
    estimates: list[tuple[float, float]] = field(default_factory=list)
    memory: MemoryCheck | None = None
    sub_batches: int = 1

    @property
    def estimate_error(self) -> float:
        """Mean relative error of the planner's estimate against the simulated layer time (signed:
        negative = the planner expected less)."""
        if not self.estimates:
            return 0.0
        pred, real = np.array(self.estimates).T
        return float(np.mean((pred - real) / real))


class StepSimulator:
    """Simulates decode steps of `model` on `gpus` GPUs of `system` under `policy`.

    Args:
        model, system: presets (names, TOML paths or specs).
        gpus: GPUs in expert parallelism (attention data-parallel).
        policy: a policy name or Policy.
        context: KV-cache tokens per decode request: one length for all, or [decode requests] lengths.
        placement: expert placement (default: contiguous blocks); a Placement may carry replicas.
        record: keep the timeline and plans (the sweeps turn it off for speed).
        options: the modeling switches (default: the physical step model). PIMoE named by string takes its
            layout and stop rule from them; a PimoePolicy instance keeps its own.
        prefill: (requests, prompt tokens each) of colocated prefill requests in every step (paper §7.3);
            their tokens are the last rows of the routing, after one row per decode request.
    """

    def __init__(self, model, system, gpus: int = 1, policy: str | Policy = "sieve", context=2048,
                 placement=None, record: bool = True, options: StepOptions | None = None,
                 prefill: tuple[int, int] = (0, 0)) -> None:
        self.model: MoEModelSpec = models.get(model)
        self.system: SystemSpec = systems.get(system)
        self.system.require_gpu()
        self.system.check_gpus(gpus)
        if np.any(np.asarray(context) < 0):
            raise ValueError(f"context must be >= 0 tokens, got {context}")
        p_req, p_tok = (int(v) for v in prefill)
        if p_req < 0 or p_tok < 0 or (p_req > 0) != (p_tok > 0):
            raise ValueError(f"prefill must be (requests >= 0, tokens each >= 0), both 0 or both > 0, got {prefill}")
        self.prefill = (p_req, p_tok)
        self.options = options if options is not None else StepOptions()
        self.gpus = gpus
        self.policy = get_policy(policy)
        if isinstance(policy, str) and hasattr(self.policy, "group_by"):  # PIMoE by name: as the options say
            self.policy.group_by = "stack" if self.options.pimoe_stack_groups else "channel"
            self.policy.overshoot = not self.options.pimoe_no_overshoot
        self.context = context
        self.placement: Placement = as_placement(placement, self.model.num_experts, gpus)
        self.record = record
        self.sub_batches = max(int(self.policy.sub_batches), 1) if self.options.co_execution else 1
        pim = self.system.pim
        self.timing = BankPimTiming(pim) if pim.kind == "bank" and pim.timings is not None else None
        if self.options.pim_attention == "bank" and self.timing is None:
            raise ValueError(f"system {self.system.name!r} has no bank-level PIM timings for pim_attention='bank'; "
                             "use StepOptions(pim_attention='bytes')")
        self.truth = (ExpertPimTruth(self.timing, self.model, self.options.pim_separate_paths)
                      if self.timing is not None and self.options.pim_truth == "walk" else None)
        # times the plans: expert work only (attention and dense work are laid out by the simulator)
        self.expert_cost = CostModel(self.system, self.model)
        # what the planner believes PIM experts take: Sieve learns observed times (§5.1), the others keep
        # the closed form
        self.ema = (EmaPimCost(self.expert_cost.pim)
                    if self.truth is not None and getattr(self.policy, "learns_pim_costs", False) else None)
        self._decision_costs: dict[tuple, CostModel] = {}
        self._work: dict[tuple, object] = {}

    # -- per-layer inputs ------------------------------------------------------------------------------
    def _is_full_attention(self, layer: int) -> bool:
        interval = max(self.model.full_attention_interval, 1)
        return (layer + 1) % interval == 0

    def _groups_per_gpu(self) -> int | None:
        """Expert-parallel PIM groups per GPU of the policy's layout (None: Sieve's, all channels)."""
        if self.policy.pim_layout != "ep":
            return None
        pim = self.system.pim
        if getattr(self.policy, "group_by", "channel") == "stack":
            return pim.stacks_per_gpu
        return pim.stacks_per_gpu * pim.pseudo_channels_per_stack

    def _sub_work(self, sub: SubBatches, s: int, full: bool, key):
        k = (key, s, full)
        if k not in self._work:
            o = self.options
            self._work[k] = sub_batch_work(self.model, self.system, self.timing, sub, s, full,
                                           self.policy.attention_on_pim, linear_attention=o.linear_attention,
                                           dense_launch=o.dense_launch, pim_attention=o.pim_attention,
                                           separate_paths=o.pim_separate_paths and o.pim_truth == "walk")
        return self._work[k]

    def _decision_cost(self, work, s: int, full: bool, key) -> CostModel:
        """The cost model the policy plans with. With one sub-batch (or without co-execution): the expert
        window, with the shared experts as other GPU work (attention has finished before it). With several:
        what the papers say (Sieve §5.1: T_GPU counts every GPU operation but decode attention and PIM
        experts, T_PIM counts attention); a policy whose rule ignores a term (PIMoE: attention) does not
        read it."""
        k = (key, s, full)
        if k not in self._decision_costs:
            if self.options.co_execution and self.sub_batches > 1:
                gpu_other = float((work.proj_s + work.core_gpu_s + work.out_router_s + work.shared_s).max())
                pim_fixed = float(work.attn_pim_closed_s.max()) if self.policy.attention_on_pim else 0.0
            else:
                gpu_other, pim_fixed = float(work.shared_s.max()), 0.0
            self._decision_costs[k] = CostModel(self.system, self.model, pim_model=self.ema or self.expert_cost.pim,
                                                gpu_other_s=gpu_other, pim_fixed_s=pim_fixed)
        return self._decision_costs[k]

    def _pim_time(self, busy_s: np.ndarray, closed_s: np.ndarray) -> np.ndarray:
        """What a PIM operation is scheduled with: its busy time (refresh added where it starts), or the
        closed form when the planners' view is the truth."""
        return closed_s if self.truth is None else busy_s

    def _expert_pim(self, plan: Plan, times) -> tuple[np.ndarray, np.ndarray]:
        """([G] busy, [G] closed-form) seconds of the plan's PIM experts in the policy's layout."""
        groups = self._groups_per_gpu()
        if self.truth is None:
            if groups is not None and groups != self.expert_cost.channels_per_gpu:
                closed = self._ep_closed(plan.pim_tokens, plan.slot_gpu, groups)
                return closed, closed
            return times.t_pim_s, times.t_pim_s
        busy = self.truth.busy_s(plan.pim_tokens, plan.slot_gpu, self.gpus, groups)
        return busy, busy

    def _ep_closed(self, pim_tokens, slot_gpu, groups) -> np.ndarray:
        from heteromoe.cost.layout import channel_groups

        group, share, slots = channel_groups(slot_gpu, self.gpus, groups)
        per_group = np.bincount(group, weights=self.expert_cost.pim.times_s(pim_tokens, share), minlength=slots)
        return per_group.reshape(self.gpus, groups).max(axis=1)

    def _observe(self, windows) -> None:
        """Feed Sieve's EMA table what this step's PIM experts took, once per token count (the mean over the
        step): an expert's busy time, with its GPU's refresh stalls shared pro rata."""
        counts, times = [], []
        per_token = self.truth.per_token_busy_s(1.0)
        for plan, busy, took in windows:
            on_pim = np.flatnonzero(plan.pim_tokens > 0)
            if on_pim.size == 0:
                continue
            stretch = np.divide(took, busy, out=np.ones_like(busy), where=busy > 0)[plan.slot_gpu[on_pim]]
            n = plan.pim_tokens[on_pim]
            counts.append(n)
            times.append(n * per_token * np.maximum(stretch, 1.0))
        if counts:
            n, t = np.concatenate(counts), np.concatenate(times)
            seen, inverse = np.unique(n, return_inverse=True)
            self.ema.observe(seen, np.bincount(inverse, weights=t) / np.bincount(inverse))

    def _memory(self, decode: int) -> MemoryCheck:
        """Weights and KV / state per GPU against the PIM-capable capacity (`sim.memory`): the decode
        requests' contexts, and the prefill requests' prompts."""
        p_req, p_tok = self.prefill
        if p_req == 0 and np.ndim(self.context) == 0:
            return memory_check(self.model, self.system, self.gpus, decode, self.context)
        ctx = np.concatenate([np.broadcast_to(np.asarray(self.context, dtype=np.float64), (decode,)),
                              np.full(p_req, float(p_tok))])
        return memory_check(self.model, self.system, self.gpus, decode + p_req, ctx)

    # -- the step ---------------------------------------------------------------------------------------
    def run(self, top_k_index: np.ndarray) -> StepResult:
        """Simulate one step.

        Args:
            top_k_index: [moe_layers, rows, k] routed experts of each MoE layer's tokens: one row per
                decode request, then the prefill requests' prompt tokens.
        """
        top_k_index = np.asarray(top_k_index)
        m, G, S = self.model, self.gpus, self.sub_batches
        if top_k_index.ndim != 3 or top_k_index.shape[0] != m.num_moe_layers or top_k_index.shape[2] != m.top_k:
            raise ValueError(f"routing must be [moe_layers={m.num_moe_layers}, batch, k={m.top_k}], "
                             f"got {top_k_index.shape}")
        p_req, p_tok = self.prefill
        decode = top_k_index.shape[1] - p_req * p_tok
        if decode < 0:
            raise ValueError(f"routing has {top_k_index.shape[1]} rows, fewer than the {p_req} x {p_tok} prefill "
                             "tokens; pass one row per decode request, then the prompt tokens")
        if np.ndim(self.context) and np.shape(self.context) != (decode,):
            raise ValueError(f"context must be one length or {decode} non-negative lengths (one per decode "
                             f"request), got shape {np.shape(self.context)}")
        sub = split_requests(decode, G, S, self.context, self.prefill)
        key = (decode, S) if np.ndim(self.context) == 0 else (decode, S, id(self.context))
        attn_on_pim = self.policy.attention_on_pim
        layout = self.policy.pim_layout
        refresh = (self.truth.t_refi_s, self.truth.t_rfc_s) if self.truth is not None else None
        graph = LaneGraph(G, refresh)
        plans, loads_seen, windows = [], [], []
        dense_layers = m.num_layers - m.num_moe_layers  # leading dense layers: attention only here
        begin = graph.op("step_start", None, 0.0, [], -1)
        done = [begin] * S  # each sub-batch's end of its previous layer
        attn: list = [None] * S  # each sub-batch's attention on PIM (or projections) in the current layer
        layer_ends: list[list[int]] = []
        link = self.system.link
        ag_s = 0.0 if G == 1 else link.latency_s + m.num_experts * 4 * G / link.bw_bytes_per_s_per_dir

        def works_of(layer):
            full = self._is_full_attention(layer)
            return full, [self._sub_work(sub, s, full, key) for s in range(S)]

        def issue_projections(layer, s, works) -> None:
            """Stage A1: projections, then attention on PIM (where this layer has it)."""
            w = works[s]
            proj = graph.op("qkv", "gpu", w.proj_s, [done[s]], layer, s)
            if attn_on_pim and w.attn_pim_busy_s.any():
                attn[s] = graph.op("attention", "pim", self._pim_time(w.attn_pim_busy_s, w.attn_pim_closed_s),
                                   [proj], layer, s, refresh=True)
            else:
                attn[s] = proj

        def issue_routing(layer, s, w, on_pim):
            """Stage A2: attention core on the SMs, output projection + router."""
            core = graph.op("prefill_attention" if on_pim else "attention", "gpu", w.core_gpu_s, [attn[s]], layer, s)
            return graph.op("o_proj+router", "gpu", w.out_router_s, [core], layer, s)

        def issue_experts(layer, s, full, w, route) -> None:
            """Stage B: AllGather of counts, the plan, the expert window, the combine."""
            moe_layer = layer - dense_layers
            counts = np.bincount(top_k_index[moe_layer][sub.rows[s]].ravel(), minlength=m.num_experts)
            plan = self.policy.plan(counts, self.placement, G, self._decision_cost(w, s, full, key))
            slot_counts = plan.gpu_tokens + plan.pim_tokens
            # GPU and link times from the cost model; PIM from the truth where it is kept (any layout's)
            times = self.expert_cost.times(slot_counts, plan.gpu_tokens, plan.pim_tokens, plan.slot_gpu, G,
                                           attention_on_pim=attn_on_pim,
                                           pim_layout=layout if self.truth is None else "tp",
                                           comm_s=plan.per_gpu_t_comm_s)
            window = graph.op("allgather_counts", "coll", ag_s, [route], layer, s, collective=True)
            shared = graph.op("shared_experts", "gpu", w.shared_s, [window], layer, s)
            gpu_end = graph.op("experts_gpu", "gpu", times.t_gpu_s, [window, shared], layer, s)
            busy, closed = self._expert_pim(plan, times)
            pim_end = graph.op("experts_pim", "pim", self._pim_time(busy, closed), [window], layer, s, refresh=True)
            link_end = graph.op("dispatch+combine", "link", times.t_comm_s, [window], layer, s)
            done[s] = graph.op("combine", None, 0.0, [gpu_end, pim_end, link_end], layer, s, collective=True)
            plans.append(plan)
            windows.append((pim_end, busy, window, done[s]))
            if self.record and s == 0:
                loads_seen.append(np.bincount(top_k_index[moe_layer].ravel(), minlength=m.num_experts))

        # issue order = scheduling priority (docs/step-model.md): A1 of every sub-batch; then per layer and
        # sub-batch s: A2(s), A1 of the next layer for s - 1, B(s); the next layer's A1 for the last one
        full, works = works_of(0)
        for s in range(S):
            issue_projections(0, s, works)
        for layer in range(m.num_layers):
            on_pim = attn_on_pim and any(w.attn_pim_busy_s.any() for w in works)
            nxt = works_of(layer + 1) if layer + 1 < m.num_layers else None
            for s in range(S):
                route = issue_routing(layer, s, works[s], on_pim)
                if s > 0 and nxt is not None and layer >= dense_layers:
                    issue_projections(layer + 1, s - 1, nxt[1])
                if layer < dense_layers:
                    done[s] = graph.op("layer_end", None, 0.0, [route], layer, s, collective=True)
                    if nxt is not None:
                        issue_projections(layer + 1, s, nxt[1])
                    continue
                issue_experts(layer, s, full, works[s], route)
            if layer >= dense_layers and nxt is not None:
                issue_projections(layer + 1, S - 1, nxt[1])
            layer_ends.append(list(done))
            if nxt is not None:
                full, works = nxt
        start, end = graph.run()
        timeline = Timeline() if self.record else None
        if timeline is not None:
            graph.record(timeline)
        # the planners' estimates against the simulated layer time per sub-batch; Sieve's table learns
        # what this step's PIM experts took (after each iteration, §5.1)
        estimates = []
        prev = 0.0
        window_view = not (self.options.co_execution and S > 1)  # what the planner's estimate stands for
        for layer, ends in enumerate(layer_ends):
            now = max(float(end[h].max()) for h in ends)
            if layer >= dense_layers:
                first = (layer - dense_layers) * S
                for plan, (_, _, opened, closed) in zip(plans[first:first + S], windows[first:first + S]):
                    real = float(end[closed].max() - end[opened].max()) if window_view else (now - prev) / S
                    estimates.append((float(plan.predicted_time_s), real))
            prev = now
        if self.ema is not None:
            self._observe([(plan, busy, end[h] - start[h]) for plan, (h, busy, _, _) in zip(plans, windows)])
        step = max(float(end[h].max()) for h in done)
        return StepResult(step_time_s=step, timeline=timeline or Timeline(), plans=plans if self.record else [],
                          loads=loads_seen, estimates=estimates, memory=self._memory(decode),
                          sub_batches=S)
