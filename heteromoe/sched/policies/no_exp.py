"""`no-exp`: decode attention on PIM, every expert on the GPU (NeuPIMs style)."""
from __future__ import annotations

import numpy as np

from heteromoe.sched.policy import PlacementContext, Policy


class NoExpPolicy(Policy):
    name = "no-exp"
    summary = "decode attention on PIM, all experts on GPU"
    #: NeuPIMs' two interleaved sub-batches, which Sieve's evaluation gives every PIM method (§3.4, §7.1)
    sub_batches = 2

    def _place(self, ctx: PlacementContext) -> np.ndarray:
        return ctx.slot_counts.copy()
