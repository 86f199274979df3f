"""The cost model the scheduler and runtime share: GPU roofline + PIM model + links, per layer call."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from heteromoe.cost.gpu import GpuRoofline
from heteromoe.cost.link import all_to_all_s
from heteromoe.cost.pim import PimCostModel, PimRooflineV1
from heteromoe.spec.hardware import SystemSpec
from heteromoe.spec.model import MoEModelSpec

__all__ = ["CostModel", "StepTimes"]


@dataclass(frozen=True, eq=False)
class StepTimes:
    """Per-GPU times of one MoE layer call under a given split. Each array is [G] seconds."""

    t_comm_s: np.ndarray
    t_gpu_s: np.ndarray
    t_pim_s: np.ndarray

    @property
    def per_gpu_s(self) -> np.ndarray:
        """[G] max(T_comm, T_GPU, T_PIM): the parts overlap, the slowest one bounds the GPU."""
        return np.maximum(np.maximum(self.t_comm_s, self.t_gpu_s), self.t_pim_s)


class CostModel:
    """Costs of one MoE layer on one system: what the policies optimize and the runtime reports.

    Args:
        system: the hardware (must have a GPU).
        model: the expert shapes.
        pim_model: a PIM cost model; defaults to the v1 roofline.
        gpu_other_s: other GPU work overlapping the experts in the step (per GPU), default 0.
        pim_fixed_s: fixed PIM work in the step, e.g. decode attention on PIM (per GPU), default 0.
    """

    def __init__(self, system: SystemSpec, model: MoEModelSpec, pim_model: PimCostModel | None = None,
                 gpu_other_s: float = 0.0, pim_fixed_s: float = 0.0) -> None:
        self.system = system
        self.model = model
        self.gpu = GpuRoofline(system.require_gpu(), model)
        self.pim = pim_model if pim_model is not None else PimRooflineV1(system.pim, model)
        if gpu_other_s < 0 or pim_fixed_s < 0:
            raise ValueError(f"gpu_other_s and pim_fixed_s must be >= 0, got {gpu_other_s}, {pim_fixed_s}")
        self.gpu_other_s = float(gpu_other_s)
        self.pim_fixed_s = float(pim_fixed_s)

    def comm_s(self, counts: np.ndarray, expert_gpu: np.ndarray, num_gpus: int) -> np.ndarray:
        return all_to_all_s(counts, expert_gpu, num_gpus, self.system.link, self.model)

    def times(self, counts: np.ndarray, gpu_tokens: np.ndarray, pim_tokens: np.ndarray,
              expert_gpu: np.ndarray, num_gpus: int) -> StepTimes:
        """Evaluate a split: `gpu_tokens [E]` on the SMs, `pim_tokens [E]` in PIM, experts homed on `expert_gpu`."""
        read = self.gpu.read_s(gpu_tokens)
        flop = self.gpu.flop_s(gpu_tokens)
        pim = self.pim.times_s(pim_tokens)
        read_g = np.bincount(expert_gpu, weights=read, minlength=num_gpus)
        flop_g = np.bincount(expert_gpu, weights=flop, minlength=num_gpus)
        busy_g = np.bincount(expert_gpu, weights=(np.asarray(gpu_tokens) > 0).astype(np.float64), minlength=num_gpus)
        t_gpu = np.maximum(read_g, flop_g) + np.where(busy_g > 0, self.gpu.launch_s, 0.0) + self.gpu_other_s
        t_pim = np.bincount(expert_gpu, weights=pim, minlength=num_gpus) + self.pim_fixed_s
        return StepTimes(t_comm_s=self.comm_s(counts, expert_gpu, num_gpus), t_gpu_s=t_gpu, t_pim_s=t_pim)
