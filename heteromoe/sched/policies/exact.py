"""`exact`: the optimum of the scheduling objective, by OR-Tools CP-SAT (the yardstick for heuristics).

Per GPU it solves `sched.exact` with the `heteromoe` fast-path plan as a hint. `time_limit_s` bounds the whole
call: the GPUs share it (each GPU's solve gets what is left of it divided by the GPUs still to solve, after
its model is built), and the model's size does not grow with the token counts (`sched.exact`).

It records, in `plan.info["exact"]`, per GPU: `status` (see STATUSES), CP-SAT's own status name (`solver`),
which plan it kept (`used`: "solver" or "fast path"), the grid step of GPU shares (`granularity`), objective,
bound and `gap` (a relative gap to a bound the solver proved, or None where nothing was proved). Summaries:
`plan.info["statuses"]` counts the GPUs of each status, and `plan.info["max_gap"]` is the largest gap, or None
when some GPU has no proved gap. A GPU that did not end "optimal" is logged as a warning.
"""
from __future__ import annotations

import logging
import time

import numpy as np

from heteromoe.sched.exact import build_model, solve
from heteromoe.sched.policy import PlacementContext, Policy

logger = logging.getLogger(__name__)

#: Per-GPU outcomes. optimal: CP-SAT proved its plan optimal (gap 0). feasible: the time limit ended the
#: search; the solver's plan is kept, with the gap to the proved bound. timed-out: the time limit ended the
#: search (or left no time to start it) without a plan better than the fast path's, which is used; its gap to
#: the proved bound where there is one. coarse: the counts were beyond the exact model's size (grid step > 1
#: token); the solver's plan over that grid is kept where better than the fast path's, nothing proved.
#: failed: CP-SAT reported the model invalid or infeasible; the fast path is used. empty: no tokens.
STATUSES = ("optimal", "feasible", "timed-out", "coarse", "failed", "empty")


class ExactPolicy(Policy):
    name = "exact"
    summary = "optimum of max(T_comm, T_GPU, T_PIM) per GPU by OR-Tools CP-SAT (token splits allowed)"
    deterministic = False  # a time-limited, multi-threaded search

    def __init__(self, time_limit_s: float = 2.0, allow_split: bool = True, num_workers: int = 2) -> None:
        if not time_limit_s > 0:
            raise ValueError(f"time_limit_s must be > 0, got {time_limit_s}")
        self.time_limit_s = time_limit_s
        self.allow_split = allow_split
        self.num_workers = num_workers
        self.last_info: dict = {}

    def _place(self, ctx: PlacementContext) -> np.ndarray:
        deadline = time.perf_counter() + self.time_limit_s
        fast, _, _ = ctx.fast_path("heteromoe")
        gpu_fixed, pim_fixed, comm = ctx.gpu_fixed_s, ctx.pim_fixed_s, ctx.comm_s
        cost = ctx.cost
        gpu_tokens = fast.copy()
        busy = [g for g in range(ctx.num_gpus) if ((ctx.slot_gpu == g) & (ctx.slot_counts > 0)).any()]
        per_gpu = []
        for g in range(ctx.num_gpus):
            if g not in busy:
                per_gpu.append({"status": "empty", "solver": None, "used": None, "granularity": 1,
                                "objective_s": 0.0, "bound_s": 0.0, "gap": 0.0})
                continue
            experts = np.flatnonzero((ctx.slot_gpu == g) & (ctx.slot_counts > 0))
            left = len(busy) - busy.index(g)
            model = None
            if deadline - time.perf_counter() > 0:
                model = build_model(ctx.slot_counts, experts, cost.gpu.read_s_per_expert, cost.gpu_flop_s,
                                    cost.pim_time_s, float(comm[g]), float(gpu_fixed[g]), cost.gpu.launch_s,
                                    float(pim_fixed[g]), allow_split=self.allow_split, hint=fast[experts])
            limit = (deadline - time.perf_counter()) / left
            fast_s = self._time_of(ctx, gpu_tokens, g)
            if model is None or limit <= 0:
                info = {"status": "timed-out", "solver": "NOT_RUN", "used": "fast path",
                        "granularity": None if model is None else model.granularity, "objective_s": fast_s,
                        "bound_s": None, "gap": None}
                per_gpu.append(info)
                continue
            result = solve(model, limit, self.num_workers)
            info = {"solver": result.status, "granularity": model.granularity, "bound_s": result.bound_s}
            exact_grid = model.granularity == 1
            better = False
            if result.gpu_tokens is not None:
                candidate = gpu_tokens.copy()
                candidate[experts] = result.gpu_tokens
                candidate_s = self._time_of(ctx, candidate, g)
                better = result.status == "OPTIMAL" or candidate_s <= fast_s
                if better:
                    gpu_tokens = candidate
            if result.status in ("OPTIMAL", "FEASIBLE") and better:
                status = "optimal" if result.status == "OPTIMAL" and exact_grid else (
                    "feasible" if exact_grid else "coarse")
                info.update(status=status, used="solver", objective_s=result.objective_s,
                            gap=result.gap if exact_grid else None)
            elif result.status in ("OPTIMAL", "FEASIBLE", "UNKNOWN"):
                proved = exact_grid and result.bound_s > 0
                status = "timed-out" if exact_grid or result.status != "OPTIMAL" else "coarse"
                info.update(status=status, used="fast path", objective_s=fast_s,
                            gap=max(0.0, (fast_s - result.bound_s) / fast_s) if proved and fast_s > 0 else None)
            else:
                info.update(status="failed", used="fast path", objective_s=fast_s, gap=None)
            if info["status"] != "optimal":
                gap = "none proved" if info["gap"] is None else f"{100 * info['gap']:.2f}%"
                logger.warning("exact: GPU %d %s (CP-SAT %s, grid step %d token(s), gap %s); using the %s plan", g,
                               info["status"], result.status, model.granularity, gap, info["used"])
            per_gpu.append(info)
        statuses = {s: sum(r["status"] == s for r in per_gpu) for s in STATUSES}
        gaps = [r["gap"] for r in per_gpu]
        self.last_info = {"exact": per_gpu, "statuses": {s: n for s, n in statuses.items() if n},
                          "max_gap": None if any(gap is None for gap in gaps) else max(gaps)}
        return gpu_tokens

    def _time_of(self, ctx: PlacementContext, gpu_tokens: np.ndarray, g: int) -> float:
        times = ctx.cost.times(ctx.slot_counts, gpu_tokens, ctx.slot_counts - gpu_tokens, ctx.slot_gpu, ctx.num_gpus,
                               attention_on_pim=self.attention_on_pim, pim_layout=self.pim_layout,
                               comm_s=ctx.comm_s)
        return float(times.per_gpu_s[g])
