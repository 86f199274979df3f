"""The exact solver: the optimum of the scheduling objective with OR-Tools CP-SAT.

Per GPU g (experts are homed, so GPUs are independent and the step's makespan is the max of the per-GPU
optima), minimize max(T_comm, T_GPU, T_PIM) over how many of each expert's tokens run on the GPU.
Times are scaled to integers (`TIME_UNIT_S`); the plan's reported times come from the float cost model.
`build_model()` is separate from `solve()` (OR-Tools' line_balancing_sat shape).

The model's size does not depend on the token counts: each expert's GPU share is chosen from a grid of
at most `m_e + 1` values (`min(j s, n_e)`, j = 0..m_e) by element constraints, and the grids of one GPU hold
at most `max(MODEL_ENTRIES, 4 A)` values in all (A: its experts with tokens). Where the counts fit, s = 1 and
the model is exact; above, s > 1 tokens (`GpuModel.granularity`): the solver then optimizes over shares in
multiples of s, and proves nothing about the finer splits.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from heteromoe.cost.gpu import gpu_time_s

__all__ = ["MODEL_ENTRIES", "TIME_UNIT_S", "GpuModel", "SolveResult", "build_model", "cp_model_module", "granularity",
           "solve"]


def cp_model_module():
    """OR-Tools' CP-SAT module, imported on first use (only `exact` and replica placement need it)."""
    try:
        from ortools.sat.python import cp_model
    except ImportError as exc:
        raise ImportError(f"the exact solver and replica placement need OR-Tools ({exc}); remedy: pip install ortools") from None
    return cp_model

#: One integer time unit of the CP-SAT model: 0.1 ns (1 ms = 10^7 units).
TIME_UNIT_S = 1e-10

#: Grid values (GPU-share choices) per GPU model, over all its experts, before the floor of 4 per expert.
MODEL_ENTRIES = 4096


def _units(seconds) -> np.ndarray:
    return np.rint(np.asarray(seconds, dtype=np.float64) / TIME_UNIT_S).astype(np.int64)


@dataclass
class GpuModel:
    """A built CP-SAT model of one GPU and the variables to read back."""

    model: object  # cp_model.CpModel
    experts: np.ndarray  # [A] expert ids of this GPU with tokens
    gpu_tokens: list  # [A] IntVar: tokens of each expert on the GPU
    granularity: int = 1  # s: GPU shares are multiples of s tokens (or all of an expert's tokens)
    entries: int = 0  # grid values in the model, over all experts


@dataclass
class SolveResult:
    status: str  # CP-SAT's status name (OPTIMAL, FEASIBLE, UNKNOWN, INFEASIBLE, MODEL_INVALID)
    gpu_tokens: np.ndarray | None  # [A] or None when no solution
    objective_s: float
    bound_s: float

    @property
    def gap(self) -> float | None:
        """Relative gap between the solution and the bound CP-SAT proved (0 when optimal); None without a
        solution."""
        if self.gpu_tokens is None:
            return None
        if self.status == "OPTIMAL" or self.objective_s <= 0:
            return 0.0
        return max(0.0, (self.objective_s - self.bound_s) / self.objective_s)


def granularity(counts: np.ndarray, max_entries: int = MODEL_ENTRIES) -> int:
    """s: the smallest step of GPU shares that keeps the grids of experts with `counts [A]` tokens within
    `max(max_entries, 4 A)` values (each expert's grid has ceil(n / s) + 1 of them)."""
    counts = np.asarray(counts, dtype=np.int64)
    budget = max(int(max_entries), 4 * counts.size)
    if int(counts.sum()) + counts.size <= budget:
        return 1
    # sum(ceil(n / s) + 1) <= sum(n) / s + 2 A <= budget
    return max(1, -(-int(counts.sum()) // (budget - 2 * counts.size)))


def build_model(counts: np.ndarray, experts: np.ndarray, read_s: float, flop_s: Callable[[np.ndarray], np.ndarray],
                pim_s: Callable[[np.ndarray], np.ndarray], comm_s: float, gpu_fixed_s: float, launch_s: float,
                pim_fixed_s: float, allow_split: bool = True, hint: np.ndarray | None = None,
                max_entries: int = MODEL_ENTRIES) -> GpuModel:
    """CP-SAT model of one GPU's split, of a size set by the number of experts, not by their token counts.

    Args:
        counts: [E] tokens per expert; experts: [A] this GPU's experts with tokens.
        read_s: seconds to stream one expert's weights on the GPU; flop_s / pim_s: seconds of GPU compute /
            PIM time of one expert, for each entry of an array of token counts (`CostModel.gpu_flop_s`,
            `CostModel.pim_time_s`).
        allow_split: let one expert's tokens run partly on GPU, partly on PIM.
        hint: [A] GPU tokens of a known plan (the fast path's), given to the solver as a hint.
        max_entries: grid values of the model (see `granularity`).
    """
    cp_model = cp_model_module()
    model = cp_model.CpModel()
    n = np.asarray(counts, dtype=np.int64)[experts]
    step = granularity(n, max_entries) if allow_split else 1
    units = -(-n // step) if allow_split else np.minimum(n, 1)  # m_e: the grid is j = 0..m_e
    # every grid's token counts at once: min(j s, n_e), or (0, n_e) without splits
    bounds = np.concatenate([[0], np.cumsum(units + 1)])
    j = np.arange(bounds[-1]) - np.repeat(bounds[:-1], units + 1)
    grid = np.minimum(j * step, np.repeat(n, units + 1)) if allow_split else j * np.repeat(n, units + 1)
    flop_u, pim_u = _units(flop_s(grid)), _units(pim_s(np.repeat(n, units + 1) - grid))
    read_u, launch_u = int(_units(read_s)), int(_units(launch_s))
    fl_max = [int(flop_u[lo:hi].max()) for lo, hi in zip(bounds[:-1], bounds[1:])]
    pt_max = [int(pim_u[lo:hi].max()) for lo, hi in zip(bounds[:-1], bounds[1:])]
    horizon = int(_units(comm_s + gpu_fixed_s + pim_fixed_s + launch_s) + read_u * len(experts)
                  + sum(fl_max) + sum(pt_max) + 1)
    # q[e] = grid index of expert e's GPU share; g[e] = its tokens on the GPU
    q = [model.new_int_var(0, int(m), f"q{e}") for e, m in zip(experts, units)]
    g = [model.new_int_var(0, int(k), f"g{e}") for e, k in zip(experts, n)]
    # y[e] = 1 if expert e streams its weights through the SMs (has GPU tokens)
    y = [model.new_bool_var(f"y{e}") for e in experts]
    # fl[e], pt[e] = GPU compute and PIM time of expert e's share, looked up on its grid
    fl = [model.new_int_var(0, hi, f"fl{e}") for e, hi in zip(experts, fl_max)]
    pt = [model.new_int_var(0, hi, f"pt{e}") for e, hi in zip(experts, pt_max)]
    # u = 1 if the GPU set is non-empty (one grouped-GEMM launch)
    u = model.new_bool_var("u")
    for i, k in enumerate(n):
        lo, hi = int(bounds[i]), int(bounds[i + 1])
        # the share and its costs, by grid index: every routed token runs exactly once, on one side
        model.add_element(q[i], [int(v) for v in grid[lo:hi]], g[i])
        model.add_element(q[i], [int(v) for v in flop_u[lo:hi]], fl[i])
        model.add_element(q[i], [int(v) for v in pim_u[lo:hi]], pt[i])
        # an expert's GPU tokens imply its weight read; a weight read implies at least one token
        model.add(g[i] <= int(k) * y[i])
        model.add(g[i] >= 1).only_enforce_if(y[i])
        model.add_implication(y[i], u)
    t_gpu = model.new_int_var(0, horizon, "t_gpu")
    t = model.new_int_var(0, horizon, "t")
    # T_GPU = max(weights streamed, tensor work) + launch if any + other GPU work
    model.add(t_gpu >= read_u * sum(y) + launch_u * u + int(_units(gpu_fixed_s)))
    model.add(t_gpu >= sum(fl) + launch_u * u + int(_units(gpu_fixed_s)))
    # the step's time on this GPU bounds comm, GPU and PIM
    model.add(t >= int(_units(comm_s)))
    model.add(t >= t_gpu)
    model.add(t >= sum(pt) + int(_units(pim_fixed_s)))
    model.minimize(t)
    if hint is not None:  # a complete hint (every variable), so the search starts from a solution
        hint = np.asarray(hint, dtype=np.int64)
        on_grid = np.where(hint >= n, units, hint // step) if allow_split else (hint > 0).astype(np.int64)
        at = bounds[:-1] + on_grid
        h_g, h_fl, h_pt = grid[at], flop_u[at], pim_u[at]
        h_y = h_g > 0
        h_u = int(h_y.any())
        h_tgpu = int(gpu_time_s(read_u * int(h_y.sum()), int(h_fl.sum()), h_u > 0, launch_u, int(_units(gpu_fixed_s))))
        h_t = max(int(_units(comm_s)), h_tgpu, int(h_pt.sum()) + int(_units(pim_fixed_s)))
        for variables, values in ((q, on_grid), (g, h_g), (y, h_y), (fl, h_fl), (pt, h_pt)):
            for var, value in zip(variables, values):
                model.add_hint(var, int(value))
        model.add_hint(u, h_u)
        model.add_hint(t_gpu, h_tgpu)
        model.add_hint(t, h_t)
    return GpuModel(model=model, experts=experts, gpu_tokens=g, granularity=int(step), entries=int(bounds[-1]))


def solve(gpu_model: GpuModel, time_limit_s: float = 1.0, num_workers: int = 2) -> SolveResult:
    """Solve with a time limit; report status, objective and proven bound (seconds)."""
    cp_model = cp_model_module()
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = float(time_limit_s)
    solver.parameters.num_workers = int(num_workers)
    status = solver.solve(gpu_model.model)
    name = solver.status_name(status)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        return SolveResult(name, None, float("inf"), float(solver.best_objective_bound) * TIME_UNIT_S)
    tokens = np.array([solver.value(v) for v in gpu_model.gpu_tokens], dtype=np.int64)
    return SolveResult(name, tokens, solver.objective_value * TIME_UNIT_S, solver.best_objective_bound * TIME_UNIT_S)
