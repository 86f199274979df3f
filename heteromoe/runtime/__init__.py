"""runtime: executes plans on backends for real tensors."""
from heteromoe.runtime.layer import ExpertLayer, expert_forward
from heteromoe.runtime.report import LayerStats
from heteromoe.runtime.work import WorkSlice

__all__ = ["ExpertLayer", "LayerStats", "WorkSlice", "expert_forward"]
