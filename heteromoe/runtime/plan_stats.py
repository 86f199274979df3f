"""Statistics of plans made on the device, settled many calls at a time.

A call planned on the device (`runtime.plan_sources.DevicePlans`) leaves its plan's GPU tokens and the
counts on the device. Turning each call's plan into a `Plan` and its predicted times on the host (cost
model, Plan, validation, statistics) was about half of such a call's host time on the H100 machine
(bench/results/profile-device-plan-host-h100-a08f06a.txt). So the kernel writes both rows into the next
row of a per-layer device ring; a full ring goes to pinned host memory in one copy, without waiting, and is
settled, vectorized over its calls, when the next ring fills (or at `flush()`): the host never waits for
the device, and no call pays for statistics.

The vectorized predicted times are `CostModel.times` for one GPU and the `tp` PIM layout (the device
planner's case), summed per call: equal to the per-call path up to float summation order (tested).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from heteromoe.cost.gpu import gpu_time_s
from heteromoe.cost.model import CostModel
from heteromoe.runtime.report import LayerStats
from heteromoe.sched.plan import Plan, PlanError

__all__ = ["PlanRing", "settle_rows", "exact_plan"]

RING_CALLS = 64


def exact_plan(cost: CostModel, policy, take: np.ndarray, counts: np.ndarray) -> Plan:
    """One call's Plan through the per-call path (CostModel.times, validated): the layer's `last_plans`."""
    take = take.astype(np.int64)
    counts = counts.astype(np.int64)
    slot_gpu = np.zeros(counts.shape[0], dtype=np.int64)
    pim = counts - take
    times = cost.times(counts, take, pim, slot_gpu, 1, attention_on_pim=policy.attention_on_pim,
                       pim_layout=policy.pim_layout)
    plan = Plan(policy=policy.name, slot_gpu=slot_gpu, gpu_tokens=take, pim_tokens=pim,
                per_gpu_t_comm_s=times.t_comm_s, per_gpu_t_gpu_s=times.t_gpu_s, per_gpu_t_pim_s=times.t_pim_s,
                info={"planned_on": "device"})
    plan.validate(counts)
    return plan


def settle_rows(cost: CostModel, policy, take: np.ndarray, counts: np.ndarray, tokens: np.ndarray,
                stats: LayerStats) -> tuple[int, int]:
    """Add R calls' plans (`take`, `counts`: [R, E] GPU tokens and tokens per expert; `tokens`: [R] tokens
    per call) to `stats`, as R `LayerStats.add` calls would. Returns (calls with PIM work, PIM pairs). Raises PlanError naming the call and expert when a plan is impossible."""
    take = np.asarray(take, dtype=np.int64)
    counts = np.asarray(counts, dtype=np.int64)
    pim = counts - take
    bad = (take < 0) | (pim < 0)
    if bad.any():
        r, e = (int(i) for i in np.argwhere(bad)[0])
        raise PlanError(f"device plan of policy {policy.name!r}, call {r} of the batch: expert {e} has "
                        f"{int(counts[r, e])} routed tokens and {int(take[r, e])} on the GPU")
    gpu_fixed, pim_fixed = cost.fixed_s(policy.attention_on_pim)
    # per-expert seconds by token count from the cost model's cached tables (the planners' own lookups: the
    # same elementwise values as cost.gpu.flop_s / cost.pim.times_s, without evaluating them on R x E counts)
    flop_tab, pim_tab = cost.tables(int(counts.max(initial=0)))
    read = cost.gpu.read_s(take).sum(axis=1)
    flop = flop_tab[take].sum(axis=1)
    busy = (take > 0).any(axis=1)
    t_gpu = gpu_time_s(read, flop, busy, cost.gpu.launch_s, gpu_fixed)
    t_pim = pim_tab[pim].sum(axis=1) + pim_fixed
    # device plans are one-GPU plans, whose all-to-all estimate does not depend on the counts (no link)
    slot_gpu = np.zeros(counts.shape[1], dtype=np.int64)
    t_comm = np.full(counts.shape[0], float(cost.comm_s(counts[0], slot_gpu, 1)[0]))
    with_pim = pim.sum(axis=1)
    stats.add_sums(calls=counts.shape[0], tokens=int(np.sum(tokens)), pairs=int(counts.sum()),
                   gpu_experts=int((take > 0).sum()), pim_experts=int((pim > 0).sum()),
                   gpu_tokens=int(take.sum()), pim_tokens=int(pim.sum()),
                   pim_calls=int((with_pim > 0).sum()), t_comm_s=float(t_comm.sum()),
                   t_gpu_s=float(t_gpu.sum()), t_pim_s=float(t_pim.sum()),
                   predicted_time_s=float(np.maximum(np.maximum(t_comm, t_gpu), t_pim).sum()))
    return int((with_pim > 0).sum()), int(with_pim.sum())


@dataclass
class PlanRing:
    """Two device rings of RING_CALLS rows ([2, E] each: GPU tokens, counts) for one layer, used in turn:
    while one fills, the other's copy to pinned host memory is in flight (its event waited on only when
    the filling one is full, RING_CALLS calls later)."""

    device_rows: torch.Tensor  # [2, RING_CALLS, 2, E] int32
    host_rows: torch.Tensor  # the same, pinned
    rows: list  # rows[half][i]: views of device_rows, made once (a view per call costs microseconds)
    events: list
    cost: CostModel
    half: int = 0
    used: int = 0
    tokens: list = field(default_factory=lambda: [[], []])
    in_flight: int | None = None

    @classmethod
    def allocate(cls, num_experts: int, device: torch.device, cost: CostModel) -> PlanRing:
        dev = torch.zeros(2, RING_CALLS, 2, num_experts, dtype=torch.int32, device=device)
        host = torch.zeros(2, RING_CALLS, 2, num_experts, dtype=torch.int32, pin_memory=True)
        rows = [[dev[h, i] for i in range(RING_CALLS)] for h in range(2)]
        return cls(dev, host, rows, [torch.cuda.Event(), torch.cuda.Event()], cost)

    def next_row(self, num_tokens: int) -> torch.Tensor:
        """The row this call's kernel writes."""
        row = self.rows[self.half][self.used]
        self.used += 1
        self.tokens[self.half].append(num_tokens)
        return row

    @property
    def full(self) -> bool:
        return self.used == RING_CALLS

    def ship(self) -> tuple[np.ndarray, list] | None:
        """The full ring goes to the host (no wait); returns the ring shipped before, now settled-ready
        (rows [R, 2, E], tokens [R]), if any."""
        ready = self.collect()
        self.host_rows[self.half].copy_(self.device_rows[self.half], non_blocking=True)
        self.events[self.half].record()
        self.in_flight = self.half
        self.half ^= 1
        self.used = 0
        return ready

    def collect(self) -> tuple[np.ndarray, list] | None:
        """The ring in flight, once its copy is done (waits for it: normally long done)."""
        if self.in_flight is None:
            return None
        h, self.in_flight = self.in_flight, None
        self.events[h].synchronize()
        rows, tokens = self.host_rows[h].numpy().copy(), self.tokens[h]
        self.tokens[h] = []
        return rows, tokens

    def drain(self) -> list[tuple[np.ndarray, list]]:
        """Everything not settled yet: the ring in flight, then the filling one's rows (a blocking copy)."""
        out = []
        ready = self.collect()
        if ready is not None:
            out.append(ready)
        if self.used:
            rows = self.device_rows[self.half, : self.used].cpu().numpy()
            out.append((rows, self.tokens[self.half]))
            self.tokens[self.half] = []
            self.used = 0
        return out
