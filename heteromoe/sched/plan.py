"""The Plan: where every routed (token, expert) pair of one MoE layer call executes.

For expert e (homed on GPU `expert_gpu[e]`), its pairs in routing order (see `routing.loads`) are split
into a prefix of `gpu_tokens[e]` pairs that run on the GPU's SMs and the remaining `pim_tokens[e]` that
run in that GPU's PIM stacks. A policy may split one expert between both sides.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

__all__ = ["Plan", "PlanError"]


class PlanError(ValueError):
    """A plan that would run some routed pair zero times or more than once."""


@dataclass(frozen=True, eq=False)
class Plan:
    """One layer call's placement and its predicted times.

    Attributes:
        policy: the policy that made it.
        expert_gpu: [E] int64 home GPU of each expert.
        gpu_tokens: [E] int64 tokens of each expert run on the GPU (the first ones of its order).
        pim_tokens: [E] int64 tokens of each expert run on PIM (the rest).
        per_gpu_t_comm_s, per_gpu_t_gpu_s, per_gpu_t_pim_s: [G] predicted seconds per GPU.
    """

    policy: str
    expert_gpu: np.ndarray
    gpu_tokens: np.ndarray
    pim_tokens: np.ndarray
    per_gpu_t_comm_s: np.ndarray
    per_gpu_t_gpu_s: np.ndarray
    per_gpu_t_pim_s: np.ndarray
    info: dict = field(default_factory=dict)

    @property
    def num_experts(self) -> int:
        return int(self.gpu_tokens.shape[0])

    @property
    def num_gpus(self) -> int:
        return int(self.per_gpu_t_gpu_s.shape[0])

    @property
    def t_comm_s(self) -> float:
        """Slowest GPU's all-to-all time."""
        return float(self.per_gpu_t_comm_s.max())

    @property
    def t_gpu_s(self) -> float:
        """Slowest GPU's SM time for its GPU set."""
        return float(self.per_gpu_t_gpu_s.max())

    @property
    def t_pim_s(self) -> float:
        """Slowest GPU's PIM time for its PIM set."""
        return float(self.per_gpu_t_pim_s.max())

    @property
    def predicted_time_s(self) -> float:
        """The layer's makespan: max over GPUs of max(T_comm, T_GPU, T_PIM)."""
        per_gpu = np.maximum(np.maximum(self.per_gpu_t_comm_s, self.per_gpu_t_gpu_s), self.per_gpu_t_pim_s)
        return float(per_gpu.max())

    @property
    def gpu_experts(self) -> np.ndarray:
        """Expert ids with at least one token on the GPU."""
        return np.flatnonzero(self.gpu_tokens > 0)

    @property
    def pim_experts(self) -> np.ndarray:
        """Expert ids with at least one token on PIM."""
        return np.flatnonzero(self.pim_tokens > 0)

    def validate(self, counts) -> None:
        """Raise PlanError unless every routed pair runs exactly once: gpu + pim == counts, both >= 0."""
        counts = np.asarray(counts)
        gpu, pim = self.gpu_tokens, self.pim_tokens
        if not (counts.shape == gpu.shape == pim.shape == self.expert_gpu.shape):
            raise PlanError(f"plan of policy {self.policy!r}: shapes differ: counts {counts.shape}, gpu_tokens "
                            f"{gpu.shape}, pim_tokens {pim.shape}, expert_gpu {self.expert_gpu.shape}")
        if gpu.size == 0:
            return
        if min(gpu.min(), pim.min()) < 0:
            name, arr = ("gpu_tokens", gpu) if gpu.min() < 0 else ("pim_tokens", pim)
            e = int(np.flatnonzero(arr < 0)[0])
            raise PlanError(f"plan of policy {self.policy!r}: {name}[{e}] = {int(arr[e])} is negative")
        if not np.array_equal(gpu + pim, counts):
            wrong = np.flatnonzero(gpu + pim != counts)
            e = int(wrong[0])
            raise PlanError(f"plan of policy {self.policy!r}: expert {e} has {int(counts[e])} routed tokens but the plan "
                            f"runs {int(gpu[e])} on GPU + {int(pim[e])} on PIM ({wrong.size} expert(s) wrong)")
        if self.expert_gpu.min() < 0 or self.expert_gpu.max() >= self.num_gpus:
            raise PlanError(f"plan of policy {self.policy!r}: expert_gpu outside [0, {self.num_gpus})")

    def to_dict(self) -> dict:
        """JSON-serializable summary."""
        return {
            "policy": self.policy,
            "num_gpus": self.num_gpus,
            "gpu_tokens": self.gpu_tokens.tolist(),
            "pim_tokens": self.pim_tokens.tolist(),
            "expert_gpu": self.expert_gpu.tolist(),
            "t_comm_s": self.t_comm_s,
            "t_gpu_s": self.t_gpu_s,
            "t_pim_s": self.t_pim_s,
            "predicted_time_s": self.predicted_time_s,
        }
