"""runtime: executes plans for real tensors: an executor composed of dispatch, experts runner and plan source
(`runtime.executor`; docs/runtime.md)."""
from heteromoe.runtime.layer import ExpertLayer, expert_forward
from heteromoe.runtime.report import LayerStats
from heteromoe.runtime.work import WorkSlice

__all__ = ["ExpertLayer", "FusedOptions", "KernelTuning", "LayerStats", "WorkSlice", "expert_forward"]


def __getattr__(name: str):
    """FusedOptions and KernelTuning on first use: they import the kernels package, which importing the
    backend registry (`heteromoe.device` -> `runtime.layer`) should not."""
    if name in ("FusedOptions", "KernelTuning"):
        from heteromoe.runtime import options

        return getattr(options, name)
    raise AttributeError(f"module 'heteromoe.runtime' has no attribute {name!r}")
