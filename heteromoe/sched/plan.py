"""The Plan: where every routed (token, expert) pair of one MoE layer call executes.

Plans are over the placement's slots (see `sched.placement`): without replicas, slot e is expert e. An
expert's pairs, in routing order (see `routing.loads`), are cut into consecutive ranges, one per slot of
that expert in slot order, of `gpu_tokens[s] + pim_tokens[s]` pairs; of each range the first
`gpu_tokens[s]` run on the slot GPU's SMs and the rest in that GPU's PIM stacks. A policy may thus split
one expert between GPU and PIM, and between replicas.
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
        slot_gpu: [P] GPU of each slot (without replicas: the home GPU of each expert).
        gpu_tokens: [P] tokens of each slot run on its GPU's SMs.
        pim_tokens: [P] tokens of each slot run in its GPU's PIM stacks.
        per_gpu_t_comm_s, per_gpu_t_gpu_s, per_gpu_t_pim_s: [G] predicted seconds per GPU.
        info: policy-specific details (e.g. the exact solver's status and gap).
        phys2log: [P] expert of each slot (None: one slot per expert, slot e = expert e).
    """

    policy: str
    slot_gpu: np.ndarray
    gpu_tokens: np.ndarray
    pim_tokens: np.ndarray
    per_gpu_t_comm_s: np.ndarray
    per_gpu_t_gpu_s: np.ndarray
    per_gpu_t_pim_s: np.ndarray
    info: dict = field(default_factory=dict)
    phys2log: np.ndarray | None = None

    @property
    def expert_gpu(self) -> np.ndarray:
        """[P] GPU of each slot (the expert homes when the plan has no replicas)."""
        return self.slot_gpu

    @property
    def has_replicas(self) -> bool:
        return self.phys2log is not None and self.phys2log.shape[0] > int(self.phys2log.max()) + 1

    @property
    def slot_expert(self) -> np.ndarray:
        """[P] expert of each slot."""
        return np.arange(self.gpu_tokens.shape[0]) if self.phys2log is None else self.phys2log

    @property
    def num_slots(self) -> int:
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
        """Expert ids with at least one token on a GPU's SMs."""
        return np.unique(self.slot_expert[self.gpu_tokens > 0])

    @property
    def pim_experts(self) -> np.ndarray:
        """Expert ids with at least one token on PIM."""
        return np.unique(self.slot_expert[self.pim_tokens > 0])

    def validate(self, counts) -> None:
        """Raise PlanError unless every routed pair runs exactly once: per expert, the slots' GPU + PIM tokens
        add up to its routed count, and none is negative."""
        counts = np.asarray(counts)
        gpu, pim = self.gpu_tokens, self.pim_tokens
        if not (gpu.shape == pim.shape == self.slot_gpu.shape) or gpu.ndim != 1:
            raise PlanError(f"plan of policy {self.policy!r}: gpu_tokens {gpu.shape}, pim_tokens {pim.shape} and "
                            f"slot_gpu {self.slot_gpu.shape} must be 1-D of one length")
        if self.phys2log is None:
            if gpu.shape != counts.shape:
                raise PlanError(f"plan of policy {self.policy!r}: {gpu.shape[0]} slots for {counts.shape[0]} experts")
            totals = gpu + pim
        else:
            if self.phys2log.shape != gpu.shape or self.phys2log.min() < 0 or self.phys2log.max() >= counts.shape[0]:
                raise PlanError(f"plan of policy {self.policy!r}: phys2log must map each slot to an expert in "
                                f"[0, {counts.shape[0]})")
            totals = np.bincount(self.phys2log, weights=gpu + pim, minlength=counts.shape[0]).astype(np.int64)
        if gpu.size == 0:
            return
        if min(gpu.min(), pim.min()) < 0:
            name, arr = ("gpu_tokens", gpu) if gpu.min() < 0 else ("pim_tokens", pim)
            s = int(np.flatnonzero(arr < 0)[0])
            raise PlanError(f"plan of policy {self.policy!r}: {name}[{s}] = {int(arr[s])} is negative")
        if not np.array_equal(totals, counts):
            wrong = np.flatnonzero(totals != counts)
            e = int(wrong[0])
            raise PlanError(f"plan of policy {self.policy!r}: expert {e} has {int(counts[e])} routed tokens but the plan "
                            f"runs {int(totals[e])} of them ({wrong.size} expert(s) wrong)")
        if self.slot_gpu.min() < 0 or self.slot_gpu.max() >= self.num_gpus:
            raise PlanError(f"plan of policy {self.policy!r}: slot_gpu outside [0, {self.num_gpus})")

    def to_dict(self) -> dict:
        """JSON-serializable summary."""
        out = {
            "policy": self.policy,
            "num_gpus": self.num_gpus,
            "gpu_tokens": self.gpu_tokens.tolist(),
            "pim_tokens": self.pim_tokens.tolist(),
            "slot_gpu": self.slot_gpu.tolist(),
            "t_comm_s": self.t_comm_s,
            "t_gpu_s": self.t_gpu_s,
            "t_pim_s": self.t_pim_s,
            "predicted_time_s": self.predicted_time_s,
        }
        if self.phys2log is not None:
            out["phys2log"] = self.phys2log.tolist()
        return out
