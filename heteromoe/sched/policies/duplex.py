"""`duplex`: Duplex's rule (MICRO 2024), per GPU.

Per-expert time tables (here: the shared cost model's GPU and PIM times for each expert's token count);
start with every expert on the GPU, then move the coldest remaining expert to PIM while
max(T_comm, T_GPU, T_PIM) strictly falls; stop at the first move that does not lower it.
"""
from __future__ import annotations

import numpy as np

from heteromoe.sched.policy import PlacementContext, Policy


class DuplexPolicy(Policy):
    name = "duplex"
    summary = "Duplex: all on GPU, coldest experts move to PIM while the max falls"
    #: NeuPIMs' two interleaved sub-batches, which Sieve's evaluation gives every PIM method (§3.4, §7.1)
    sub_batches = 2

    def _place(self, ctx: PlacementContext) -> np.ndarray:
        counts, cost = ctx.slot_counts, ctx.cost
        flop_tab, pim_tab = cost.tables(int(counts.max()) if counts.size else 0)
        gpu_tokens = counts.copy()
        for g in range(ctx.num_gpus):
            mine = np.flatnonzero((ctx.slot_gpu == g) & (counts > 0))
            order = mine[np.lexsort((mine, counts[mine]))]  # coldest first, ties by lower id
            if order.size == 0:
                continue
            n = counts[order]
            # m = number moved to PIM (0..A): the GPU keeps order[m:], PIM has order[:m]
            read_rest = cost.gpu.read_s_per_expert * np.arange(order.size, -1, -1, dtype=np.float64)
            flop_rest = np.concatenate([np.cumsum(flop_tab[n][::-1])[::-1], [0.0]])
            launch = np.where(np.arange(order.size + 1) < order.size, cost.gpu.launch_s, 0.0)
            t_gpu = np.maximum(read_rest, flop_rest) + launch + ctx.gpu_fixed_s[g]
            t_pim = np.concatenate([[0.0], np.cumsum(pim_tab[n])]) + ctx.pim_fixed_s[g]
            f = np.maximum(np.maximum(ctx.comm_s[g], t_gpu), t_pim)
            stops = np.flatnonzero(~(f[1:] < f[:-1]))
            moved = int(stops[0]) if stops.size else order.size
            gpu_tokens[order[:moved]] = 0
        return gpu_tokens
