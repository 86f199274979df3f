"""sim: whole decode steps on N GPUs with PIM, timelines, sweeps and Pareto frontiers."""
from heteromoe.sim.memory import MemoryCheck, memory_check
from heteromoe.sim.options import ABLATIONS, StepOptions
from heteromoe.sim.prefill import chunked_prefill, sieve_prefill, sieve_prefill_requests
from heteromoe.sim.step import StepResult, StepSimulator
from heteromoe.sim.sweep import pareto_frontier, sweep
from heteromoe.sim.timeline import Timeline
from heteromoe.sim.workload import SyntheticWorkload, TraceWorkload

__all__ = [
           "ABLATIONS",
           "MemoryCheck",
           "StepOptions",
           "StepResult",
           "StepSimulator",
           "SyntheticWorkload",
           "Timeline",
           "TraceWorkload",
           "chunked_prefill",
           "memory_check",
           "pareto_frontier",
           "sieve_prefill",
           "sieve_prefill_requests",
           "sweep",
]
