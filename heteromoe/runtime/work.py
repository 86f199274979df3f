"""WorkSlice: the part of one layer call a backend must run (one side of the plan)."""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

__all__ = ["WorkSlice"]


@dataclass(frozen=True, eq=False)
class WorkSlice:
    """Expert-contiguous (token, slot) pairs for one backend.

    Attributes:
        experts: [G] expert ids in this slice (each with >= 1 pair).
        offsets: [G+1] expert `experts[i]` owns `pair_index[offsets[i]:offsets[i+1]]`.
        pair_index: [P] flat pair indices `t * k + slot` (host int64).
        top_k: k, to recover token = pair // k.
    """

    experts: np.ndarray
    offsets: np.ndarray
    pair_index: np.ndarray
    top_k: int
    _on_device: dict = field(default_factory=dict, repr=False, compare=False)

    def pair_index_on(self, device: torch.device) -> torch.Tensor:
        """[P] pair indices on `device`, copied once per slice and device (backends and the combine share it)."""
        key = str(device)
        if key not in self._on_device:
            self._on_device[key] = torch.from_numpy(self.pair_index).to(device, non_blocking=True)
        return self._on_device[key]

    @property
    def experts_ascending(self) -> bool:
        """Each expert once, in ascending order: the rows are already grouped as grouped_mm wants them."""
        return bool(np.all(np.diff(self.experts) > 0))

    @property
    def num_pairs(self) -> int:
        return int(self.pair_index.shape[0])

    @property
    def tokens_per_expert(self) -> np.ndarray:
        """[G] pairs of each expert in the slice."""
        return np.diff(self.offsets)

    def is_empty(self) -> bool:
        return self.num_pairs == 0

    def token_index(self, device: torch.device) -> torch.Tensor:
        """[P] token ids of the pairs, on `device`."""
        return self.pair_index_on(device) // self.top_k

    def pair_weights(self, top_k_weights: torch.Tensor) -> torch.Tensor:
        """[P] routing weight of each pair."""
        return top_k_weights.reshape(-1)[self.pair_index_on(top_k_weights.device)]

    @classmethod
    def empty(cls, top_k: int) -> WorkSlice:
        return cls(np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0, np.int64), top_k)
