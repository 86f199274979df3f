"""Replicas of hot experts (EPLB-style redundant experts): where they live, and which one serves a call.

Two loops, as in serving systems:
- the slow loop (`ReplicaPlanner`, every `replan_every` calls) keeps an exponential moving average of
  each expert's load and chooses, with OR-Tools CP-SAT, which experts get a replica on which GPU
  (`slots_per_gpu` extra slots each) so that the expected per-GPU load is balanced;
- the fast path (`route_to_replicas`, every call) sends each replicated expert's tokens, whole, to the
  slot whose GPU is least loaded so far, hottest expert first. Whole, because a GPU that streams an
  expert's weights pays the full read however few of its tokens it runs.
"""
from __future__ import annotations

import logging

import numpy as np

from heteromoe import _ext
from heteromoe.sched.placement import Placement

logger = logging.getLogger(__name__)

__all__ = ["ReplicaPlanner", "place_replicas", "route_to_replicas"]


def route_to_replicas(counts: np.ndarray, placement: Placement) -> np.ndarray:
    """[P] slot loads: each replicated expert's tokens go, whole, to its least-loaded GPU's slot.

    Hottest replicated expert first; load = tokens already on the GPU; ties go to the home slot, then to
    the lower replica slot. Runs in the C++ fast path (`_ext.route_to_replicas`) or its twins.

    Args:
        counts: [E] tokens per expert.
        placement: slots (home slots first).
    Returns:
        slot_counts [P]; without replicas, `counts` itself.
    """
    if not placement.has_replicas:
        return counts
    return _ext.route_to_replicas(counts, placement.phys2log, placement.slot_gpu, placement.num_gpus)


def place_replicas(expected_load: np.ndarray, home_gpu: np.ndarray, num_gpus: int, slots_per_gpu: int,
                   candidates: int | None = None, time_limit_s: float = 1.0) -> Placement:
    """Choose replica slots that balance the expected per-GPU load (CP-SAT).

    Args:
        expected_load: [E] expected tokens per expert and call (moving average).
        home_gpu: [E] home GPU of each expert.
        slots_per_gpu: extra slots on every GPU.
        candidates: consider the this many hottest experts for replicas (default 2 * G * slots_per_gpu).
    Returns:
        A Placement with the home slots and the chosen replicas.
    """
    E = expected_load.shape[0]
    homes = Placement.from_homes(home_gpu, num_gpus)
    if slots_per_gpu <= 0 or num_gpus == 1:
        return homes
    k = min(E, candidates or 2 * num_gpus * slots_per_gpu)
    hot = np.argsort(-expected_load, kind="stable")[:k]
    scale = 1000.0 / max(float(expected_load.max()), 1e-12)  # integer loads for CP-SAT
    w = np.rint(expected_load * scale).astype(np.int64)
    fixed = np.bincount(home_gpu, weights=np.where(np.isin(np.arange(E), hot), 0, w), minlength=num_gpus)

    from heteromoe.sched.exact import cp_model_module

    cp_model = cp_model_module()
    model = cp_model.CpModel()
    # r[e, g] = 1 if expert e gets a replica on GPU g (never its home)
    r = {(int(e), g): model.new_bool_var(f"r{e}_{g}") for e in hot for g in range(num_gpus) if g != home_gpu[e]}
    # x[e, g] = share (in percent) of expert e's load served on GPU g
    x = {(int(e), g): model.new_int_var(0, 100, f"x{e}_{g}") for e in hot for g in range(num_gpus)}
    span = model.new_int_var(0, int(w.sum()) * 100 + int(fixed.sum()) * 100 + 1, "span")
    for e in hot:
        e = int(e)
        # every expert's load is served in full
        model.add(sum(x[e, g] for g in range(num_gpus)) == 100)
        for g in range(num_gpus):
            # only a GPU that holds a copy serves it
            if g != home_gpu[e]:
                model.add(x[e, g] <= 100 * r[e, g])
    for g in range(num_gpus):
        # a GPU holds at most slots_per_gpu replicas
        model.add(sum(r[e, h] for (e, h) in r if h == g) <= slots_per_gpu)
        # the busiest GPU's expected load is what we minimize
        model.add(span >= 100 * int(fixed[g]) + sum(int(w[e]) * x[e, g] for e in map(int, hot)))
    # prefer fewer replicas among equally balanced solutions
    model.minimize(span * (len(r) + 1) + sum(r.values()))
    solver = cp_model.CpSolver()
    solver.parameters.max_time_in_seconds = time_limit_s
    solver.parameters.num_workers = 1  # deterministic: the same loads give the same replicas on every run
    status = solver.solve(model)
    if status not in (cp_model.OPTIMAL, cp_model.FEASIBLE):
        logger.warning("replica placement: CP-SAT returned %s; keeping no replicas", solver.status_name(status))
        return homes
    extra = sorted((e, g) for (e, g), var in r.items() if solver.value(var))
    phys2log = np.concatenate([np.arange(E), np.array([e for e, _ in extra], dtype=np.int64)])
    slot_gpu = np.concatenate([home_gpu, np.array([g for _, g in extra], dtype=np.int64)])
    return Placement(phys2log, slot_gpu, num_gpus)


class ReplicaPlanner:
    """The slow loop: an EMA of loads per call, and a new replica placement every `replan_every` calls."""

    def __init__(self, home_gpu: np.ndarray, num_gpus: int, slots_per_gpu: int, replan_every: int = 64,
                 ema_alpha: float = 0.1, time_limit_s: float = 1.0) -> None:
        if slots_per_gpu < 0 or replan_every < 1 or not 0 < ema_alpha <= 1:
            raise ValueError(f"need slots_per_gpu >= 0, replan_every >= 1, 0 < ema_alpha <= 1; got "
                             f"{slots_per_gpu}, {replan_every}, {ema_alpha}")
        self.home_gpu = np.asarray(home_gpu, dtype=np.int64)
        self.num_gpus = num_gpus
        self.slots_per_gpu = slots_per_gpu
        self.replan_every = replan_every
        self.ema_alpha = ema_alpha
        self.time_limit_s = time_limit_s
        self.ema: np.ndarray | None = None
        self.calls = 0
        self.replans = 0
        self.placement = Placement.from_homes(self.home_gpu, num_gpus)

    def observe(self, counts: np.ndarray) -> Placement:
        """Record one call's loads; return the placement to plan this call with."""
        counts = np.asarray(counts, dtype=np.float64)
        self.ema = counts.copy() if self.ema is None else (1 - self.ema_alpha) * self.ema + self.ema_alpha * counts
        self.calls += 1
        if self.slots_per_gpu and self.calls % self.replan_every == 0:
            self.placement = place_replicas(self.ema, self.home_gpu, self.num_gpus, self.slots_per_gpu,
                                            time_limit_s=self.time_limit_s)
            self.replans += 1
        return self.placement
