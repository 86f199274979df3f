"""`duplex`: Duplex's rule (MICRO 2024), per GPU.

Per-expert time tables (here: the shared cost model's GPU and PIM times for each expert's token count);
start with every expert on the GPU, then move the coldest remaining expert to PIM while
max(T_comm, T_GPU, T_PIM) strictly falls; stop at the first move that does not lower it.
"""
from __future__ import annotations

import numpy as np

from heteromoe.cost.gpu import gpu_time_s
from heteromoe.sched.policy import PlacementContext, Policy


class DuplexPolicy(Policy):
    name = "duplex"
    summary = "Duplex: all on GPU, coldest experts move to PIM while the max falls"
    #: NeuPIMs' two interleaved sub-batches, which Sieve's evaluation gives every PIM method (§3.4, §7.1)
    sub_batches = 2

    def _place(self, ctx: PlacementContext) -> np.ndarray:
        """All GPUs at once: each GPU's experts coldest first form one segment of a flat array."""
        counts, cost = ctx.slot_counts, ctx.cost
        gpu_tokens = counts.copy()
        active = np.flatnonzero(counts > 0)
        if active.size == 0:
            return gpu_tokens
        gpu = ctx.slot_gpu[active]
        order = active[np.lexsort((active, counts[active], gpu))]  # by GPU, coldest first, ties by lower id
        g_of = ctx.slot_gpu[order]
        size = np.bincount(g_of, minlength=ctx.num_gpus)  # A_g
        seg = np.concatenate([[0], np.cumsum(size)])
        # candidate m = 0..A_g per GPU (m experts moved to PIM): flat index seg[g] + g + m
        cand_g = np.repeat(np.arange(ctx.num_gpus), size + 1)
        m = np.arange(cand_g.size) - (seg[cand_g] + cand_g)
        n = counts[order]
        flop = cost.gpu_flop_s(n)
        pim = cost.pim_time_s(n)
        # suffix sums of GPU compute and prefix sums of PIM time within each segment
        flop_cum = np.concatenate([[0.0], np.cumsum(flop)])
        pim_cum = np.concatenate([[0.0], np.cumsum(pim)])
        lo, hi = seg[cand_g], seg[cand_g + 1]
        flop_rest = flop_cum[hi] - flop_cum[lo + m]
        left = size[cand_g] - m
        t_gpu = gpu_time_s(cost.gpu.read_s_per_expert * left, flop_rest, left > 0, cost.gpu.launch_s,
                           ctx.gpu_fixed_s[cand_g])
        t_pim = pim_cum[lo + m] - pim_cum[lo] + ctx.pim_fixed_s[cand_g]
        f = np.maximum(np.maximum(ctx.comm_s[cand_g], t_gpu), t_pim)
        # per GPU: the first m whose next move does not lower f (or A_g)
        no_gain = np.append(~(f[1:] < f[:-1]), True)
        no_gain[seg[1:] + np.arange(ctx.num_gpus)] = True  # the last candidate of every segment stops
        stops = np.flatnonzero(no_gain)
        first = stops[np.searchsorted(stops, seg[:-1] + np.arange(ctx.num_gpus))]
        moved = first - (seg[:-1] + np.arange(ctx.num_gpus))
        take = np.arange(order.size) - seg[g_of] < moved[g_of]
        gpu_tokens[order[take]] = 0
        return gpu_tokens
