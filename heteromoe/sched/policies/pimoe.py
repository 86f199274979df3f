"""`pimoe`: PIMoE's rule, with its expert-parallel layout over PIM channels.

Experts live in channel groups (`cost.layout`, layout "ep"), so PIM time is the busiest group's. Per GPU:
start with every expert on PIM; while T_GPU <= T_PIM and PIM still holds an expert, move the hottest
expert of the busiest channel group to the GPU (the loop ends with the first move that makes the GPU the
slower side, that move kept). As in the paper, the decision ignores decode attention on PIM and
inter-GPU communication; the plan's times include both.
"""
from __future__ import annotations

import numpy as np

from heteromoe.cost.layout import channel_groups
from heteromoe.sched.policy import PlacementContext, Policy


class PimoePolicy(Policy):
    name = "pimoe"
    summary = "PIMoE: expert-parallel PIM layout; busiest channel's hottest expert moves to GPU until GPU > PIM"
    pim_layout = "ep"

    def _place(self, ctx: PlacementContext) -> np.ndarray:
        counts, cost = ctx.slot_counts, ctx.cost
        group, share, _ = channel_groups(ctx.slot_gpu, ctx.num_gpus, cost.channels_per_gpu)
        pim_time = cost.pim.times_s(counts, share)  # [E] each expert's time in its own channel group
        flop_tab, _ = cost.tables(int(counts.max()) if counts.size else 0)
        gpu_tokens = np.zeros_like(counts)
        for g in range(ctx.num_gpus):
            mine = np.flatnonzero((ctx.slot_gpu == g) & (counts > 0))
            if mine.size == 0:
                continue
            groups = np.unique(group[mine])
            # per group: its experts, hottest first (ties by lower id), and its current PIM time
            queues = {int(q): list(mine[group[mine] == q][np.lexsort((mine[group[mine] == q],
                                                                      -counts[mine[group[mine] == q]]))])
                      for q in groups}
            load = {int(q): float(pim_time[queues[int(q)]].sum()) for q in groups}
            read = flop = 0.0
            t_gpu = 0.0
            while True:
                busiest = max(load, key=lambda q: (load[q], -q))
                t_pim = load[busiest]
                if not queues[busiest] or t_gpu > t_pim:
                    break
                e = queues[busiest].pop(0)
                load[busiest] -= float(pim_time[e])
                gpu_tokens[e] = counts[e]
                read += cost.gpu.read_s_per_expert
                flop += float(flop_tab[counts[e]])
                t_gpu = max(read, flop) + cost.gpu.launch_s
        return gpu_tokens
