"""`gpu-only`: every expert and decode attention on the GPU, no PIM (the plain GPU baseline)."""
from __future__ import annotations

import numpy as np

from heteromoe.sched.policy import PlacementContext, Policy


class GpuOnlyPolicy(Policy):
    name = "gpu-only"
    summary = "everything on GPU, no PIM"
    attention_on_pim = False

    def _place(self, ctx: PlacementContext) -> np.ndarray:
        return ctx.slot_counts.copy()
