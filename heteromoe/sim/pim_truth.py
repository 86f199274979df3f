"""What PIM work really takes in the simulator, as opposed to what the planners estimate.

The planners see the bank model's closed form, whose refresh term is an expectation over refresh phases
(`cost.pim_bank`). The simulator knows when each PIM operation starts, so it applies the command walk's
own rule: the stacks refresh every tREFI on a clock that starts with the step, and a refresh that comes due
stalls the command stream for tRFC at the next command boundary (here: added to the operation's busy time,
the walk's granularity being far finer than an operation). Busy time is the closed form without its
refresh term, which equals the command walk's busy time (checked in tests/sim/test_pim_truth.py); with
a separate PIM command path (`StepOptions.pim_separate_paths`) the mode switches leave it.
"""
from __future__ import annotations

import numpy as np

from heteromoe.cost.layout import channel_groups
from heteromoe.cost.pim_bank import BankPimTiming, GemvTiming
from heteromoe.spec.model import MoEModelSpec

__all__ = ["ExpertPimTruth", "busy_s", "with_refresh"]


def busy_s(timing: GemvTiming, separate_paths: bool) -> float:
    """Busy seconds of a GEMV call without refresh; with a PIM command path separate from the DRAM one
    (NeuPIMs' dual row buffers) no all-bank mode switch is needed around each GEMV."""
    if separate_paths:
        return timing.input_s + timing.stream_s + timing.output_s
    return timing.total_s - timing.refresh_s


def with_refresh(start_s: np.ndarray, busy_s: np.ndarray, t_refi_s: float, t_rfc_s: float) -> np.ndarray:
    """[G] durations of PIM operations that need `busy_s` of commands and start at `start_s`, with a tRFC
    stall for every tREFI boundary of the global refresh clock they run into."""
    start_s = np.asarray(start_s, dtype=np.float64)
    busy_s = np.asarray(busy_s, dtype=np.float64)
    first = np.floor(start_s / t_refi_s)
    n = np.zeros_like(busy_s)
    for _ in range(64):  # each pass adds the refreshes the last one's stalls ran into
        new = np.where(busy_s > 0, np.floor((start_s + busy_s + n * t_rfc_s) / t_refi_s) - first, 0.0)
        if (new == n).all():
            break
        n = new
    return busy_s + n * t_rfc_s


class ExpertPimTruth:
    """Busy seconds per token of an expert on PIM (gate+up GEMV then down GEMV), by share of channels."""

    def __init__(self, timing: BankPimTiming, model: MoEModelSpec, separate_paths: bool = False) -> None:
        self.timing = timing
        self.separate_paths = separate_paths
        self.model = model
        self._per_token: dict[float, float] = {}
        self._groups: dict = {}
        self.t_refi_s = timing.t.t_refi_ns * 1e-9
        self.t_rfc_s = timing.t.t_rfc_ns * 1e-9

    def per_token_busy_s(self, share: float = 1.0) -> float:
        if share not in self._per_token:
            m, t = self.model, self.timing
            busy = 0.0
            for d_in, d_out in ((m.hidden_size, 2 * m.moe_intermediate_size), (m.moe_intermediate_size, m.hidden_size)):
                g = t.gemv(d_in, d_out, 1, m.bytes_per_weight, m.bytes_per_activation, share)
                busy += float(busy_s(g, self.separate_paths))
            self._per_token[share] = busy
        return self._per_token[share]

    def busy_s(self, pim_tokens: np.ndarray, slot_gpu: np.ndarray, gpus: int, groups_per_gpu: int | None) -> np.ndarray:
        """[G] busy seconds of the PIM experts: the sum (every expert over all channels) or, with
        `groups_per_gpu` expert-parallel groups, the busiest group's."""
        if groups_per_gpu is None:
            return np.bincount(slot_gpu, weights=pim_tokens * self.per_token_busy_s(1.0), minlength=gpus)
        key = (id(slot_gpu), gpus, groups_per_gpu)
        if self._groups.get(key, (None,))[0] is not slot_gpu:
            group, share, slots = channel_groups(slot_gpu, gpus, groups_per_gpu)
            values = np.unique(share)
            per = np.array([self.per_token_busy_s(float(v)) for v in values])
            self._groups[key] = (slot_gpu, group, per[np.searchsorted(values, share)], slots)
        _, group, per_slot, slots = self._groups[key]
        per_group = np.bincount(group, weights=pim_tokens * per_slot, minlength=slots)
        return per_group.reshape(gpus, groups_per_gpu).max(axis=1)
