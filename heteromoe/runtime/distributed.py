"""Expert parallelism over torch.distributed (NCCL on GPUs, gloo on CPUs): the all-to-all dispatch role.

Each rank runs its own share of the batch through the whole model (attention and everything else
data-parallel) and owns the experts whose slots the placement puts on it. Per MoE layer call:

    routing (local top_k_index) -> AllGather of per-expert counts -> the same plan on every rank
      -> all-to-all dispatch of each pair to the rank of its slot -> that rank runs them (GPU set on the
         GPU backend, PIM set on the PIM backend, fallback on failure) -> all-to-all combine -> weighted sum

The plan is deterministic given the gathered counts, so every rank computes it itself; a policy that is
not (`exact`, with a time limit) and the replica placement of the slow loop are broadcast from rank 0.
An expert's pairs are ordered globally by (origin rank, local order): the plan's per-slot ranges and
GPU/PIM prefixes refer to that order, which every rank can compute from the gathered counts.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist

from heteromoe.runtime.call import LayerCall
from heteromoe.runtime.dispatch import GPU_SIDE, PIM_SIDE, Dispatch, RunSide, combine
from heteromoe.runtime.split import slot_starts
from heteromoe.runtime.work import WorkSlice
from heteromoe.sched.placement import Placement
from heteromoe.sched.plan import Plan, PlanError
from heteromoe.sched.replicas import ReplicaPlanner

__all__ = ["GPU_SIDE", "PIM_SIDE", "AllToAllDispatch", "route_pairs"]


def route_pairs(plan: Plan, per_rank_counts: np.ndarray, rank: int, local_counts: np.ndarray,
                local_offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each of this rank's pairs runs.

    Args:
        plan: the layer's plan (over slots).
        per_rank_counts: [G, E] tokens of each expert on each rank.
        local_counts / local_offsets: this rank's [E] counts and [E+1] offsets into its expert-grouped order.
    Returns:
        dest_rank [P_local] and side [P_local] (GPU_SIDE / PIM_SIDE) of each pair, in the local
        expert-grouped order.
    """
    E = per_rank_counts.shape[1]
    slot_expert = plan.slot_expert
    totals = plan.gpu_tokens + plan.pim_tokens
    if not np.array_equal(np.bincount(slot_expert, weights=totals, minlength=E).astype(np.int64),
                          per_rank_counts.sum(axis=0)):
        raise PlanError("the plan does not cover the gathered counts")
    # global position of each local pair within its expert: tokens of lower ranks first
    base = per_rank_counts[:rank].sum(axis=0)  # (E,)
    expert_of_pos = np.repeat(np.arange(E), local_counts)
    pos = base[expert_of_pos] + (np.arange(expert_of_pos.size) - local_offsets[expert_of_pos])
    start = slot_starts(plan)  # each slot's range [start, start + total) within its expert's global order
    # the slot of each pair: the last slot of its expert that starts at or before its position
    dest = np.empty(pos.size, dtype=np.int64)
    side = np.empty(pos.size, dtype=np.int64)
    for e in np.flatnonzero(local_counts):
        slots = np.flatnonzero((slot_expert == e) & (totals > 0))  # in slot order
        lo, hi = local_offsets[e], local_offsets[e + 1]
        which = np.searchsorted(start[slots], pos[lo:hi], side="right") - 1
        chosen = slots[which]
        dest[lo:hi] = plan.slot_gpu[chosen]
        side[lo:hi] = np.where(pos[lo:hi] - start[chosen] < plan.gpu_tokens[chosen], GPU_SIDE, PIM_SIDE)
    return dest, side


class AllToAllDispatch(Dispatch):
    """Dispatch across the ranks of `group`: num_gpus = the group's size, this rank's experts here."""

    name = "all-to-all"
    local = False

    def __init__(self, group, num_gpus: int | None = None) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("process_group= needs torch.distributed initialised (dist.init_process_group)")
        self.group = group
        self.rank = dist.get_rank(group)
        self.num_gpus = dist.get_world_size(group)
        if num_gpus is not None and num_gpus != self.num_gpus:
            raise ValueError(f"gpus={num_gpus} but the process group has {self.num_gpus} ranks")
        self._placement_version: dict[str, int] = {}  # per layer: the replica planner's replan rank 0 sent

    # -- collectives -------------------------------------------------------------------------------
    def _device(self, like: torch.Tensor) -> torch.device:
        return like.device if dist.get_backend(self.group) == "nccl" else torch.device("cpu")

    def _all_to_all(self, send: torch.Tensor, send_splits: list[int], recv_splits: list[int]) -> torch.Tensor:
        recv = torch.empty((sum(recv_splits), *send.shape[1:]), dtype=send.dtype, device=send.device)
        dist.all_to_all_single(recv, send.contiguous(), output_split_sizes=recv_splits,
                               input_split_sizes=send_splits, group=self.group)
        return recv

    def _broadcast(self, obj):
        box = [obj]
        dist.broadcast_object_list(box, src=dist.get_global_rank(self.group, 0) if self.group else 0, group=self.group)
        return box[0]

    # -- planning ------------------------------------------------------------------------------------
    def counts(self, call: LayerCall) -> tuple[np.ndarray, np.ndarray]:
        """The counts of every rank (AllGather), kept on the call (`call.rank_counts`) for its `run`."""
        local = torch.from_numpy(call.loads.counts).to(self._device(call.hidden))
        gathered = [torch.empty_like(local) for _ in range(self.num_gpus)]
        dist.all_gather(gathered, local, group=self.group)
        call.rank_counts = torch.stack(gathered).cpu().numpy()  # routing counts of every rank: (G, E)
        return call.rank_counts.sum(axis=0), call.rank_counts

    def placement(self, call: LayerCall, counts: np.ndarray) -> Placement:
        planner = call.placement
        if not isinstance(planner, ReplicaPlanner):
            return planner
        current = planner.observe(counts)
        name = call.layer.name
        if self._placement_version.get(name) != planner.replans:  # the slow loop replanned: rank 0's wins
            current = self._broadcast(current)
            planner.placement = current
            self._placement_version[name] = planner.replans
        return current

    def agree(self, plan: Plan, policy) -> Plan:
        return plan if getattr(policy, "deterministic", True) else self._broadcast(plan)

    # -- one layer call ------------------------------------------------------------------------------
    def run(self, call: LayerCall, plan: Plan, run_side: RunSide) -> torch.Tensor:
        hidden, local = call.hidden, call.loads
        top_k, num_experts = call.top_k, call.layer.num_experts
        device = self._device(hidden)
        if call.rank_counts is None:
            raise RuntimeError(f"layer {call.layer.name}: AllToAllDispatch.run needs the call planned by its "
                               "plan() first (it gathers every rank's counts)")
        dest, side = route_pairs(plan, call.rank_counts, self.rank, local.counts, local.offsets)

        # dispatch: pairs sorted by destination rank (stable: expert-grouped within each)
        by_dest = np.argsort(dest, kind="stable")
        pairs = local.order[by_dest]  # flat pair indices t * k + slot
        send_splits = np.bincount(dest, minlength=self.num_gpus).tolist()
        split_t = torch.tensor(send_splits, dtype=torch.int64, device=device)
        recv_t = torch.empty_like(split_t)
        dist.all_to_all_single(recv_t, split_t, group=self.group)
        recv_splits = recv_t.cpu().tolist()
        pair_t = torch.from_numpy(pairs).to(hidden.device)
        send_h = hidden[pair_t // top_k].to(device)
        send_w = call.top_k_weights.reshape(-1)[pair_t].to(device)
        meta = np.stack([np.repeat(np.arange(num_experts), local.counts)[by_dest], side[by_dest]], axis=1)
        send_meta = torch.from_numpy(np.ascontiguousarray(meta)).to(device)
        recv_h = self._all_to_all(send_h, send_splits, recv_splits).to(hidden.device)
        recv_w = self._all_to_all(send_w, send_splits, recv_splits).to(hidden.device)
        recv_meta = self._all_to_all(send_meta, send_splits, recv_splits).cpu().numpy()

        # run what this rank received: one pseudo-batch of received rows (k = 1)
        out_dtype = call.out_dtype
        outputs = torch.zeros(recv_h.shape[0], hidden.shape[-1], dtype=out_dtype, device=hidden.device)
        weights_1 = recv_w.reshape(-1, 1)
        for flag in (GPU_SIDE, PIM_SIDE):
            rows = np.flatnonzero(recv_meta[:, 1] == flag)
            if rows.size == 0:
                continue
            rows = rows[np.argsort(recv_meta[rows, 0], kind="stable")]  # expert-contiguous
            experts, per = np.unique(recv_meta[rows, 0], return_counts=True)
            offsets = np.concatenate([[0], np.cumsum(per)]).astype(np.int64)
            work = WorkSlice(experts=experts, offsets=offsets, pair_index=rows.astype(np.int64), top_k=1)
            outputs[torch.from_numpy(rows).to(hidden.device)] = run_side(flag, recv_h, weights_1, work).to(out_dtype)

        # combine: results back to the ranks their tokens live on, in the order they were sent
        back = self._all_to_all(outputs.to(device), recv_splits, send_splits).to(hidden.device)
        pairs_out = torch.zeros(call.num_tokens * top_k, hidden.shape[-1], dtype=out_dtype, device=hidden.device)
        pairs_out[pair_t] = back
        return combine(pairs_out, call)
