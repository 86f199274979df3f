"""`heteromoe`: ours. Sieve's order with the best split instead of the first stop, token splitting,
and, where the placement has replicas of hot experts, routing them to the least-loaded GPU.

Per GPU, on the slots sorted by token count (descending):
1. evaluate *every* prefix on the GPU and keep the best (with non-negative costs the GPU side grows and
   the PIM side shrinks along the order, so this equals Sieve's first stop; the scan keeps it so for cost
   tables that are not monotone, e.g. measured ones);
2. try splitting the slot just past the boundary (its first k tokens join the GPU) and the last one
   inside it (its last tokens go back to PIM), for every k, and keep a strictly better split. This pays
   where the GPU side is compute-bound (large token counts, fat experts); where the GPU is bound by
   weight reads a partial move costs the whole read and does not help.
With replicas (`sched.replicas`), the same is done once with every token on its home slot and once with
replicated experts routed to their least-loaded GPU; the better plan wins. So it is never worse than
`sieve` on the same homes: Sieve's plan is one of the candidates. Runs in C++
(`heteromoe._C.heteromoe_plan`) with numba / python twins.

Per step (`step_plan`, `sched.step_plan`), before the layers: for one sub-batch and for two interleaved
sub-batches, it plans the first MoE layer's experts per sub-batch (the rule above, with no other work) and
then, per kind of layer, places the dense operations (projections, output projection + router, shared
experts: SMs or PIM; decode attention: split by requests between the SMs and PIM) to minimise the
lane-load estimate of `sched.step_plan.estimate_layer`; it runs the number of sub-batches whose summed
estimate over the layers is smaller. The estimate of one sub-batch is its dependency chain, close to what
runs; that of two is a lane-load bound that misses the stalls of interleaving. So, as Sieve learns PIM
times (§5.1), the policy learns what its step estimate misses: after each step (`observe_step`) it keeps an
exponential average (weight 0.5, the first observation taken whole) of measured / estimated step time per
number of sub-batches and size of the batch (routed pairs, by powers of two), and scales each candidate's
estimate by it (a candidate not yet run takes the other's). With two sub-batches a layer's expert split is planned per sub-batch against Sieve's layer
proxy (the sub-batch's own dense work in T_GPU, attention in T_PIM), which the other sub-batch's work on
the same lanes makes optimistic; there the policy keeps Sieve's first stop (more experts on the SMs than
it, chosen on that proxy, measured slower). Each mechanism can be switched off (`HeteromoePolicy(...)`
flags) for the ablation.
"""
from __future__ import annotations

import numpy as np

from heteromoe.sched.policy import PlacementContext, Policy, Split
from heteromoe.sched.replicas import route_to_replicas
from heteromoe.sched.step_plan import StepPlan, choose_layer


class HeteromoePolicy(Policy):
    name = "heteromoe"
    summary = ("per step: 1 or 2 sub-batches, dense GEMVs on SMs or PIM, attention split by requests; per layer: "
               "best prefix of Sieve's order on the GPU, one expert split, replica routing")
    #: the simulator asks `step_plan` for each step's sub-batches and dense placement
    plans_step = True
    #: plans PIM experts with the observed times of an EMA table where the caller keeps one (as Sieve)
    learns_pim_costs = True

    #: weight of a new observation of measured / estimated step time
    alpha = 0.5

    def __init__(self, sub_batch_choice: bool = True, dense_on_pim: bool = True,
                 attention_split: bool = True) -> None:
        self.sub_batch_choice = sub_batch_choice
        self.dense_on_pim = dense_on_pim
        self.attention_split = attention_split
        self.step_ratio: dict[tuple[int, int], float] = {}  # (sub-batches, size) -> measured / estimated

    @staticmethod
    def expert_rule(step: StepPlan | None) -> str:
        """The fast-path rule of a layer call's routed experts in `step` (its step plan; None: outside a
        planned step): Sieve's first stop when the step runs two sub-batches, else the best split."""
        return "sieve" if step is not None and step.sub_batches > 1 else "heteromoe"

    def _ratio(self, key: tuple[int, int]) -> float:
        """Measured / estimated step time for `key`; unobserved: that of the other number of sub-batches at
        this size (what the estimate misses is taken as common until seen), else 1."""
        if key in self.step_ratio:
            return self.step_ratio[key]
        seen = [v for (subs, size), v in self.step_ratio.items() if size == key[1]]
        return float(np.mean(seen)) if seen else 1.0

    def observe_step(self, plan: StepPlan, step_time_s: float) -> None:
        """Learn what the step estimate of `plan` (made by `step_plan`) missed: `step_time_s` was measured."""
        key, estimate = plan.info.get("key"), plan.info.get("estimate_s", 0.0)
        if key is None or not estimate > 0:
            return
        ratio = step_time_s / estimate
        old = self.step_ratio.get(key)
        self.step_ratio[key] = ratio if old is None else (1 - self.alpha) * old + self.alpha * ratio

    def step_plan(self, candidates: dict, dense_layers: int, placement, num_gpus: int, cost) -> StepPlan:
        """The step's plan; its layer calls are then planned with it (`plan(..., step=)`).

        Args:
            candidates: {sub-batches: (per layer `DenseCosts`, [S, E] first MoE layer's counts per sub-batch,
                [S, G] decode requests)}; layers of one kind share one `DenseCosts` object.
            dense_layers: leading layers without experts.
            placement, num_gpus, cost: as `plan` (the cost model without other work).
        """
        best = None
        for subs, (layers, counts, decode) in sorted(candidates.items()):
            if not self.sub_batch_choice and subs != 1:
                continue
            shape = decode.shape
            e_gpu, e_pim, e_comm = np.zeros(shape), np.zeros(shape), np.zeros(shape)
            candidate = StepPlan(sub_batches=subs)  # what the experts' rule reads of the step
            for s in range(subs):
                p = self.plan(counts[s], placement, num_gpus, cost, step=candidate)
                e_gpu[s], e_pim[s], e_comm[s] = p.per_gpu_t_gpu_s, p.per_gpu_t_pim_s, p.per_gpu_t_comm_s
            zero = np.zeros(shape)
            chosen, total = {}, 0.0
            placements = []
            for i, c in enumerate(layers):
                moe = i >= dense_layers
                k = (id(c), moe)
                if k not in chosen:
                    chosen[k] = choose_layer(c, e_gpu if moe else zero, e_pim if moe else zero,
                                             e_comm if moe else zero, dense_on_pim=self.dense_on_pim,
                                             attention_split=self.attention_split)
                total += chosen[k].time_s
                placements.append(chosen[k].placement)
            key = (subs, int(counts.sum()).bit_length())
            scaled = total * self._ratio(key)
            if best is None or scaled < best[0]:
                best = (scaled, subs, tuple(placements), total, key)
        _, subs, placements, total, key = best
        return StepPlan(sub_batches=subs, layers=placements, info={"estimate_s": total, "key": key})

    def _place(self, ctx: PlacementContext) -> Split:
        rule = self.expert_rule(ctx.step)
        gpu_tokens, t_gpu, t_pim = ctx.fast_path(rule)
        best = Split(gpu_tokens, t_gpu_s=t_gpu, t_pim_s=t_pim)
        if not ctx.placement.has_replicas:
            return best
        routed = route_to_replicas(ctx.counts, ctx.placement)
        comm = ctx.comm_for(routed)
        r_tokens, r_gpu, r_pim = ctx.fast_path(rule, routed, comm)
        if _makespan(comm, r_gpu, r_pim) < _makespan(ctx.comm_s, t_gpu, t_pim):
            return Split(r_tokens, slot_counts=routed, t_comm_s=comm, t_gpu_s=r_gpu, t_pim_s=r_pim)
        return best


def _makespan(comm, t_gpu, t_pim) -> float:
    return float(max(comm.max(), t_gpu.max(), t_pim.max()))


HeteromoePolicy._device_rule = (HeteromoePolicy, "heteromoe")  # the CUDA planner's rule 1 (kernels.DEVICE_RULES)
