"""`all-exp`: decode attention and every expert on PIM (PAPI / Stratum style)."""
from __future__ import annotations

import numpy as np

from heteromoe.sched.policy import PlacementContext, Policy


class AllExpPolicy(Policy):
    name = "all-exp"
    summary = "all experts on PIM"
    #: NeuPIMs' two interleaved sub-batches, which Sieve's evaluation gives every PIM method (§3.4, §7.1)
    sub_batches = 2

    def _place(self, ctx: PlacementContext) -> np.ndarray:
        return np.zeros_like(ctx.slot_counts)
