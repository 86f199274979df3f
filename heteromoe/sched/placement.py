"""Expert placement on GPUs (expert parallelism), with optional replicas of hot experts.

A placement lists *slots* (EPLB's physical experts): slot s holds logical expert `phys2log[s]` on GPU
`slot_gpu[s]`. Every logical expert has exactly one home slot (`home_slot[e]`, the first slot of that
expert); replicas are extra slots on other GPUs whose weights are copied there. Without replicas there is
one slot per expert and slot s is expert s.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["Placement", "as_placement", "check_placement", "contiguous_placement"]


def contiguous_placement(num_experts: int, num_gpus: int) -> np.ndarray:
    """[E] home GPU: contiguous blocks, the first `E % G` GPUs get one extra expert."""
    if num_gpus < 1:
        raise ValueError(f"num_gpus must be >= 1, got {num_gpus}")
    if num_experts < num_gpus:
        raise ValueError(f"{num_experts} experts cannot be spread over {num_gpus} GPUs (one at least per GPU)")
    return (np.arange(num_experts, dtype=np.int64) * num_gpus) // num_experts


def check_placement(expert_gpu, num_experts: int, num_gpus: int) -> np.ndarray:
    """Validate a user's placement: [E] ints in [0, G), every expert homed."""
    arr = np.asarray(expert_gpu)
    if arr.shape != (num_experts,):
        raise ValueError(f"placement must give a home GPU for each of the {num_experts} experts, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"placement must hold integer GPU ids, got dtype {arr.dtype}")
    bad = np.flatnonzero((arr < 0) | (arr >= num_gpus))
    if bad.size:
        e = int(bad[0])
        raise ValueError(f"placement leaves expert {e} homeless: GPU {int(arr[e])} is outside [0, {num_gpus})")
    return arr.astype(np.int64, copy=False)


@dataclass(frozen=True, eq=False)
class Placement:
    """Slots of logical experts on GPUs.

    Attributes:
        phys2log: [P] logical expert held by each slot; the first E slots are the homes, slot e = expert e.
        slot_gpu: [P] GPU of each slot.
        num_gpus: G.
    """

    phys2log: np.ndarray
    slot_gpu: np.ndarray
    num_gpus: int

    def __post_init__(self) -> None:
        p2l, gpu = np.asarray(self.phys2log), np.asarray(self.slot_gpu)
        if p2l.ndim != 1 or p2l.shape != gpu.shape:
            raise ValueError(f"phys2log {p2l.shape} and slot_gpu {gpu.shape} must be 1-D of one length")
        num_experts = int(p2l.max()) + 1 if p2l.size else 0
        if num_experts == 0 or not np.array_equal(p2l[:num_experts], np.arange(num_experts)):
            raise ValueError("the first E slots must be the home slots of experts 0..E-1, in order")
        if gpu.size and (gpu.min() < 0 or gpu.max() >= self.num_gpus):
            raise ValueError(f"slot GPUs must be in [0, {self.num_gpus})")
        pairs = p2l.astype(np.int64) * self.num_gpus + gpu
        if np.unique(pairs).size != pairs.size:
            raise ValueError("an expert has two slots on one GPU")
        object.__setattr__(self, "phys2log", p2l.astype(np.int64))
        object.__setattr__(self, "slot_gpu", gpu.astype(np.int64))
        object.__setattr__(self, "_num_experts", num_experts)  # asked on every layer call: computed once
        object.__setattr__(self, "_has_replicas", p2l.shape[0] > num_experts)

    @classmethod
    def from_homes(cls, expert_gpu, num_gpus: int) -> Placement:
        homes = np.asarray(expert_gpu, dtype=np.int64)
        return cls(np.arange(homes.size, dtype=np.int64), homes, num_gpus)

    @property
    def num_experts(self) -> int:
        return self._num_experts

    @property
    def num_slots(self) -> int:
        return int(self.phys2log.shape[0])

    @property
    def home_gpu(self) -> np.ndarray:
        """[E] GPU of each expert's home slot."""
        return self.slot_gpu[: self.num_experts]

    @property
    def has_replicas(self) -> bool:
        return self._has_replicas

    def home_counts(self, counts: np.ndarray) -> np.ndarray:
        """[P] slot loads with every token on its expert's home slot (replicas idle)."""
        if not self.has_replicas:
            return counts
        return np.concatenate([counts, np.zeros(self.num_slots - self.num_experts, dtype=counts.dtype)])


def as_placement(placement, num_experts: int, num_gpus: int) -> Placement:
    """None (contiguous), an [E] array of home GPUs, or a Placement -> a checked Placement."""
    if placement is None:
        return Placement.from_homes(contiguous_placement(num_experts, num_gpus), num_gpus)
    if isinstance(placement, Placement):
        if placement.num_experts != num_experts or placement.num_gpus != num_gpus:
            raise ValueError(f"placement is for {placement.num_experts} experts on {placement.num_gpus} GPUs, "
                             f"not {num_experts} on {num_gpus}")
        return placement
    return Placement.from_homes(check_placement(placement, num_experts, num_gpus), num_gpus)
