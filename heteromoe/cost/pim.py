"""PIM cost model v1: serialized GEMVs at X times the external bandwidth, capped by PIM FLOP/s.

Bank-level PIM (`tokens_serialized`): every token sweeps the expert's weights again, so an expert with
n tokens costs n * (max(W_e / BW_int, 6 d f / F_pim) + t_cmd). Logic-PIM batches the tokens:
max(W_e / BW_int, n 6 d f / F_pim) + t_cmd. Weights are sharded over all channels of the GPU's stacks
(Sieve's layout), so the whole GPU's internal bandwidth serves each expert.

The bank-level timing model (its own issue) replaces this behind the same `times_s` interface.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np

from heteromoe.spec.hardware import PimSpec
from heteromoe.spec.model import MoEModelSpec

__all__ = ["PimCostModel", "PimRooflineV1"]


class PimCostModel(Protocol):
    """What the scheduler asks of a PIM cost model."""

    def times_s(self, tokens: np.ndarray) -> np.ndarray:
        """[E] seconds each expert takes on PIM for `tokens [E]` tokens (0 for 0 tokens)."""
        ...


class PimRooflineV1:
    """v1 PIM model: serialized (bank) or batched (logic) GEMVs; see the module docstring."""

    def __init__(self, pim: PimSpec, model: MoEModelSpec) -> None:
        self.pim = pim
        self.model = model
        read_s = model.expert_weight_bytes / pim.internal_bw_bytes_per_s
        self.read_s_per_sweep = read_s
        self.flop_s_per_token = model.expert_flops_per_token / pim.flops_per_s
        self.command_s = pim.command_overhead_s
        self.gemv_s = max(read_s, self.flop_s_per_token) + self.command_s

    def times_s(self, tokens: np.ndarray) -> np.ndarray:
        n = np.asarray(tokens, dtype=np.float64)
        if self.pim.tokens_serialized:
            return n * self.gemv_s
        batched = np.maximum(self.read_s_per_sweep, n * self.flop_s_per_token) + self.command_s
        return np.where(n > 0, batched, 0.0)
