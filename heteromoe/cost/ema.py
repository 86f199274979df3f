"""Sieve's learned PIM cost table: observed time per expert, keyed by token count, updated by an EMA.

The real PIM time is not linear in tokens (row conflicts, refresh; the plain roofline misestimates by
1.8-4.2x), so the scheduler prefers what the PIM backend reported for a token count it has seen, and
falls back to the timing model for unseen counts. It is a `PimCostModel` (`times_s(tokens, share)`),
for one expert shape (one MoE layer); `version` changes with every update so cached tables refresh.
"""
from __future__ import annotations

import numpy as np

from heteromoe.cost.pim import PimCostModel

__all__ = ["EmaPimCost"]


class EmaPimCost:
    """EMA table over a base PIM cost model.

    Args:
        base: the model used for unseen token counts (and for layouts other than Sieve's, share != 1).
        alpha: weight of a new observation (0 < alpha <= 1).
    """

    def __init__(self, base: PimCostModel, alpha: float = 0.2) -> None:
        if not 0 < alpha <= 1:
            raise ValueError(f"alpha must be in (0, 1], got {alpha}")
        self.base = base
        self.alpha = alpha
        self.seen = np.zeros(0, dtype=bool)
        self.value = np.zeros(0)
        self.version = 0

    def _grow(self, n: int) -> None:
        if self.seen.shape[0] <= n:
            size = max(64, 1 << int(n).bit_length())
            self.seen = np.concatenate([self.seen, np.zeros(size - self.seen.shape[0], dtype=bool)])
            self.value = np.concatenate([self.value, np.zeros(size - self.value.shape[0])])

    def observe(self, tokens, times_s) -> None:
        """Record observed PIM seconds `times_s [k]` of experts that ran `tokens [k]` tokens each."""
        tokens = np.asarray(tokens, dtype=np.int64).reshape(-1)
        times_s = np.asarray(times_s, dtype=np.float64).reshape(-1)
        if tokens.shape != times_s.shape:
            raise ValueError(f"tokens {tokens.shape} and times_s {times_s.shape} must match")
        if tokens.size and (tokens.min() < 1 or not np.all(np.isfinite(times_s)) or times_s.min() < 0):
            raise ValueError("observations need token counts >= 1 and finite, non-negative times")
        if tokens.size == 0:
            return
        self._grow(int(tokens.max()))
        for n, t in zip(tokens.tolist(), times_s.tolist()):
            self.value[n] = t if not self.seen[n] else (1 - self.alpha) * self.value[n] + self.alpha * t
            self.seen[n] = True
        self.version += 1

    def times_s(self, tokens, share=1.0) -> np.ndarray:
        n = np.asarray(tokens, dtype=np.int64)
        base = np.asarray(self.base.times_s(n, share), dtype=np.float64)
        if np.ndim(share) != 0 or share != 1.0 or self.seen.shape[0] == 0:
            return base
        inside = n < self.seen.shape[0]
        idx = np.where(inside, n, 0)
        learned = inside & self.seen[idx]
        return np.where(learned, self.value[idx], base)
