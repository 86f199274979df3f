"""The fused kernels as an experts runner: the whole layer call in a few device kernels (`runtime.fused`),
in place of the built-in torch and pim-emulator backends, whose results they compute."""
from __future__ import annotations

from typing import ClassVar

import torch

from heteromoe.device import Backend, registry
from heteromoe.runtime.call import CallPlan, LayerCall
from heteromoe.runtime.dispatch import Dispatch
from heteromoe.runtime.fused import FusedLayerPath, unsupported_reason
from heteromoe.runtime.report import Records
from heteromoe.runtime.runners import ExpertsRunner, register_runner
from heteromoe.sched.replicas import ReplicaPlanner

__all__ = ["FusedRunner"]


class FusedRunner(ExpertsRunner):
    """Runs calls on `path` (a FusedLayerPath) with the plan as the kernels take it (`CallPlan.kernel`).

    Args:
        path: the fused kernels and their tuning.
        on_cpu: CPU calls (float32, C++ / numba twins) take this runner too; otherwise only CUDA calls do.
        gpu / pim: the backends it stands in for (their registry classes must be the built-in ones).
    """

    name = "fused"
    needs_host_plan = False
    leaves_counts = True
    #: registry names of the backends whose results the fused kernels compute, per side
    STANDS_IN_FOR: ClassVar[dict[str, tuple[str, ...]]] = {"gpu": ("torch",), "pim": ("pim-emulator", "torch")}

    def __init__(self, path: FusedLayerPath, on_cpu: bool, gpu: Backend, pim: Backend) -> None:
        self.path, self.on_cpu, self.gpu, self.pim = path, bool(on_cpu), gpu, pim

    @classmethod
    def _stands_in_for(cls, side: str, backend: Backend) -> bool:
        """Whether `backend` is exactly the registered class of one of STANDS_IN_FOR[side] (a plug-in,
        even a subclass, keeps its own code)."""
        for name in cls.STANDS_IN_FOR[side]:
            try:
                if type(backend) is type(registry.get(name)):
                    return True
            except Exception:  # noqa: BLE001 - not registered here: not a match
                continue
        return False

    def supports(self, dispatch: Dispatch, policy) -> tuple[bool, str]:
        if not (self._stands_in_for("gpu", self.gpu) and self._stands_in_for("pim", self.pim)):
            return False, (f"backends {self.gpu.name!r}/{self.pim.name!r}: the fused kernels stand in only for the "
                           "built-in torch and pim-emulator backends")
        if not dispatch.local or dispatch.num_gpus != 1:
            return False, "multi-GPU plans and replicas use the generic path"
        return True, ""

    def accepts(self, call: LayerCall) -> str | None:
        layer, hidden, placement = call.layer, call.hidden, call.placement
        if hidden.device.type == "cpu" and not self.on_cpu:
            return "CPU calls take the fused path only when asked (wrap(..., fused=True))"
        if isinstance(placement, ReplicaPlanner) or getattr(placement, "num_slots", layer.num_experts) != layer.num_experts:
            return "multi-GPU plans and replicas use the generic path"
        return unsupported_reason(layer, hidden)

    def run(self, call: LayerCall, planned: CallPlan, dispatch: Dispatch, records: Records) -> torch.Tensor:
        return self.path.run(call.layer, call.hidden, call.top_k_index, call.top_k_weights, **planned.kernel)

    @property
    def last_counts(self) -> torch.Tensor | None:
        """[E] int32 on the device: the last call's tokens per expert."""
        return self.path.last_counts


register_runner("fused", lambda gpu, pim, fallback, path=None, on_cpu=False, **_: FusedRunner(
    path if path is not None else FusedLayerPath(), on_cpu, gpu, pim))
