"""runtime: executes plans for real tensors: an executor composed of dispatch, experts runner and plan source
(`runtime.executor`; docs/runtime.md)."""
from heteromoe.runtime.layer import ExpertLayer, expert_forward
from heteromoe.runtime.options import FusedOptions, KernelTuning
from heteromoe.runtime.report import LayerStats
from heteromoe.runtime.work import WorkSlice

__all__ = ["ExpertLayer", "FusedOptions", "KernelTuning", "LayerStats", "WorkSlice", "expert_forward"]
