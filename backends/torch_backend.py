"""`torch`: experts computed with torch on the device that holds the weights (a GPU if present)."""
from __future__ import annotations

import logging

import torch

from heteromoe.device import Backend
from heteromoe.runtime.layer import ExpertLayer, expert_forward
from heteromoe.runtime.work import WorkSlice

logger = logging.getLogger(__name__)


def probe() -> str | None:
    """Entry point: always available (torch is a dependency)."""
    return "heteromoe_backends.torch_backend.TorchBackend"


class TorchBackend(Backend):
    """GPU side of the plan: one matmul pair per expert of the slice, on the weights' device.

    The fused grouped-GEMM and CUDA-kernel path belongs to the GPU-execution issue.
    """

    name = "torch"
    kind = "gpu" if torch.cuda.is_available() else "cpu"

    def run_experts(self, layer: ExpertLayer, hidden: torch.Tensor, top_k_weights: torch.Tensor,
                    work: WorkSlice) -> torch.Tensor:
        return self._run_per_expert(layer, hidden, top_k_weights, work, lambda e, x: expert_forward(layer, e, x))
