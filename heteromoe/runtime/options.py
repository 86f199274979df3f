"""FusedOptions: the fused kernel path's options of a wrapped model, in one place (`wrap(..., fused=...)`)."""
from __future__ import annotations

from dataclasses import dataclass

__all__ = ["FusedOptions"]


@dataclass(frozen=True)
class FusedOptions:
    """Whether and how the fused kernels (`runtime.fused`) run a wrapped model's layer calls.

    Args:
        enabled: None (default): on for CUDA calls; True: also on CPU (float32, C++ / numba kernels);
            False: off (every call on the backends).
        gemv_max_tokens: with policy `gpu-only`, experts with at most this many tokens take the GEMV kernel
            and the rest the grouped GEMM (batches above the kernels' small-batch sizes).
        plan_ahead: on CUDA, plan each layer call from the layer's previous call's counts (copied to the host
            without waiting), so the host never stalls the device (`runtime.plan_sources.AheadPlans`); off:
            every call's plan is made from its own counts, after one device-to-host copy.
        plan_on_device: on CUDA with a policy the device planner runs (`kernels.DEVICE_RULES`: `sieve`,
            `heteromoe`) on one GPU, plan inside the routing kernel from the call's own counts (the same rule
            and doubles as the host planner): no host plan, no wait, capturable in a CUDA graph (use it
            there); statistics are settled lazily. Off by default: not knowing the plan, the host must
            launch the grouped side every call, which costs more in eager mode than the host plan's copy
            when the plan puts every expert on PIM (small batches). Takes precedence over plan_ahead.
    """

    enabled: bool | None = None
    gemv_max_tokens: int = 2
    plan_ahead: bool = False
    plan_on_device: bool = False

    def __post_init__(self) -> None:
        if self.enabled not in (None, True, False):
            raise ValueError(f"FusedOptions.enabled must be None, True or False, got {self.enabled!r}")

    @classmethod
    def of(cls, fused: bool | None | FusedOptions, **overrides) -> FusedOptions:
        """Options from `wrap`'s `fused=` (a bool, None or FusedOptions) and its shorthand keywords
        (`gemv_max_tokens`, `plan_ahead`, `plan_on_device`; None: not given)."""
        options = fused if isinstance(fused, cls) else cls(enabled=fused)
        given = {k: v for k, v in overrides.items() if v is not None}
        if given and isinstance(fused, cls):
            raise ValueError(f"pass {sorted(given)} inside FusedOptions(...), not beside fused=FusedOptions(...)")
        return cls(**{**options.__dict__, **given}) if given else options
