"""Policy: loads -> plan, as a template method.

`Policy.plan()` is concrete: it checks the inputs, calls the policy's `_place()` for the GPU token
counts, evaluates the split with the shared cost model (with the policy's attention placement and PIM
layout), and always runs the plan validator.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from heteromoe.cost.model import CostModel
from heteromoe.sched.plan import Plan

__all__ = ["Policy", "PlacementContext", "check_counts"]


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
    """What `_place()` may look at: the loads, the homes, the cost model and the fixed per-GPU times."""

    counts: np.ndarray  # [E]
    expert_gpu: np.ndarray  # [E]
    num_gpus: int
    cost: CostModel
    comm_s: np.ndarray  # [G] all-to-all time (independent of the split)
    gpu_fixed_s: np.ndarray  # [G] GPU work besides the experts
    pim_fixed_s: np.ndarray  # [G] PIM work besides the experts (decode attention where it runs on PIM)

    def fast_path_args(self) -> tuple:
        """Arguments of the `_ext.*_plan` kernels."""
        flop_tab, pim_tab = self.cost.tables(int(self.counts.max()) if self.counts.size else 0)
        return (self.counts, self.expert_gpu, self.num_gpus, self.cost.gpu.read_s_per_expert, flop_tab, pim_tab,
                self.comm_s, self.gpu_fixed_s, self.cost.gpu.launch_s, self.pim_fixed_s)


class Policy(ABC):
    """A GPU/PIM placement rule. Subclasses set `name` and implement `_place()`.

    Class attributes:
        attention_on_pim: decode attention runs on PIM (every policy but `gpu-only`).
        pim_layout: "tp" (experts sharded over all PIM channels, Sieve) or "ep" (expert-parallel, PIMoE).
    """

    name: str = ""
    #: One line for `heteromoe policies` and error messages.
    summary: str = ""
    attention_on_pim: bool = True
    pim_layout: str = "tp"

    def context(self, counts: np.ndarray, expert_gpu: np.ndarray, num_gpus: int, cost: CostModel) -> PlacementContext:
        gpu_fixed, pim_fixed = cost.fixed_s(self.attention_on_pim)
        return PlacementContext(counts=counts, expert_gpu=expert_gpu, num_gpus=num_gpus, cost=cost,
                                comm_s=cost.comm_s(counts, expert_gpu, num_gpus),
                                gpu_fixed_s=np.full(num_gpus, gpu_fixed), pim_fixed_s=np.full(num_gpus, pim_fixed))

    def plan(self, counts: np.ndarray, expert_gpu: np.ndarray, num_gpus: int, cost: CostModel) -> Plan:
        """Make, evaluate and validate the plan of one layer call."""
        counts = check_counts(counts, cost.model.num_experts)
        ctx = self.context(counts, expert_gpu, num_gpus, cost)
        placed = self._place(ctx)
        if isinstance(placed, tuple):  # the fast path also evaluated its split, from the same cost tables
            gpu_tokens, t_gpu, t_pim = placed
        else:
            gpu_tokens = np.asarray(placed, dtype=np.int64)
            times = cost.times(counts, gpu_tokens, counts - gpu_tokens, expert_gpu, num_gpus,
                               attention_on_pim=self.attention_on_pim, pim_layout=self.pim_layout)
            t_gpu, t_pim = times.t_gpu_s, times.t_pim_s
        plan = Plan(policy=self.name, expert_gpu=expert_gpu, gpu_tokens=gpu_tokens, pim_tokens=counts - gpu_tokens,
                    per_gpu_t_comm_s=ctx.comm_s, per_gpu_t_gpu_s=t_gpu, per_gpu_t_pim_s=t_pim,
                    info=getattr(self, "last_info", {}))
        plan.validate(counts)
        return plan

    @abstractmethod
    def _place(self, ctx: PlacementContext):
        """Return [E] tokens of each expert to run on its GPU's SMs (the rest run on PIM).

        A fast-path policy may return `(gpu_tokens [E], t_gpu_s [G], t_pim_s [G])`, its own evaluation of
        the split from the cost model's tables (equal to `CostModel.times` for the "tp" layout).
        """
