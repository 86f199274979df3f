"""Expert parallelism over torch.distributed (NCCL on GPUs, gloo on CPUs).

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

from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist

from heteromoe.cost.model import CostModel
from heteromoe.routing.loads import loads_from_topk
from heteromoe.runtime.executor import MoEExecutor, check_inputs
from heteromoe.runtime.layer import ExpertLayer
from heteromoe.runtime.report import LayerStats
from heteromoe.runtime.work import WorkSlice
from heteromoe.sched.placement import Placement
from heteromoe.sched.plan import Plan, PlanError

__all__ = ["ExpertParallelExecutor", "route_pairs"]

GPU_SIDE, PIM_SIDE = 0, 1


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
    # each slot's range [start, start + total) within its expert's global order, slots in slot order
    by_expert = np.argsort(slot_expert, kind="stable")
    ends = np.cumsum(totals[by_expert])
    first = np.searchsorted(slot_expert[by_expert], slot_expert[by_expert])
    start_sorted = ends - totals[by_expert] - np.concatenate([[0], ends])[first]
    start = np.empty_like(totals)
    start[by_expert] = start_sorted
    # the slot of each pair: the last slot of its expert that starts at or before its position
    dest = np.empty(pos.size, dtype=np.int64)
    side = np.empty(pos.size, dtype=np.int64)
    for e in np.flatnonzero(local_counts):
        slots = by_expert[slot_expert[by_expert] == e]
        slots = slots[totals[slots] > 0]
        lo, hi = local_offsets[e], local_offsets[e + 1]
        which = np.searchsorted(start[slots], pos[lo:hi], side="right") - 1
        chosen = slots[which]
        dest[lo:hi] = plan.slot_gpu[chosen]
        side[lo:hi] = np.where(pos[lo:hi] - start[chosen] < plan.gpu_tokens[chosen], GPU_SIDE, PIM_SIDE)
    return dest, side


@dataclass
class ExpertParallelExecutor(MoEExecutor):
    """MoEExecutor across the ranks of `group`: num_gpus = the group's size, this rank's experts here."""

    group: object = None

    def __post_init__(self) -> None:
        if not dist.is_available() or not dist.is_initialized():
            raise RuntimeError("process_group= needs torch.distributed initialised (dist.init_process_group)")
        self.rank = dist.get_rank(self.group)
        self.world = dist.get_world_size(self.group)
        if self.num_gpus != self.world:
            raise ValueError(f"gpus={self.num_gpus} but the process group has {self.world} ranks")
        self._placement_version: dict[str, int] = {}

    # -- collectives -------------------------------------------------------------------------------
    def _device(self, like: torch.Tensor) -> torch.device:
        return like.device if dist.get_backend(self.group) == "nccl" else torch.device("cpu")

    def _all_gather_counts(self, counts: np.ndarray, device: torch.device) -> np.ndarray:
        local = torch.from_numpy(counts).to(device)
        gathered = [torch.empty_like(local) for _ in range(self.world)]
        dist.all_gather(gathered, local, group=self.group)
        return torch.stack(gathered).cpu().numpy()  # (G, E)

    def _all_to_all(self, send: torch.Tensor, send_splits: list[int], recv_splits: list[int]) -> torch.Tensor:
        recv = torch.empty((sum(recv_splits), *send.shape[1:]), dtype=send.dtype, device=send.device)
        dist.all_to_all_single(recv, send.contiguous(), output_split_sizes=recv_splits,
                               input_split_sizes=send_splits, group=self.group)
        return recv

    def _broadcast(self, obj):
        box = [obj]
        dist.broadcast_object_list(box, src=dist.get_global_rank(self.group, 0) if self.group else 0, group=self.group)
        return box[0]

    def _placement(self, layer: ExpertLayer, placement, counts: np.ndarray) -> Placement:
        if not hasattr(placement, "observe"):
            return placement
        current = placement.observe(counts)
        if self._placement_version.get(layer.name) != placement.replans:  # the slow loop replanned: rank 0's wins
            current = self._broadcast(current)
            placement.placement = current
            self._placement_version[layer.name] = placement.replans
        return current

    # -- one layer call ------------------------------------------------------------------------------
    def run(self, layer: ExpertLayer, cost: CostModel, placement, hidden: torch.Tensor, top_k_index: torch.Tensor,
            top_k_weights: torch.Tensor) -> torch.Tensor:
        check_inputs(layer, hidden, top_k_index, top_k_weights)
        num_tokens, top_k = top_k_index.shape
        device = self._device(hidden)
        local = loads_from_topk(top_k_index, layer.num_experts, where=layer.name)
        per_rank = self._all_gather_counts(local.counts, device)  # routing counts of every rank: (G, E)
        counts = per_rank.sum(axis=0)
        slots = self._placement(layer, placement, counts)
        plan = self.policy.plan(counts, slots, self.world, cost, origin=per_rank)
        if not getattr(self.policy, "deterministic", True):
            plan = self._broadcast(plan)
        dest, side = route_pairs(plan, per_rank, self.rank, local.counts, local.offsets)

        # dispatch: pairs sorted by destination rank (stable: expert-grouped within each)
        by_dest = np.argsort(dest, kind="stable")
        pairs = local.order[by_dest]  # flat pair indices t * k + slot
        send_splits = np.bincount(dest, minlength=self.world).tolist()
        split_t = torch.tensor(send_splits, dtype=torch.int64, device=device)
        recv_t = torch.empty_like(split_t)
        dist.all_to_all_single(recv_t, split_t, group=self.group)
        recv_splits = recv_t.cpu().tolist()
        pair_t = torch.from_numpy(pairs).to(hidden.device)
        flat_w = top_k_weights.reshape(-1)
        send_h = hidden[pair_t // top_k].to(device)
        send_w = flat_w[pair_t].to(device)
        meta = np.stack([np.repeat(np.arange(layer.num_experts), local.counts)[by_dest], side[by_dest]], axis=1)
        send_meta = torch.from_numpy(np.ascontiguousarray(meta)).to(device)
        recv_h = self._all_to_all(send_h, send_splits, recv_splits).to(hidden.device)
        recv_w = self._all_to_all(send_w, send_splits, recv_splits).to(hidden.device)
        recv_meta = self._all_to_all(send_meta, send_splits, recv_splits).cpu().numpy()

        # run what this rank received: one pseudo-batch of received rows (k = 1)
        out_dtype = torch.promote_types(hidden.dtype, top_k_weights.dtype)
        outputs = torch.zeros(recv_h.shape[0], hidden.shape[-1], dtype=out_dtype, device=hidden.device)
        stats = self.stats.setdefault(layer.name, LayerStats(layer.name))
        weights_1 = recv_w.reshape(-1, 1)
        for backend, flag in ((self.gpu_backend, GPU_SIDE), (self.pim_backend, PIM_SIDE)):
            rows = np.flatnonzero(recv_meta[:, 1] == flag)
            if rows.size == 0:
                continue
            rows = rows[np.argsort(recv_meta[rows, 0], kind="stable")]  # expert-contiguous
            experts, per = np.unique(recv_meta[rows, 0], return_counts=True)
            offsets = np.concatenate([[0], np.cumsum(per)]).astype(np.int64)
            work = WorkSlice(experts=experts, offsets=offsets, pair_index=rows.astype(np.int64), top_k=1)
            out, _ = self._run_with_fallback(backend, layer, recv_h, weights_1, work, stats)
            outputs[torch.from_numpy(rows).to(hidden.device)] = out.to(out_dtype)

        # combine: results back to the ranks their tokens live on, in the order they were sent
        back = self._all_to_all(outputs.to(device), recv_splits, send_splits).to(hidden.device)
        pairs_out = torch.zeros(num_tokens * top_k, hidden.shape[-1], dtype=out_dtype, device=hidden.device)
        pairs_out[pair_t] = back
        stats.add(plan, num_tokens)
        self.last_plans[layer.name] = plan
        return pairs_out.view(num_tokens, top_k, hidden.shape[-1]).sum(dim=1).to(hidden.dtype)
