"""Sweeps over policies and batch sizes: step times, throughput per GPU, interactivity, Pareto frontiers."""
from __future__ import annotations

from collections.abc import Callable, Iterable

import numpy as np

from heteromoe.sim.options import StepOptions
from heteromoe.sim.step import StepSimulator
from heteromoe.sim.workload import workload_for
from heteromoe.spec.presets import models

__all__ = ["pareto_frontier", "prefill_for", "sweep"]


def prefill_for(batch: int, prefill) -> tuple[int, int]:
    """(requests, tokens each) of colocated prefill at `batch`: `prefill` is one (requests, tokens) pair, or
    a function of the batch; never more requests than the batch has."""
    p_req, p_tok = prefill(batch) if callable(prefill) else prefill
    return (min(int(p_req), batch), int(p_tok)) if p_req and p_tok else (0, 0)


def sweep(model, system, gpus: int, policies: Iterable[str], batches: Iterable[int], *, context: int = 2048,
          steps: int = 3, trace=None, seed: int = 0, placement=None,
          progress: Callable[[str, int], None] | None = None, options: StepOptions | None = None,
          prefill=(0, 0)) -> list[dict]:
    """One record per (policy, batch): mean step time over `steps` steps of the same routing.

    Every policy sees the same routing for a given batch size (generated once per batch). With `prefill`
    (see `prefill_for`), that many of the batch's requests are in prefill: their prompt tokens join the
    step. Each record also says whether the setup fits in memory and the planner's mean estimate error.
    A planner that learns PIM costs (Sieve's EMA table) first sees the first step once, unmeasured.
    """
    spec = models.get(model)
    workload = workload_for(spec, trace, seed)
    batches = list(batches)
    pre = {b: prefill_for(b, prefill) for b in batches}
    routing = {b: workload.steps(b - pre[b][0] + pre[b][0] * pre[b][1], steps) for b in batches}
    records = []
    for policy in policies:
        for batch in batches:
            sim = StepSimulator(spec, system, gpus, policy, context, placement=placement, record=False,
                                options=options, prefill=pre[batch])
            if sim.ema is not None:  # a learning planner's table converges within a few steps (Sieve §5.1)
                sim.run(routing[batch][0])
            results = [sim.run(step) for step in routing[batch]]
            step_time = float(np.mean([r.step_time_s for r in results]))
            memory = results[0].memory
            records.append({"policy": sim.policy.name, "batch": batch, "gpus": gpus, "step_time_s": step_time,
                            "throughput_per_gpu": batch / step_time / gpus, "interactivity": 1.0 / step_time,
                            "model": spec.name, "system": sim.system.name, "context": context,
                            "prefill": list(pre[batch]), "sub_batches": float(np.mean([r.sub_batches for r in results])),
                            "estimate_error": float(np.mean([r.estimate_error for r in results])),
                            "fits": memory.fits, "memory_gb": round(memory.need / 1e9, 2)})
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
