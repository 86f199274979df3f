"""`pim-emulator`: the PIM side of the plan, emulated.

PIM hardware is not on sale, so this backend computes the exact expert outputs with torch on the device
that holds the weights (PIM computes in place, where the weights live) and reports how long HBM-PIM
would take from the cost model (`estimate_time`). A wrapped model therefore generates the same text,
while the report carries the emulated PIM times.
"""
from __future__ import annotations

import torch

from heteromoe.runtime.layer import ExpertLayer
from heteromoe.runtime.work import WorkSlice
from heteromoe_backends.torch_backend import TorchBackend


def probe() -> str | None:
    """Entry point: always available (pure torch)."""
    return "heteromoe_backends.pim_emulator.PimEmulatorBackend"


class PimEmulatorBackend(TorchBackend):
    """Exact outputs computed like the `torch` backend (PIM's serialized GEMVs are, numerically, the rows of
    one matmul); the time it reports is the PIM cost model's."""

    name = "pim-emulator"
    kind = "pim"

    def __init__(self) -> None:
        super().__init__()
        self.calls = 0
        self.pairs = 0

    def run_experts(self, layer: ExpertLayer, hidden: torch.Tensor, top_k_weights: torch.Tensor,
                    work: WorkSlice) -> torch.Tensor:
        self.calls += 1
        self.pairs += work.num_pairs
        return super().run_experts(layer, hidden, top_k_weights, work)
