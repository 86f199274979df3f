"""Sweeps over policies and batch sizes: step times, throughput per GPU, interactivity, Pareto frontiers."""
from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from heteromoe.sim.step import StepSimulator
from heteromoe.sim.workload import workload_for
from heteromoe.spec.presets import models

__all__ = ["pareto_frontier", "sweep"]


def sweep(model, system, gpus: int, policies: Iterable[str], batches: Iterable[int], *, context: int = 2048,
          steps: int = 3, trace=None, seed: int = 0, placement=None,
          progress: Callable[[str, int], None] | None = None) -> list[dict]:
    """One record per (policy, batch): mean decode step time over `steps` steps of the same routing.

    Every policy sees the same routing for a given batch size (generated once per batch).
    """
    spec = models.get(model)
    workload = workload_for(spec, trace, seed)
    batches = list(batches)
    routing = {b: workload.steps(b, steps) for b in batches}
    records = []
    for policy in policies:
        sim = StepSimulator(spec, system, gpus, policy, context, placement=placement, record=False)
        for batch in batches:
            times = [sim.run(step).step_time_s for step in routing[batch]]
            step_time = float(np.mean(times))
            records.append({"policy": sim.policy.name, "batch": batch, "gpus": gpus, "step_time_s": step_time,
                            "throughput_per_gpu": batch / step_time / gpus, "interactivity": 1.0 / step_time,
                            "model": spec.name, "system": sim.system.name, "context": context})
            if progress is not None:
                progress(sim.policy.name, batch)
    return records


def pareto_frontier(records: list[dict]) -> dict[str, list[dict]]:
    """Per policy, the records not dominated in (throughput_per_gpu, interactivity), by throughput."""
    out: dict[str, list[dict]] = {}
    for policy in sorted({r["policy"] for r in records}):
        points = sorted((r for r in records if r["policy"] == policy), key=lambda r: -r["throughput_per_gpu"])
        frontier, best_inter = [], -1.0
        for r in points:
            if r["interactivity"] > best_inter:
                frontier.append(r)
                best_inter = r["interactivity"]
        out[policy] = sorted(frontier, key=lambda r: r["throughput_per_gpu"])
    return out
