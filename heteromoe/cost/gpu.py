"""GPU cost model v1: the roofline (docs/design.md, section 4).

T_GPU(G) = max(sum_G W_e / (eta_bw BW_ext), sum_G 6 n_e d f / (eta_fl F_gpu)) + t_launch (+ fixed)

`gpu_time_s` is that rule, the one every Python planner and evaluator uses; the fast-path twins (C++ `_C`,
numba / python `_fallback`, the CUDA planner) evaluate the same expression and are tested bit-identical to
`CostModel.times` (tests/test_ext.py). A measured cost table (`cost.gpu_table`) plugs in behind the same
two per-expert arrays.
"""
from __future__ import annotations

import numpy as np

from heteromoe.spec.hardware import GpuSpec
from heteromoe.spec.model import MoEModelSpec

__all__ = ["GpuRoofline", "gpu_time_s"]


def gpu_time_s(read_s, flop_s, busy, launch_s, fixed_s=0.0):
    """T_GPU = max(read, flop) + launch where the GPU has work + fixed, elementwise (per GPU, or per call).

    Args:
        read_s / flop_s: the GPU's summed expert weight-read and tensor-core seconds (or any one unit).
        busy: whether it runs any expert (no launch without work).
        launch_s / fixed_s: launch overhead and the per-call fixed time (attention, combine).
    """
    return np.maximum(read_s, flop_s) + np.where(busy, launch_s, 0) + fixed_s


class GpuRoofline:
    """Per-expert weight-read and compute times on the GPU's SMs."""

    def __init__(self, gpu: GpuSpec, model: MoEModelSpec) -> None:
        self.gpu = gpu
        self.model = model
        self.read_s_per_expert = model.expert_weight_bytes / (gpu.eta_bw * gpu.ext_bw_bytes_per_s)
        self.flop_s_per_token = model.expert_flops_per_token / (gpu.eta_fl * gpu.peak_flops_per_s)
        self.launch_s = gpu.launch_overhead_s

    def read_s(self, tokens: np.ndarray) -> np.ndarray:
        """[E] seconds to stream each expert's weights once (0 where it has no GPU tokens)."""
        return np.where(np.asarray(tokens) > 0, self.read_s_per_expert, 0.0)

    def flop_s(self, tokens: np.ndarray) -> np.ndarray:
        """[E] seconds of tensor-core work for each expert's GPU tokens."""
        return np.asarray(tokens, dtype=np.float64) * self.flop_s_per_token

    def time_s(self, tokens: np.ndarray) -> float:
        """T_GPU for one GPU whose experts run `tokens [E]` tokens on the SMs."""
        tokens = np.asarray(tokens)
        if not tokens.any():
            return 0.0
        return float(gpu_time_s(float(self.read_s(tokens).sum()), float(self.flop_s(tokens).sum()), True, self.launch_s))
