"""`exact`: the optimum of the scheduling objective, by OR-Tools CP-SAT (the yardstick for heuristics).

Per GPU it solves `sched.exact` with the `heteromoe` fast-path plan as a hint. It records, in
`plan.info["exact"]`, each GPU's solver status, objective, proven bound and gap. On time-out it keeps the
better of the solver's incumbent and the fast path; on failure it falls back to the fast path; both with a
logged warning.
"""
from __future__ import annotations

import logging

import numpy as np

from heteromoe import _ext
from heteromoe.sched.exact import build_model, solve
from heteromoe.sched.policy import PlacementContext, Policy

logger = logging.getLogger(__name__)


class ExactPolicy(Policy):
    name = "exact"
    summary = "optimum of max(T_comm, T_GPU, T_PIM) per GPU by OR-Tools CP-SAT (token splits allowed)"
    deterministic = False  # a time-limited, multi-threaded search

    def __init__(self, time_limit_s: float = 2.0, allow_split: bool = True, num_workers: int = 2) -> None:
        if time_limit_s <= 0:
            raise ValueError(f"time_limit_s must be > 0, got {time_limit_s}")
        self.time_limit_s = time_limit_s
        self.allow_split = allow_split
        self.num_workers = num_workers
        self.last_info: dict = {}

    def _place(self, ctx: PlacementContext) -> np.ndarray:
        args = ctx.fast_path_args()
        fast, _, _ = _ext.heteromoe_plan(*args)
        _, _, _, read_s, flop_tab, pim_tab, comm, gfix, launch_s, pfix = args
        gpu_tokens = fast.copy()
        per_gpu = []
        for g in range(ctx.num_gpus):
            experts = np.flatnonzero((ctx.slot_gpu == g) & (ctx.slot_counts > 0))
            if experts.size == 0:
                per_gpu.append({"status": "EMPTY", "objective_s": 0.0, "bound_s": 0.0, "gap": 0.0})
                continue
            model = build_model(ctx.slot_counts, experts, read_s, flop_tab, pim_tab, float(comm[g]), float(gfix[g]),
                                launch_s, float(pfix[g]), allow_split=self.allow_split, hint=fast[experts])
            result = solve(model, self.time_limit_s, self.num_workers)
            per_gpu.append({"status": result.status, "objective_s": result.objective_s, "bound_s": result.bound_s,
                            "gap": result.gap})
            if result.gpu_tokens is None:
                logger.warning("exact: CP-SAT returned %s on GPU %d; using the fast path's plan", result.status, g)
                continue
            if result.status != "OPTIMAL":
                logger.warning("exact: CP-SAT hit its %.3g s limit on GPU %d (gap %.2f%%); keeping the better of its "
                               "incumbent and the fast path", self.time_limit_s, g, 100 * result.gap)
                candidate = gpu_tokens.copy()
                candidate[experts] = result.gpu_tokens
                if self._time_of(ctx, candidate, g) >= self._time_of(ctx, gpu_tokens, g):
                    continue
            gpu_tokens[experts] = result.gpu_tokens
        self.last_info = {"exact": per_gpu, "max_gap": max(r["gap"] for r in per_gpu)}
        return gpu_tokens

    def _time_of(self, ctx: PlacementContext, gpu_tokens: np.ndarray, g: int) -> float:
        times = ctx.cost.times(ctx.slot_counts, gpu_tokens, ctx.slot_counts - gpu_tokens, ctx.slot_gpu, ctx.num_gpus,
                               attention_on_pim=self.attention_on_pim, pim_layout=self.pim_layout,
                               comm_s=ctx.comm_s)
        return float(times.per_gpu_s[g])
