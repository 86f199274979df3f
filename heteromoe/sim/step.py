"""sim: one decode step of a model on G GPUs with PIM, layer by layer, with an overlap timeline.

    routing -> loads -> plan (the policy, unchanged) -> timing (this module)

Per layer and GPU (DESIGN.md section 2), on three lanes per GPU (SMs, PIM, link):
  1. QKV projections (SMs);
  2. the attention core over the local requests' KV cache (PIM for the PIM policies, SMs for `gpu-only`);
  3. output projection + router (SMs);
  4. AllGather of routing counts (link; a collective: it starts when every GPU has routed);
  5. the expert window: the dispatch + combine all-to-all (link) is chunked, so expert compute starts on
     the first tokens to arrive and overlaps it ("communication overlapped", DESIGN.md section 2); in it
     the plan's GPU set and the shared experts run on the SMs and its PIM set on PIM, concurrently. The
     window lasts max(T_comm, T_GPU, T_PIM) on each GPU and ends, as a collective, with the slowest GPU;
     the next layer starts.
The step ends when the slowest GPU finishes. Durations come only from `cost/` and `sim.dense`; the plan
comes from the policy through its public interface (never re-implemented here). The simulator hands the
policy a cost model of the window it will really run: the shared experts as other GPU work in it, and
no attention (which the layer has already finished by then).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from heteromoe.cost.model import CostModel
from heteromoe.routing.loads import loads_from_topk
from heteromoe.sched.factory import get_policy
from heteromoe.sched.placement import Placement, as_placement
from heteromoe.sched.plan import Plan
from heteromoe.sched.policy import Policy
from heteromoe.sim.dense import dense_work
from heteromoe.sim.timeline import Timeline
from heteromoe.spec.hardware import SystemSpec
from heteromoe.spec.model import MoEModelSpec
from heteromoe.spec.presets import models, systems

__all__ = ["StepResult", "StepSimulator"]


@dataclass
class StepResult:
    """One simulated decode step."""

    step_time_s: float  # every GPU ends then: each layer closes with a collective combine
    timeline: Timeline
    plans: list[Plan] = field(default_factory=list)
    loads: list[np.ndarray] = field(default_factory=list)  # [E] tokens per expert, per MoE layer


class StepSimulator:
    """Simulates decode steps of `model` on `gpus` GPUs of `system` under `policy`.

    Args:
        model, system: presets (names, TOML paths or specs).
        gpus: GPUs in expert parallelism (attention data-parallel).
        policy: a policy name or Policy.
        context: KV-cache tokens per request: one length for all, or [batch] lengths (one per request).
        placement: expert placement (default: contiguous blocks); a Placement may carry replicas.
        record: keep the timeline and plans (the sweeps turn it off for speed).
    """

    def __init__(self, model, system, gpus: int = 1, policy: str | Policy = "sieve", context: int = 2048,
                 placement=None, record: bool = True) -> None:
        self.model: MoEModelSpec = models.get(model)
        self.system: SystemSpec = systems.get(system)
        self.system.require_gpu()
        self.system.check_gpus(gpus)
        if np.any(np.asarray(context) < 0):
            raise ValueError(f"context must be >= 0 tokens, got {context}")
        self.gpus = gpus
        self.policy = get_policy(policy)
        self.context = context
        self.placement: Placement = as_placement(placement, self.model.num_experts, gpus)
        self.record = record
        # times the plans: expert work only (attention and dense work are laid out by the simulator)
        self.expert_cost = CostModel(self.system, self.model)
        self._decision_costs: dict[tuple[int, bool], CostModel] = {}
        self._dense: dict[tuple[int, bool], object] = {}

    def _is_full_attention(self, layer: int) -> bool:
        interval = max(self.model.full_attention_interval, 1)
        return (layer + 1) % interval == 0

    def _work(self, batch: int, full: bool):
        key = (batch, full) if np.ndim(self.context) == 0 else (batch, full, id(self.context))
        if key not in self._dense:
            self._dense[key] = dense_work(self.model, self.system, self.gpus, batch, self.context, full)
        return self._dense[key]

    def _decision_cost(self, batch: int, full: bool) -> CostModel:
        """The cost model of the expert window the policy plans: the shared experts share the SMs in it."""
        key = (batch, full) if np.ndim(self.context) == 0 else (batch, full, id(self.context))
        if key not in self._decision_costs:
            work = self._work(batch, full)
            self._decision_costs[key] = CostModel(self.system, self.model, pim_model=self.expert_cost.pim,
                                                  gpu_other_s=float(work.shared_s.max()))
        return self._decision_costs[key]

    def run(self, top_k_index: np.ndarray) -> StepResult:
        """Simulate one decode step.

        Args:
            top_k_index: [moe_layers, batch, k] routed experts of each MoE layer's tokens.
        """
        top_k_index = np.asarray(top_k_index)
        m = self.model
        if top_k_index.ndim != 3 or top_k_index.shape[0] != m.num_moe_layers or top_k_index.shape[2] != m.top_k:
            raise ValueError(f"routing must be [moe_layers={m.num_moe_layers}, batch, k={m.top_k}], "
                             f"got {top_k_index.shape}")
        batch, G = top_k_index.shape[1], self.gpus
        attn_on_pim = self.policy.attention_on_pim
        layout = self.policy.pim_layout
        timeline = Timeline() if self.record else None
        plans, loads_seen = [], []
        dense_layers = m.num_layers - m.num_moe_layers  # leading dense layers: attention only here
        now = 0.0
        for layer in range(m.num_layers):
            full = self._is_full_attention(layer)
            work = self._work(batch, full)
            t0 = np.full(G, now)
            qkv_end = t0 + work.qkv_s
            attn_end = qkv_end + (work.attn_pim_s if attn_on_pim else work.attn_gpu_s)
            route_end = attn_end + work.out_router_s
            if timeline is not None:
                for g in range(G):
                    timeline.add(g, "gpu", "qkv", layer, t0[g], qkv_end[g])
                    timeline.add(g, "pim" if attn_on_pim else "gpu", "attention", layer, qkv_end[g], attn_end[g])
                    timeline.add(g, "gpu", "o_proj+router", layer, attn_end[g], route_end[g])
            if layer < dense_layers:
                now = float(route_end.max())
                continue
            moe_layer = layer - dense_layers
            loads = loads_from_topk(top_k_index[moe_layer], m.num_experts)
            plan = self.policy.plan(loads.counts, self.placement, G, self._decision_cost(batch, full))
            slot_counts = plan.gpu_tokens + plan.pim_tokens
            times = self.expert_cost.times(slot_counts, plan.gpu_tokens, plan.pim_tokens, plan.slot_gpu, G,
                                           attention_on_pim=attn_on_pim, pim_layout=layout,
                                           comm_s=plan.per_gpu_t_comm_s)
            # AllGather of counts (collective), then the expert window with the all-to-all overlapped
            ag_start = route_end.max()
            window = ag_start + work.allgather_s
            shared_end = window + work.shared_s
            gpu_end = shared_end + times.t_gpu_s
            pim_end = window + times.t_pim_s
            link_end = window + times.t_comm_s
            combine_end = max(gpu_end.max(), pim_end.max(), link_end.max())
            if timeline is not None:
                for g in range(G):
                    timeline.add(g, "link", "allgather_counts", layer, ag_start, window)
                    timeline.add(g, "link", "dispatch+combine", layer, window, link_end[g])
                    timeline.add(g, "gpu", "shared_experts", layer, window, shared_end[g])
                    timeline.add(g, "gpu", "experts_gpu", layer, shared_end[g], gpu_end[g])
                    timeline.add(g, "pim", "experts_pim", layer, window, pim_end[g])
                plans.append(plan)
                loads_seen.append(loads.counts)
            now = float(combine_end)
        return StepResult(step_time_s=now, timeline=timeline or Timeline(),
                          plans=plans, loads=loads_seen)
