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

    #: run the general loop even where every channel group holds one expert (tests compare both paths)
    force_loop: bool = False

    def _place(self, ctx: PlacementContext) -> np.ndarray:
        counts, cost = ctx.slot_counts, ctx.cost
        group, share, _ = channel_groups(ctx.slot_gpu, ctx.num_gpus, cost.channels_per_gpu)
        pim_time = cost.pim.times_s(counts, share)  # [P] each expert's time in its own channel group
        slot_flop = cost.gpu_flop_s(counts)  # [P] GPU compute seconds of each slot's tokens
        gpu_tokens = np.zeros_like(counts)
        read_s, launch_s = cost.gpu.read_s_per_expert, cost.gpu.launch_s
        for g in range(ctx.num_gpus):
            mine = np.flatnonzero((ctx.slot_gpu == g) & (counts > 0))
            if mine.size == 0:
                continue
            groups, gid = np.unique(group[mine], return_inverse=True)
            if groups.size == mine.size and not self.force_loop:
                moved = self._one_expert_per_group(mine, gid, pim_time, counts, slot_flop, read_s, launch_s)
            else:
                moved = self._loop(mine, groups, gid, group, pim_time, counts, slot_flop, read_s, launch_s)
            gpu_tokens[moved] = counts[moved]
        return gpu_tokens

    @staticmethod
    def _one_expert_per_group(mine, gid, pim_time, counts, slot_flop, read_s, launch_s) -> np.ndarray:
        """Each group holds one expert: the busiest group's hottest expert is the next one by PIM time
        (ties: the lower group), so the rule is a prefix of that order; stop at the first expert whose PIM
        time is below the GPU time so far."""
        order = mine[np.lexsort((gid, -pim_time[mine]))]
        n = np.arange(1, order.size + 1)
        t_gpu = np.maximum(n * read_s, np.cumsum(slot_flop[order])) + launch_s
        t_before = np.concatenate([[0.0], t_gpu[:-1]])  # GPU time when the i-th move is considered
        stops = np.flatnonzero(t_before > pim_time[order])
        return order[: stops[0] if stops.size else order.size]

    @staticmethod
    def _loop(mine, groups, gid, group, pim_time, counts, slot_flop, read_s, launch_s) -> np.ndarray:
        """The general rule, one move at a time."""
        # each group's experts, hottest first (ties: lower id): one flat queue sorted by (group, -count, id)
        queue = mine[np.lexsort((mine, -counts[mine], gid))]
        q_gid = np.searchsorted(groups, group[queue])
        head = np.searchsorted(q_gid, np.arange(groups.size))  # next expert of each group
        end = np.append(head[1:], queue.size)
        load = np.bincount(gid, weights=pim_time[mine], minlength=groups.size)
        moved = []
        read = flop = t_gpu = 0.0
        while True:
            busiest = int(np.argmax(load))  # ties: the lower group
            if head[busiest] == end[busiest] or t_gpu > load[busiest]:
                break
            e = queue[head[busiest]]
            head[busiest] += 1
            load[busiest] -= pim_time[e]
            moved.append(e)
            read += read_s
            flop += float(slot_flop[e])
            t_gpu = max(read, flop) + launch_s
        return np.array(moved, dtype=np.int64)
