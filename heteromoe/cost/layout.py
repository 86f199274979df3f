"""Expert layout over the PIM channels of each GPU.

Sieve shards every expert over *all* channels of the GPU's stacks ("tp"): PIM time is the sum of the
work. PIMoE places experts expert-parallel over channels ("ep"): each expert lives in one group of
channels, the groups run in parallel, and PIM time is the busiest group's. With L local experts and C
channels, there are min(L, C) groups of C / groups channels each; a GPU's experts fill them round-robin
in expert-id order.
"""
from __future__ import annotations

import numpy as np

__all__ = ["PIM_LAYOUTS", "channel_groups"]

PIM_LAYOUTS = ("tp", "ep")


def channel_groups(expert_gpu: np.ndarray, num_gpus: int, channels_per_gpu: int) -> tuple[np.ndarray, np.ndarray, int]:
    """Expert-parallel channel groups.

    Args:
        expert_gpu: [E] home GPU of each expert.
        channels_per_gpu: C, pseudo-channels over all stacks of one GPU.
    Returns:
        group: [E] global group id (gpu * C + local group), share: [E] fraction of the GPU's channels the
        expert's group holds, and the number of global group slots (G * C).
    """
    expert_gpu = np.asarray(expert_gpu)
    local_count = np.bincount(expert_gpu, minlength=num_gpus)  # L_g
    groups_per_gpu = np.minimum(local_count, channels_per_gpu)
    order = np.argsort(expert_gpu, kind="stable")  # experts by GPU, then id
    rank = np.empty_like(order)
    starts = np.concatenate([[0], np.cumsum(local_count)[:-1]])
    rank[order] = np.arange(order.size) - starts[expert_gpu[order]]  # local index of each expert
    groups = np.maximum(groups_per_gpu[expert_gpu], 1)
    group = expert_gpu * channels_per_gpu + rank % groups
    share = 1.0 / groups
    return group.astype(np.int64), share, num_gpus * channels_per_gpu
