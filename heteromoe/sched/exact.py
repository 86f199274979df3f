"""The exact solver: the optimum of the scheduling objective with OR-Tools CP-SAT.

Per GPU g (experts are homed, so GPUs are independent and the step's makespan is the max of the per-GPU
optima), minimize max(T_comm, T_GPU, T_PIM) over how many of each expert's tokens run on the GPU.
Times are scaled to integers (`TIME_UNIT_S`); the plan's reported times come from the float cost model.
`build_model()` is separate from `solve()` (OR-Tools' line_balancing_sat shape).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["TIME_UNIT_S", "GpuModel", "SolveResult", "build_model", "cp_model_module", "solve"]


def cp_model_module():
    """OR-Tools' CP-SAT module, imported on first use (only `exact` and replica placement need it)."""
    try:
        from ortools.sat.python import cp_model
    except ImportError as exc:
        raise ImportError(f"the exact solver and replica placement need OR-Tools ({exc}); remedy: pip install ortools") from None
    return cp_model

#: One integer time unit of the CP-SAT model: 0.1 ns (1 ms = 10^7 units).
TIME_UNIT_S = 1e-10


def _units(seconds) -> np.ndarray:
    return np.rint(np.asarray(seconds, dtype=np.float64) / TIME_UNIT_S).astype(np.int64)


@dataclass
class GpuModel:
    """A built CP-SAT model of one GPU and the variables to read back."""

    model: object  # cp_model.CpModel
    experts: np.ndarray  # [A] expert ids of this GPU with tokens
    gpu_tokens: list  # [A] IntVar: tokens of each expert on the GPU


@dataclass
class SolveResult:
    status: str
    gpu_tokens: np.ndarray | None  # [A] or None when no solution
    objective_s: float
    bound_s: float

    @property
    def gap(self) -> float:
        """Proven relative gap (0 when optimal)."""
        return 0.0 if self.objective_s <= 0 else max(0.0, (self.objective_s - self.bound_s) / self.objective_s)


def build_model(counts: np.ndarray, experts: np.ndarray, read_s: float, flop_tab: np.ndarray, pim_tab: np.ndarray,
                comm_s: float, gpu_fixed_s: float, launch_s: float, pim_fixed_s: float, allow_split: bool = True,
                hint: np.ndarray | None = None) -> GpuModel:
    """CP-SAT model of one GPU's split.

    Args:
        counts: [E] tokens per expert; experts: [A] this GPU's experts with tokens.
        read_s: seconds to stream one expert's weights on the GPU; flop_tab / pim_tab: [n] seconds of GPU
            compute / PIM time for n tokens of one expert.
        allow_split: let one expert's tokens run partly on GPU, partly on PIM.
        hint: [A] GPU tokens of a known plan (the fast path's), given to the solver as a hint.
    """
    cp_model = cp_model_module()
    model = cp_model.CpModel()
    n = counts[experts]
    flop_u, pim_u = _units(flop_tab), _units(pim_tab)
    read_u, launch_u = int(_units(read_s)), int(_units(launch_s))
    horizon = int(_units(comm_s + gpu_fixed_s + pim_fixed_s + launch_s) + read_u * len(experts)
                  + flop_u[n].sum() + pim_u[n].sum() + 1)
    # g[e] = tokens of expert e on the GPU; p[e] = its tokens on PIM
    g = [model.new_int_var(0, int(k), f"g{e}") for e, k in zip(experts, n)]
    p = [model.new_int_var(0, int(k), f"p{e}") for e, k in zip(experts, n)]
    # y[e] = 1 if expert e streams its weights through the SMs (has GPU tokens)
    y = [model.new_bool_var(f"y{e}") for e in experts]
    # fl[e], pt[e] = GPU compute and PIM time of expert e's share, looked up by token count
    fl = [model.new_int_var(0, int(flop_u[k]), f"fl{e}") for e, k in zip(experts, n)]
    pt = [model.new_int_var(0, int(pim_u[k]), f"pt{e}") for e, k in zip(experts, n)]
    # u = 1 if the GPU set is non-empty (one grouped-GEMM launch)
    u = model.new_bool_var("u")
    for i, k in enumerate(n):
        k = int(k)
        # every routed token runs exactly once, on one side
        model.add(g[i] + p[i] == k)
        # an expert's GPU tokens imply its weight read; a weight read implies at least one token
        model.add(g[i] <= k * y[i])
        model.add(g[i] >= 1).only_enforce_if(y[i])
        if not allow_split:
            model.add(g[i] == k).only_enforce_if(y[i])
        model.add_implication(y[i], u)
        model.add_element(g[i], [int(v) for v in flop_u[: k + 1]], fl[i])
        model.add_element(p[i], [int(v) for v in pim_u[: k + 1]], pt[i])
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
    if hint is not None:
        for var, value in zip(g, hint):
            model.add_hint(var, int(value))
    return GpuModel(model=model, experts=experts, gpu_tokens=g)


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
