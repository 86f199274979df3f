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

A step-planning policy (`heteromoe`, `Policy.plans_step`) decides each step's `sched.step_plan.StepPlan`
from the dense costs of one and of two sub-batches and the first MoE layer's routing counts: its number of
sub-batches and, per layer, whether the projections, output projection + router and shared experts run on
the SMs or on PIM (the bank model, refresh where they start) and how many requests' attention runs on the
SMs; the simulator issues each operation on that lane and reports the step time back (`observe_step`).
Every other policy runs its own sub-batches with dense work on the SMs and attention where its paper has it.

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
from heteromoe.sched.step_plan import DenseCosts, LayerPlacement, StepPlan
from heteromoe.sim.graph import LaneGraph
from heteromoe.sim.layer_work import SubBatches, pim_attention_s, split_requests, sub_batch_work
from heteromoe.sim.memory import MemoryCheck, memory_check
from heteromoe.sim.options import StepOptions
from heteromoe.sim.pim_truth import ExpertPimTruth
from heteromoe.sim.timeline import Timeline
from heteromoe.spec.hardware import SystemSpec
from heteromoe.spec.model import MoEModelSpec
from heteromoe.spec.presets import models, systems

__all__ = ["StepResult", "StepSimulator"]


def _side(place: str, gpu_s: np.ndarray, pim: tuple[np.ndarray, np.ndarray] | None) -> tuple[np.ndarray, np.ndarray]:
    """([G] SM, [G] PIM closed-form) seconds of one dense operation placed on `place`."""
    zero = np.zeros_like(gpu_s, dtype=np.float64)
    if place == "pim":
        return zero, pim[1]
    return np.asarray(gpu_s, dtype=np.float64), zero


def _placement_key(lp: LayerPlacement) -> tuple:
    a = lp.attn_gpu_requests
    return lp.proj, lp.out_router, lp.shared, None if a is None else a.tobytes()


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
    step_plan: StepPlan | None = None

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

    def _decision_cost(self, work, s: int, full: bool, key, subs: int | None = None,
                       lp: LayerPlacement | None = None, split=None) -> CostModel:
        """The cost model the policy plans with. With one sub-batch (or without co-execution): the expert
        window, with the shared experts as other GPU (or PIM) work (attention has finished before it). With
        several: what the papers say (Sieve §5.1: T_GPU counts every GPU operation but decode attention and
        PIM experts, T_PIM counts attention); a policy whose rule ignores a term (PIMoE: attention) does not
        read it. A step plan's placement `lp` moves each dense operation's term to its side."""
        subs = self.sub_batches if subs is None else subs
        placed = lp is not None and not lp.is_default
        k = (key, s, full, _placement_key(lp) if placed else None)
        if k not in self._decision_costs:
            if placed:
                gpu, pim = self._placed_terms(work, lp, split)
                if not (self.options.co_execution and subs > 1):
                    gpu, pim = _side(lp.shared, work.shared_s, work.shared_pim)
                gpu_other, pim_fixed = float(np.max(gpu)), float(np.max(pim))
            elif self.options.co_execution and subs > 1:
                gpu_other = float((work.proj_s + work.core_gpu_s + work.out_router_s + work.shared_s).max())
                pim_fixed = float(work.attn_pim_closed_s.max()) if self.policy.attention_on_pim else 0.0
            else:
                gpu_other, pim_fixed = float(work.shared_s.max()), 0.0
            self._decision_costs[k] = CostModel(self.system, self.model, pim_model=self.ema or self.expert_cost.pim,
                                                gpu_other_s=gpu_other, pim_fixed_s=pim_fixed)
        return self._decision_costs[k]

    def _placed_terms(self, work, lp: LayerPlacement, split) -> tuple[np.ndarray, np.ndarray]:
        """([G] SM, [G] PIM closed-form) seconds of a sub-batch's dense work besides the experts, as `lp`
        places it (`split`: the attention's (SM, PIM busy, PIM closed) parts)."""
        gpu, pim = np.array(work.core_gpu_s, dtype=np.float64), np.zeros_like(work.core_gpu_s, dtype=np.float64)
        for place, g_s, p_s in ((lp.proj, work.proj_s, work.proj_pim), (lp.out_router, work.out_router_s,
                                                                         work.out_router_pim),
                                (lp.shared, work.shared_s, work.shared_pim)):
            a, b = _side(place, g_s, p_s)
            gpu, pim = gpu + a, pim + b
        att_gpu, _, att_closed = split
        if self.policy.attention_on_pim:
            return gpu + att_gpu, pim + att_closed
        return gpu + att_gpu, pim

    def _attention_split(self, work, sub: SubBatches, s: int, lp: LayerPlacement, key, full: bool):
        """([G] SM, [G] PIM busy, [G] PIM closed-form) seconds of sub-batch `s`'s decode attention with
        `lp.attn_gpu_requests[s]` requests on the SMs and the rest on PIM."""
        if lp.attn_gpu_requests is None or not full or work.attn_gpu_s is None:
            return np.zeros_like(work.proj_s), work.attn_pim_busy_s, work.attn_pim_closed_s
        on_gpu = lp.attn_gpu_requests[s]
        k = (key, s, "attn", on_gpu.tobytes())
        if k not in self._work:
            req = sub.decode[s]
            share = np.divide(on_gpu, req, out=np.zeros(req.shape), where=req > 0)
            launch = self.system.require_gpu().launch_overhead_s if self.options.dense_launch else 0.0
            gpu = np.where(on_gpu > 0, (work.attn_gpu_s - launch) * share + launch, 0.0)
            busy, closed = pim_attention_s(self.timing, self.model, req - on_gpu, sub.context[s] * (1 - share),
                                           self.options.pim_separate_paths and self.options.pim_truth == "walk")
            self._work[k] = (gpu, busy, closed)
        return self._work[k]

    def _step_plan(self, top_k_index: np.ndarray, decode: int) -> StepPlan:
        """Ask a step-planning policy for the step's plan, with what it may see: per candidate number of
        sub-batches, each layer's dense costs on either side and the first MoE layer's routing counts per
        sub-batch."""
        m, G = self.model, self.gpus
        candidates = {}
        for S in (1, 2):
            sub = split_requests(decode, G, S, self.context, self.prefill)
            key = (decode, S) if np.ndim(self.context) == 0 else (decode, S, id(self.context))
            kinds = {}
            layers = []
            for layer in range(m.num_layers):
                full = self._is_full_attention(layer)
                if full not in kinds:
                    kinds[full] = self._dense_costs(sub, S, full, key)
                layers.append(kinds[full])
            counts = np.stack([np.bincount(top_k_index[0][sub.rows[s]].ravel(), minlength=m.num_experts)
                               for s in range(S)])
            candidates[S] = (layers, counts, sub.decode)
        return self.policy.step_plan(candidates, m.num_layers - m.num_moe_layers, self.placement, G,
                                     self._plain_cost)

    def _dense_costs(self, sub: SubBatches, S: int, full: bool, key) -> DenseCosts:
        """[S, G] dense costs of one kind of layer on either side, as the step planner reads them."""
        works = [self._sub_work(sub, s, full, key) for s in range(S)]
        inf = np.full(self.gpus, np.inf)

        def stack(get):
            return np.stack([get(w) for w in works])

        def pim(get):
            return stack(lambda w: inf if get(w) is None else get(w)[1])

        if self.timing is not None and self.options.pim_separate_paths and self.truth is not None:
            # the closed form of attention charges a mode switch per GEMV that a separate command path
            # does not pay: the step planner reads the busy time with the expected refresh factor
            attn_pim = stack(lambda w: w.attn_pim_busy_s * self.timing.refresh_factor)
        else:
            attn_pim = stack(lambda w: w.attn_pim_closed_s)
        return DenseCosts(proj_gpu=stack(lambda w: w.proj_s), proj_pim=pim(lambda w: w.proj_pim),
                          out_gpu=stack(lambda w: w.out_router_s), out_pim=pim(lambda w: w.out_router_pim),
                          shared_gpu=stack(lambda w: w.shared_s), shared_pim=pim(lambda w: w.shared_pim),
                          attn_gpu=stack(lambda w: w.attn_gpu_s if w.attn_gpu_s is not None else inf)
                          if full else np.zeros_like(attn_pim),
                          attn_pim=attn_pim, core_gpu=stack(lambda w: w.core_gpu_s), decode=sub.decode,
                          launch_s=self.system.require_gpu().launch_overhead_s if self.options.dense_launch else 0.0,
                          sync_s=self._allgather_s())

    def _allgather_s(self) -> float:
        """The AllGather of routing counts (4-byte counts of every expert from every GPU)."""
        link = self.system.link
        G = self.gpus
        return 0.0 if G == 1 else link.latency_s + self.model.num_experts * 4 * G / link.bw_bytes_per_s_per_dir

    @property
    def _plain_cost(self) -> CostModel:
        """The expert cost model with no other work (the planners' expert tables, learned where kept)."""
        if "plain" not in self._decision_costs:
            self._decision_costs["plain"] = CostModel(self.system, self.model,
                                                      pim_model=self.ema or self.expert_cost.pim)
        return self._decision_costs["plain"]

    def _pim_time(self, busy_s: np.ndarray, closed_s: np.ndarray) -> np.ndarray:
        """What a PIM operation is scheduled with: its busy time (refresh added where it starts), or the
        closed form when the planners' view is the truth."""
        return closed_s if self.truth is None else busy_s

    def _expert_pim(self, plan: Plan, times) -> tuple[np.ndarray, np.ndarray]:
        """([G] busy, [G] closed-form) seconds of the plan's PIM experts in the policy's layout."""
        groups = self._groups_per_gpu()
        if self.truth is None:
            if groups is not None and groups != self.expert_cost.channels_per_gpu:
                closed = self.expert_cost.pim_s_per_gpu(plan.pim_tokens, plan.slot_gpu, self.gpus, "ep", groups)
                return closed, closed
            return times.t_pim_s, times.t_pim_s
        busy = self.truth.busy_s(plan.pim_tokens, plan.slot_gpu, self.gpus, groups)
        return busy, busy


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
        planned = getattr(self.policy, "plans_step", False) and self.options.co_execution
        if planned:
            step_plan = self._step_plan(top_k_index, decode)
        else:
            step_plan = StepPlan(S)
        S = step_plan.sub_batches
        sub = split_requests(decode, G, S, self.context, self.prefill)
        step_plan.validate(sub.decode, m.num_layers)
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
        ag_s = self._allgather_s()

        def works_of(layer):
            full = self._is_full_attention(layer)
            return full, [self._sub_work(sub, s, full, key) for s in range(S)]

        def dense_op(name, place, gpu_s, pim, inputs, layer, s):
            """One dense operation on the SMs, or on PIM where the step plan puts it."""
            if place == "pim":
                return graph.op(name, "pim", self._pim_time(*pim), inputs, layer, s, refresh=True)
            return graph.op(name, "gpu", gpu_s, inputs, layer, s)

        def issue_projections(layer, s, works) -> None:
            """Stage A1: projections, then attention on PIM (where this layer has it) and, where the step plan
            splits it, on the SMs for some requests."""
            w, lp = works[s], step_plan.layer(layer)
            proj = dense_op("qkv", lp.proj, w.proj_s, w.proj_pim, [done[s]], layer, s)
            attn_gpu, busy, closed = self._attention_split(w, sub, s, lp, key, self._is_full_attention(layer))
            parts = []
            if attn_on_pim and busy.any():
                parts.append(graph.op("attention", "pim", self._pim_time(busy, closed), [proj], layer, s,
                                      refresh=True))
            if attn_gpu.any():
                parts.append(graph.op("attention_gpu", "gpu", attn_gpu, [proj], layer, s))
            attn[s] = parts or [proj]

        def issue_routing(layer, s, w, on_pim):
            """Stage A2: attention core on the SMs, output projection + router."""
            core = graph.op("prefill_attention" if on_pim else "attention", "gpu", w.core_gpu_s, attn[s], layer, s)
            lp = step_plan.layer(layer)
            return dense_op("o_proj+router", lp.out_router, w.out_router_s, w.out_router_pim, [core], layer, s)

        def issue_experts(layer, s, full, w, route) -> None:
            """Stage B: AllGather of counts, the plan, the expert window, the combine."""
            moe_layer = layer - dense_layers
            counts = np.bincount(top_k_index[moe_layer][sub.rows[s]].ravel(), minlength=m.num_experts)
            lp = step_plan.layer(layer)
            split = self._attention_split(w, sub, s, lp, key, full)
            plan = self.policy.plan(counts, self.placement, G, self._decision_cost(w, s, full, key, S, lp, split),
                                    step=step_plan if planned else None)
            slot_counts = plan.gpu_tokens + plan.pim_tokens
            # GPU and link times from the cost model; PIM from the truth where it is kept (any layout's)
            times = self.expert_cost.times(slot_counts, plan.gpu_tokens, plan.pim_tokens, plan.slot_gpu, G,
                                           attention_on_pim=attn_on_pim,
                                           pim_layout=layout if self.truth is None else "tp",
                                           comm_s=plan.per_gpu_t_comm_s)
            window = graph.op("allgather_counts", "coll", ag_s, [route], layer, s, collective=True)
            shared = dense_op("shared_experts", lp.shared, w.shared_s, w.shared_pim, [window], layer, s)
            gpu_end = graph.op("experts_gpu", "gpu", times.t_gpu_s, [window, shared] if lp.shared == "gpu"
                               else [window], layer, s)
            busy, closed = self._expert_pim(plan, times)
            pim_end = graph.op("experts_pim", "pim", self._pim_time(busy, closed), [window], layer, s, refresh=True)
            link_end = graph.op("dispatch+combine", "link", times.t_comm_s, [window], layer, s)
            ends = [gpu_end, pim_end, link_end] + ([shared] if lp.shared == "pim" else [])
            done[s] = graph.op("combine", None, 0.0, ends, layer, s, collective=True)
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
        if planned and hasattr(self.policy, "observe_step"):  # the step planner learns what it missed
            self.policy.observe_step(step_plan, step)
        return StepResult(step_time_s=step, timeline=timeline or Timeline(), plans=plans if self.record else [],
                          loads=loads_seen, estimates=estimates, memory=self._memory(decode),
                          sub_batches=S, step_plan=step_plan)
