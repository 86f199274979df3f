"""`pimoe`: PIMoE's rule, with its expert-parallel layout over PIM devices.

Experts live in expert-parallel groups (`cost.layout`, layout "ep"), so PIM time is the busiest group's.
The group is a PIM stack by default (`group_by="stack"`): PIMoE's NPU-PIM system (DAC 2025) offloads
experts to PIM *devices*, each expert whole on one device, and Sieve §7.1 reproduces it as "the busiest
PIM channel"; on a GPU with 8 stacks of 32 pseudo-channels the device is the stack, and within it the
expert's rows are spread over the stack's channels as every bank-level PIM GEMV is (Sieve §2.2). With
`group_by="channel"` the groups are pseudo-channels (min(local experts, channels) groups): one expert on
1/128 of Qwen3-30B's channels is slower on PIM than on the GPU whatever its load, so the rule moves every
active expert to the GPU at batch 1 (PIMoE = NoExp), against the paper's PIMoE ~ AllExp at B <= 16.

Per GPU: start with every expert on PIM and move the hottest expert of the busiest group to the GPU, one at a
time. The stop (`overshoot`): by default (False) a move is made only while the GPU stays the faster side
after it, T_GPU <= T_PIM (Sieve §5.2: PIMoE assigns an expert to the NPU "when the estimated NPU execution
time is lower than the estimated PIM execution time"); with `overshoot=True` the loop runs while T_GPU <= T_PIM
before the move and keeps the move that makes the GPU the slower side (§7.1's "until the GPU execution time
becomes larger"), which moves a lone expert even where the GPU is slower for it. As in the paper, the
decision ignores decode attention on PIM and inter-GPU communication; the plan's times include both.
"""
from __future__ import annotations

import numpy as np

from heteromoe.cost.layout import channel_groups
from heteromoe.sched.policy import PlacementContext, Policy, Split


class PimoePolicy(Policy):
    name = "pimoe"
    summary = "PIMoE: expert-parallel PIM layout; busiest channel's hottest expert moves to GPU until GPU > PIM"
    pim_layout = "ep"

    #: NeuPIMs' two interleaved sub-batches, which Sieve's evaluation gives every PIM method (§3.4, §7.1)
    sub_batches = 2
    #: run the general loop even where every channel group holds one expert (tests compare both paths)
    force_loop: bool = False

    def __init__(self, group_by: str = "stack", overshoot: bool = False) -> None:
        if group_by not in ("stack", "channel"):
            raise ValueError(f"group_by must be 'stack' or 'channel', got {group_by!r}")
        self.group_by = group_by
        self.overshoot = overshoot

    def groups_per_gpu(self, cost) -> int:
        pim = cost.system.pim
        return pim.stacks_per_gpu if self.group_by == "stack" else cost.channels_per_gpu

    def _place(self, ctx: PlacementContext) -> np.ndarray | Split:
        counts, cost = ctx.slot_counts, ctx.cost
        groups_per_gpu = self.groups_per_gpu(cost)
        group, share, slots = _groups(ctx.slot_gpu, ctx.num_gpus, groups_per_gpu)
        pim_time = cost.pim.times_s(counts, share)  # [P] each expert's time in its own channel group
        slot_flop = cost.gpu_flop_s(counts)  # [P] GPU compute seconds of each slot's tokens
        gpu_tokens = np.zeros_like(counts)
        read_s, launch_s = cost.gpu.read_s_per_expert, cost.gpu.launch_s
        if not self.force_loop and _moves_all is not None:
            active = np.flatnonzero(counts > 0)
            queue = active[np.lexsort((active, -counts[active], group[active]))]  # by group, hottest first
            bounds = np.searchsorted(group[queue], np.arange(slots + 1))
            load = np.bincount(group[active], weights=pim_time[active], minlength=slots)
            moved = _moves_all(queue, bounds[:-1].copy(), bounds[1:].copy(), load, groups_per_gpu, ctx.num_gpus,
                               pim_time, slot_flop, float(read_s), float(launch_s), self.overshoot)
            gpu_tokens[moved] = counts[moved]
        else:
            for g in range(ctx.num_gpus):
                mine = np.flatnonzero((ctx.slot_gpu == g) & (counts > 0))
                if mine.size == 0:
                    continue
                groups, gid = np.unique(group[mine], return_inverse=True)
                if groups.size == mine.size and not self.force_loop and self.overshoot:
                    moved = self._one_expert_per_group(mine, gid, pim_time, slot_flop, read_s, launch_s)
                else:
                    moved = self._loop(mine, groups, gid, group, pim_time, counts, slot_flop, read_s, launch_s,
                                       self.overshoot)
                gpu_tokens[moved] = counts[moved]
        if groups_per_gpu == cost.channels_per_gpu:
            return gpu_tokens  # the cost model's own "ep" layout times the plan
        pim_tokens = counts - gpu_tokens
        times = cost.times(counts, gpu_tokens, pim_tokens, ctx.slot_gpu, ctx.num_gpus,
                           attention_on_pim=self.attention_on_pim, pim_layout="tp", comm_s=ctx.comm_s)
        per_group = np.bincount(group, weights=cost.pim.times_s(pim_tokens, share), minlength=slots)
        t_pim = per_group.reshape(ctx.num_gpus, groups_per_gpu).max(axis=1) + ctx.pim_fixed_s
        return Split(gpu_tokens, t_gpu_s=times.t_gpu_s, t_pim_s=t_pim)

    @staticmethod
    def _one_expert_per_group(mine, gid, pim_time, slot_flop, read_s, launch_s) -> np.ndarray:
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
    def _loop(mine, groups, gid, group, pim_time, counts, slot_flop, read_s, launch_s, overshoot=True) -> np.ndarray:
        """The general rule, one move at a time, on one GPU (the reference for the compiled `_moves_all`)."""
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
            after = max(read + read_s, flop + float(slot_flop[e])) + launch_s
            if not overshoot:
                rest = load.copy()
                rest[busiest] -= pim_time[e]
                if after > rest.max():
                    break
            head[busiest] += 1
            load[busiest] -= pim_time[e]
            moved.append(e)
            read += read_s
            flop += float(slot_flop[e])
            t_gpu = after
        return np.array(moved, dtype=np.int64)


_GROUPS: dict = {}


def _groups(slot_gpu: np.ndarray, num_gpus: int, groups_per_gpu: int):
    """`channel_groups`, cached per placement array; `share` is a float where every group has the same width
    (the PIM cost model's fast path)."""
    key = (id(slot_gpu), slot_gpu.shape[0], num_gpus, groups_per_gpu)
    hit = _GROUPS.get(key)
    if hit is None or hit[0] is not slot_gpu:
        group, share, slots = channel_groups(slot_gpu, num_gpus, groups_per_gpu)
        if share.size and np.all(share == share[0]):
            share = float(share[0])
        hit = (slot_gpu, group, share, slots)
        if len(_GROUPS) > 64:
            _GROUPS.clear()
        _GROUPS[key] = hit
    return hit[1:]


def _moves_all_py(queue, head, end, load, groups_per_gpu, num_gpus, pim_time, slot_flop, read_s, launch_s,
                  overshoot):
    """`_loop` on every GPU at once: `head`/`end` bound each global group's run of `queue` (hottest first),
    `load` is each group's PIM time; returns the moved slots (compiled by numba when it is installed)."""
    moved = np.empty(queue.size, dtype=np.int64)
    k = 0
    for g in range(num_gpus):
        lo = g * groups_per_gpu
        read = flop = t_gpu = 0.0
        while True:
            busiest = lo
            for i in range(lo + 1, lo + groups_per_gpu):
                if load[i] > load[busiest]:
                    busiest = i
            if head[busiest] == end[busiest] or t_gpu > load[busiest]:
                break
            e = queue[head[busiest]]
            after = max(read + read_s, flop + slot_flop[e]) + launch_s
            if not overshoot:
                rest = load[busiest] - pim_time[e]
                for i in range(lo, lo + groups_per_gpu):
                    if i != busiest and load[i] > rest:
                        rest = load[i]
                if after > rest:
                    break
            head[busiest] += 1
            load[busiest] -= pim_time[e]
            moved[k] = e
            k += 1
            read += read_s
            flop += slot_flop[e]
            t_gpu = after
    return moved[:k]


try:
    import numba

    _moves_all = numba.njit(cache=True)(_moves_all_py)
except ImportError:  # pragma: no cover - numba is a dependency; the per-GPU python loop still runs
    _moves_all = None
