"""sim: whole decode steps on N GPUs with PIM, timelines, sweeps and Pareto frontiers."""
from heteromoe.sim.step import StepResult, StepSimulator
from heteromoe.sim.sweep import pareto_frontier, sweep
from heteromoe.sim.timeline import Timeline
from heteromoe.sim.workload import SyntheticWorkload, TraceWorkload

__all__ = [
           "StepResult",
           "StepSimulator",
           "SyntheticWorkload",
           "Timeline",
           "TraceWorkload",
           "pareto_frontier",
           "sweep",
]
