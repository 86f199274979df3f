"""WorkSlice: the part of one layer call a backend must run (one side of the plan)."""
from __future__ import annotations

from dataclasses import dataclass

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
        return torch.from_numpy(self.pair_index // self.top_k).to(device)

    def pair_weights(self, top_k_weights: torch.Tensor) -> torch.Tensor:
        """[P] routing weight of each pair."""
        idx = torch.from_numpy(self.pair_index).to(top_k_weights.device)
        return top_k_weights.reshape(-1)[idx]

    @classmethod
    def empty(cls, top_k: int) -> "WorkSlice":
        return cls(np.zeros(0, np.int64), np.zeros(1, np.int64), np.zeros(0, np.int64), top_k)
