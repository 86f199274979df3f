"""Policy: loads -> plan, as a template method.

`Policy.plan()` is concrete: it checks the inputs, calls the policy's `_place()`, evaluates the split with
the shared cost model (with the policy's attention placement and PIM layout) unless the fast path already
did, and always runs the plan validator. Policies work on the placement's slots; only replica-aware
policies (`heteromoe`) move tokens onto replica slots, the others leave them idle.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from heteromoe import _ext
from heteromoe.cost.gpu import gpu_time_s
from heteromoe.cost.model import TABLE_MAX_COUNT, CostModel
from heteromoe.sched.placement import Placement
from heteromoe.sched.plan import Plan
from heteromoe.sched.step_plan import StepPlan

__all__ = ["PlacementContext", "Policy", "Split", "check_counts", "check_origin", "slot_origin"]


def slot_origin(origin: np.ndarray | None, placement: Placement, counts: np.ndarray,
                slot_counts: np.ndarray) -> np.ndarray | None:
    """[G, P] tokens of each slot by origin GPU: each slot takes its share of its expert's origins."""
    if origin is None:
        return None
    if not placement.has_replicas:
        return origin
    expert = placement.phys2log
    share = np.divide(slot_counts, counts[expert], out=np.zeros(slot_counts.shape[0]), where=counts[expert] > 0)
    return origin[:, expert] * share


def check_origin(origin, counts: np.ndarray, num_gpus: int) -> np.ndarray:
    """[G, E] token origins, or ValueError naming what is wrong."""
    arr = np.asarray(origin)
    if arr.shape != (num_gpus, counts.shape[0]):
        raise ValueError(f"token origins must be [gpus={num_gpus}, experts={counts.shape[0]}], got shape {arr.shape}")
    if arr.size and arr.min() < 0:
        raise ValueError("token origins must be >= 0")
    if not np.array_equal(arr.sum(axis=0), counts):
        e = int(np.flatnonzero(arr.sum(axis=0) != counts)[0])
        raise ValueError(f"token origins of expert {e} add up to {arr[:, e].sum()}, not its {counts[e]} tokens")
    return arr


def check_counts(counts, num_experts: int) -> np.ndarray:
    """[E] int64 token counts, or ValueError naming what is wrong."""
    arr = np.asarray(counts)
    if arr.ndim != 1:
        raise ValueError(f"counts must be 1-D [num_experts], got shape {arr.shape}")
    if arr.shape[0] != num_experts:
        raise ValueError(f"counts has {arr.shape[0]} entries but the model has {num_experts} experts")
    if arr.dtype == np.int64:
        if arr.size and arr.min() < 0:
            e = int(np.flatnonzero(arr < 0)[0])
            raise ValueError(f"counts must be >= 0: counts[{e}] = {arr[e].item()!r}")
        return arr
    if arr.dtype == bool or not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise ValueError(f"counts must be integers, got dtype {arr.dtype}")
    if np.issubdtype(arr.dtype, np.floating):
        bad = np.flatnonzero(~np.isfinite(arr) | (arr != np.round(arr)))
        if bad.size:
            e = int(bad[0])
            raise ValueError(f"counts must be integers: counts[{e}] = {arr[e].item()!r}")
    neg = np.flatnonzero(arr < 0)
    if neg.size:
        e = int(neg[0])
        raise ValueError(f"counts must be >= 0: counts[{e}] = {arr[e].item()!r}")
    return arr.astype(np.int64)


@dataclass(frozen=True, eq=False)
class PlacementContext:
    """What `_place()` may look at.

    Attributes:
        counts: [E] tokens per expert.
        placement: the slots.
        slot_counts: [P] tokens per slot with every token on its home slot.
        cost: the cost model.
        comm_s: [G] all-to-all time of `slot_counts`.
        gpu_fixed_s, pim_fixed_s: [G] GPU / PIM work besides the experts (decode attention where it runs).
        origin: [G, E] tokens of each expert by origin GPU, or None (uniform origins).
        step: the plan of the decode step this layer call runs in (`Policy.step_plan` of a policy that plans
            steps), or None: a call outside a planned step.
    """

    counts: np.ndarray
    placement: Placement
    slot_counts: np.ndarray
    cost: CostModel
    comm_s: np.ndarray
    gpu_fixed_s: np.ndarray
    pim_fixed_s: np.ndarray
    origin: np.ndarray | None = None
    step: StepPlan | None = None

    def comm_for(self, slot_counts: np.ndarray) -> np.ndarray:
        """[G] all-to-all seconds with `slot_counts [P]` tokens per slot (origins split pro rata)."""
        return self.cost.comm_s(slot_counts, self.slot_gpu, self.num_gpus,
                                slot_origin(self.origin, self.placement, self.counts, slot_counts))

    @property
    def num_gpus(self) -> int:
        return self.placement.num_gpus

    @property
    def slot_gpu(self) -> np.ndarray:
        return self.placement.slot_gpu

    def fast_path_args(self, slot_counts: np.ndarray | None = None, comm_s: np.ndarray | None = None) -> tuple:
        """Arguments of the `_ext.*_plan` kernels, for `slot_counts` (default: the home loads)."""
        slot_counts = self.slot_counts if slot_counts is None else slot_counts
        flop_tab, pim_tab = self.cost.tables(int(slot_counts.max()) if slot_counts.size else 0)
        return (slot_counts, self.slot_gpu, self.num_gpus, self.cost.gpu.read_s_per_expert, flop_tab, pim_tab,
                self.comm_s if comm_s is None else comm_s, self.gpu_fixed_s, self.cost.gpu.launch_s, self.pim_fixed_s)

    def fast_path(self, rule: str, slot_counts: np.ndarray | None = None,
                  comm_s: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(gpu_tokens [P], t_gpu [G], t_pim [G]) of the fast-path kernel of `rule` ("sieve": `_ext.sieve_plan`,
        "heteromoe": `_ext.heteromoe_plan`) on `slot_counts`, with cost lookups that do not grow with the counts.

        Up to TABLE_MAX_COUNT tokens per slot the kernel gets the cost model's dense per-count tables (the
        plan the kernel always made). Above it:
        - `sieve_plan` looks costs up only at each slot's own count (all or nothing per slot), so it runs on
          the ranks of the distinct counts with tables of their costs: the same plan and times, exactly;
        - `heteromoe_plan` also tries every split point of one slot, so it plans on counts in units of
          `s = ceil(max count / COARSE_TABLE_COUNT)` tokens (rounded up; its split points are multiples of
          s tokens), and the plan's times are then evaluated at the real counts; per GPU, Sieve's exact plan
          replaces it where that is faster (so `heteromoe` stays no worse than `sieve`).
        """
        if rule not in ("sieve", "heteromoe"):
            raise ValueError(f"unknown fast-path rule {rule!r}; known: sieve, heteromoe")
        kernel = getattr(_ext, f"{rule}_plan")
        slot_counts = self.slot_counts if slot_counts is None else slot_counts
        comm_s = self.comm_s if comm_s is None else comm_s
        max_count = int(slot_counts.max()) if slot_counts.size else 0
        if max_count <= TABLE_MAX_COUNT:
            return kernel(*self.fast_path_args(slot_counts, comm_s))
        cost = self.cost
        rest = (self.slot_gpu, self.num_gpus, cost.gpu.read_s_per_expert)
        fixed = (comm_s, self.gpu_fixed_s, cost.gpu.launch_s, self.pim_fixed_s)
        if rule == "sieve":
            values = np.unique(np.concatenate([[0], slot_counts]))  # rank 0 is 0 tokens
            ranks = np.searchsorted(values, slot_counts)
            gpu_ranks, t_gpu, t_pim = kernel(ranks, *rest, cost.gpu_flop_s(values), cost.pim_time_s(values), *fixed)
            return values[gpu_ranks], t_gpu, t_pim
        step = -(-max_count // COARSE_TABLE_COUNT)
        coarse = -(-slot_counts // step)  # ceil: a slot with tokens keeps at least one unit
        grid = np.arange(int(coarse.max()) + 1) * step
        gpu_units, _, _ = kernel(coarse, *rest, cost.gpu_flop_s(grid), cost.pim_time_s(grid), *fixed)
        gpu_tokens = np.where(gpu_units >= coarse, slot_counts, np.minimum(gpu_units * step, slot_counts))
        t_gpu, t_pim = self.evaluate(gpu_tokens, slot_counts)
        sieve_tokens, sieve_gpu, sieve_pim = self.fast_path("sieve", slot_counts, comm_s)
        sieve_better = np.maximum(sieve_gpu, sieve_pim) < np.maximum(t_gpu, t_pim)  # [G]; comm is the same
        if sieve_better.any():
            gpu_tokens = np.where(sieve_better[self.slot_gpu], sieve_tokens, gpu_tokens)
            t_gpu, t_pim = np.where(sieve_better, sieve_gpu, t_gpu), np.where(sieve_better, sieve_pim, t_pim)
        return gpu_tokens, t_gpu, t_pim

    def evaluate(self, gpu_tokens: np.ndarray, slot_counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """([G] T_GPU, [G] T_PIM) of a split, as the fast-path kernels evaluate it (the "tp" PIM layout), from
        cost lookups at the counts themselves."""
        cost, G = self.cost, self.num_gpus
        busy = gpu_tokens > 0
        read = np.bincount(self.slot_gpu, weights=busy * cost.gpu.read_s_per_expert, minlength=G)
        flop = np.bincount(self.slot_gpu, weights=cost.gpu_flop_s(gpu_tokens), minlength=G)
        t_gpu = gpu_time_s(read, flop, np.bincount(self.slot_gpu, weights=busy, minlength=G) > 0, cost.gpu.launch_s,
                           self.gpu_fixed_s)
        t_pim = np.bincount(self.slot_gpu, weights=cost.pim_time_s(slot_counts - gpu_tokens), minlength=G)
        return t_gpu, t_pim + self.pim_fixed_s


#: Entries of the per-count tables `heteromoe_plan` gets above TABLE_MAX_COUNT tokens per slot.
COARSE_TABLE_COUNT = 1 << 14


@dataclass(frozen=True, eq=False)
class Split:
    """What `_place()` returns.

    Attributes:
        gpu_tokens: [P] tokens of each slot on its GPU's SMs (the rest of the slot's tokens run on PIM).
        slot_counts: [P] tokens per slot, when the policy moved tokens onto replicas (default: home loads).
        t_comm_s, t_gpu_s, t_pim_s: [G] the policy's own evaluation, when its fast path made one from the
            cost model's tables (equal to `CostModel.times` for the "tp" layout).
    """

    gpu_tokens: np.ndarray
    slot_counts: np.ndarray | None = None
    t_comm_s: np.ndarray | None = None
    t_gpu_s: np.ndarray | None = None
    t_pim_s: np.ndarray | None = None


class Policy(ABC):
    """A GPU/PIM placement rule. Subclasses set `name` and implement `_place()`.

    Class attributes:
        attention_on_pim: decode attention runs on PIM (every policy but `gpu-only`).
        pim_layout: "tp" (experts sharded over all PIM channels, Sieve) or "ep" (expert-parallel, PIMoE).
        sub_batches: sub-batches a layer runs in flight, so one's attention on PIM overlaps another's experts
            (the step simulator honours it; 1: the layer runs the whole batch at once).
        every_expert_on_gpu: the plan puts every expert on the GPU whatever the counts, so the kernels may run
            a call without a host plan (`runtime.plan_sources.KernelChoice`).
        device_rule: the rule of the CUDA planner inside the routing kernel that makes this policy's plans
            (`kernels.DEVICE_RULES`), or None; a subclass that overrides `_place` plans on the host.
    """

    name: str = ""
    #: One line describing the rule.
    summary: str = ""
    attention_on_pim: bool = True
    pim_layout: str = "tp"
    sub_batches: int = 1
    #: the same inputs always give the same plan (ranks of a process group each plan for themselves)
    deterministic: bool = True
    every_expert_on_gpu: bool = False
    #: (policy class that defines the rule, rule name): see `device_rule`
    _device_rule: tuple[type, str] | None = None

    @property
    def device_rule(self) -> str | None:
        """The CUDA planner's rule for this policy, where `_place` is the one that rule reproduces."""
        if self._device_rule is None:
            return None
        owner, rule = self._device_rule
        return rule if type(self)._place is owner._place else None

    def context(self, counts: np.ndarray, placement: Placement, cost: CostModel,
                origin: np.ndarray | None = None, step: StepPlan | None = None) -> PlacementContext:
        G = placement.num_gpus
        gpu_fixed, pim_fixed = cost.fixed_arrays(G, self.attention_on_pim)
        slot_counts = placement.home_counts(counts)
        comm = cost.comm_s(slot_counts, placement.slot_gpu, G, slot_origin(origin, placement, counts, slot_counts))
        return PlacementContext(counts=counts, placement=placement, slot_counts=slot_counts, cost=cost, comm_s=comm,
                                gpu_fixed_s=gpu_fixed, pim_fixed_s=pim_fixed, origin=origin, step=step)

    def plan(self, counts: np.ndarray, placement, num_gpus: int, cost: CostModel,
             origin: np.ndarray | None = None, step: StepPlan | None = None) -> Plan:
        """Make, evaluate and validate the plan of one layer call.

        Args:
            counts: [E] tokens per expert.
            placement: a Placement, or [E] home GPUs.
            num_gpus: G.
            cost: the layer's cost model.
            origin: optional [G, E] tokens of each expert by origin GPU (default: uniform origins).
            step: the plan of the decode step the call runs in, for a policy that plans steps (`plans_step`:
                its layer rule may depend on the step's choices); None: a call outside a planned step.
        """
        counts = check_counts(counts, cost.model.num_experts)
        if not isinstance(placement, Placement):
            placement = Placement.from_homes(placement, num_gpus)
        if origin is not None and num_gpus > 1:
            origin = check_origin(origin, counts, num_gpus)
        else:
            origin = None
        ctx = self.context(counts, placement, cost, origin, step)
        split = self._place(ctx)
        if not isinstance(split, Split):
            split = Split(gpu_tokens=np.asarray(split, dtype=np.int64))
        slot_counts = ctx.slot_counts if split.slot_counts is None else split.slot_counts
        gpu_tokens = split.gpu_tokens
        pim_tokens = slot_counts - gpu_tokens
        if split.t_gpu_s is None:
            comm = ctx.comm_s if split.slot_counts is None else ctx.comm_for(slot_counts)
            times = cost.times(slot_counts, gpu_tokens, pim_tokens, placement.slot_gpu, num_gpus,
                               attention_on_pim=self.attention_on_pim, pim_layout=self.pim_layout, comm_s=comm)
            t_comm, t_gpu, t_pim = times.t_comm_s, times.t_gpu_s, times.t_pim_s
        else:
            t_comm = ctx.comm_s if split.t_comm_s is None else split.t_comm_s
            t_gpu, t_pim = split.t_gpu_s, split.t_pim_s
        plan = Plan(policy=self.name, slot_gpu=placement.slot_gpu, gpu_tokens=gpu_tokens, pim_tokens=pim_tokens,
                    per_gpu_t_comm_s=t_comm, per_gpu_t_gpu_s=t_gpu, per_gpu_t_pim_s=t_pim,
                    info=getattr(self, "last_info", {}),
                    phys2log=placement.phys2log if placement.has_replicas else None)
        plan.validate(counts)
        return plan

    @abstractmethod
    def _place(self, ctx: PlacementContext) -> Split | np.ndarray:
        """Return a Split, or just [P] tokens of each slot to run on its GPU's SMs (the rest run on PIM)."""
