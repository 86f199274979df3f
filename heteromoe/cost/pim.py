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

    def times_s(self, tokens: np.ndarray, share=1.0) -> np.ndarray:
        """[E] seconds each expert takes on PIM for `tokens [E]` tokens (0 for 0 tokens).

        `share` ([E] or scalar) is the fraction of the GPU's PIM channels an expert is spread over: 1 for
        Sieve's layout (every expert over all channels), 1/groups for an expert-parallel layout.
        """
        ...


class PimRooflineV1:
    """v1 PIM model: serialized (bank) or batched (logic) GEMVs; see the module docstring."""

    def __init__(self, pim: PimSpec, model: MoEModelSpec) -> None:
        self.pim = pim
        self.model = model
        self.command_s = pim.command_overhead_s
        self.read_s_per_sweep = model.expert_weight_bytes / pim.internal_bw_bytes_per_s
        self.flop_s_per_token = model.expert_flops_per_token / pim.flops_per_s

    def _time(self, read_s, flop_s, tokens, share=1.0):
        n = np.asarray(tokens, dtype=np.float64)
        if not np.all(np.asarray(share) == 1.0):
            share = np.asarray(share, dtype=np.float64)
            read_s, flop_s = read_s / share, flop_s / share
        if self.pim.tokens_serialized:
            return n * (np.maximum(read_s, flop_s) + self.command_s)
        return np.where(n > 0, np.maximum(read_s, n * flop_s) + self.command_s, 0.0)

    def times_s(self, tokens: np.ndarray, share=1.0) -> np.ndarray:
        return self._time(self.read_s_per_sweep, self.flop_s_per_token, tokens, share)

    def gemv_s(self, d_in: int, d_out: int, tokens=1, bytes_w: float = 2.0):
        """One GEMV `[tokens x d_in] x [d_in x d_out]` on all the stacks of the spec."""
        return self._time(d_in * d_out * bytes_w / self.pim.internal_bw_bytes_per_s,
                          2.0 * d_in * d_out / self.pim.flops_per_s, tokens)
