"""`heteromoe`: ours. Sieve's order, but the best split instead of the first stop, and token splitting.

Per GPU, on the experts sorted by token count (descending):
1. evaluate *every* prefix on the GPU and keep the best (with non-negative costs the GPU side grows and
   the PIM side shrinks along the order, so this equals Sieve's first stop; the scan keeps it so for cost
   tables that are not monotone, e.g. measured ones);
2. try splitting the expert just past the boundary (its first k tokens join the GPU) and the last one
   inside it (its last tokens go back to PIM), for every k, and keep a strictly better split. This pays
   where the GPU side is compute-bound (large token counts, fat experts); where the GPU is bound by
   weight reads a partial move costs the whole read and does not help.
Never worse than `sieve` by construction: Sieve's plan is one of the prefixes. Runs in C++
(`heteromoe._C.heteromoe_plan`) with numba / python twins.
"""
from __future__ import annotations

import numpy as np

from heteromoe import _ext
from heteromoe.sched.policy import PlacementContext, Policy


class HeteromoePolicy(Policy):
    name = "heteromoe"
    summary = "best prefix of Sieve's order on the GPU, plus one expert split between GPU and PIM"

    def _place(self, ctx: PlacementContext) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return _ext.heteromoe_plan(*ctx.fast_path_args())
