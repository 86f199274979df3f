"""The cost model the scheduler and runtime share: GPU roofline + PIM model + links, per layer call."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from heteromoe.cost.gpu import GpuRoofline, gpu_time_s
from heteromoe.cost.gpu_table import GpuCostTable, find_table
from heteromoe.cost.layout import PIM_LAYOUTS, channel_groups
from heteromoe.cost.link import all_to_all_s
from heteromoe.cost.pim import PimCostModel, PimRooflineV1
from heteromoe.cost.pim_bank import BankPimCost
from heteromoe.spec.hardware import SystemSpec
from heteromoe.spec.model import MoEModelSpec

__all__ = ["TABLE_MAX_COUNT", "CostModel", "StepTimes", "default_gpu_cost", "default_pim_cost"]

#: The largest token count per slot that the planners' dense per-count tables (`CostModel.tables`) are built
#: for: above it the fast path plans on a coarser grid (`sched.policy.PlacementContext.fast_path`) and every
#: other lookup evaluates the cost functions at the counts themselves, so no lookup scales with the count.
TABLE_MAX_COUNT = 1 << 16


def default_gpu_cost(system: SystemSpec, model: MoEModelSpec) -> GpuRoofline | GpuCostTable:
    """A shipped table measured by `heteromoe calibrate` on this system's GPU for this expert shape, if
    there is one (what the runtime's kernels really take); the roofline otherwise."""
    table = find_table(system, model)
    return table if table is not None else GpuRoofline(system.require_gpu(), model)


def default_pim_cost(system: SystemSpec, model: MoEModelSpec) -> PimCostModel:
    """The bank-level timing model where the preset has DRAM timings; the v1 roofline otherwise
    (Logic-PIM, whose compute sits on the logic die, and presets without timings)."""
    if system.pim.kind == "bank" and system.pim.timings is not None:
        return BankPimCost(system.pim, model)
    return PimRooflineV1(system.pim, model)


@dataclass(frozen=True, eq=False)
class StepTimes:
    """Per-GPU times of one MoE layer call under a given split. Each array is [G] seconds."""

    t_comm_s: np.ndarray
    t_gpu_s: np.ndarray
    t_pim_s: np.ndarray

    @property
    def per_gpu_s(self) -> np.ndarray:
        """[G] max(T_comm, T_GPU, T_PIM): the parts overlap, the slowest one bounds the GPU."""
        return np.maximum(np.maximum(self.t_comm_s, self.t_gpu_s), self.t_pim_s)


class CostModel:
    """Costs of one MoE layer on one system: what the policies optimize and the runtime reports.

    Args:
        system: the hardware (must have a GPU).
        model: the expert shapes.
        pim_model: a PIM cost model; default `default_pim_cost` (bank-level model where timings exist).
        gpu_model: the GPU cost model; default `default_gpu_cost` (a shipped measured table for this GPU and
            expert shape, else the roofline); "roofline" forces the roofline.
        gpu_other_s: other GPU work overlapping the experts in the step (per GPU), default 0.
        pim_fixed_s: other fixed PIM work in the step (per GPU), default 0.
        attn_kv_bytes: KV-cache bytes decode attention reads per GPU in this layer (0: no attention
            modelled). Policies that put decode attention on PIM (all but `gpu-only`) add its PIM time
            to T_PIM; `gpu-only` adds its GPU time to T_GPU.
    """

    def __init__(self, system: SystemSpec, model: MoEModelSpec, pim_model: PimCostModel | None = None,
                 gpu_other_s: float = 0.0, pim_fixed_s: float = 0.0, attn_kv_bytes: float = 0.0,
                 gpu_model: GpuRoofline | GpuCostTable | str | None = None) -> None:
        self.system = system
        self.model = model
        gpu = system.require_gpu()
        if gpu_model is None:
            gpu_model = default_gpu_cost(system, model)
        elif gpu_model == "roofline":
            gpu_model = GpuRoofline(gpu, model)
        elif isinstance(gpu_model, str):
            raise ValueError(f"gpu_model must be 'roofline', a GpuRoofline or a GpuCostTable, got {gpu_model!r}")
        self.gpu = gpu_model
        self.pim = pim_model if pim_model is not None else default_pim_cost(system, model)
        for name, value in (("gpu_other_s", gpu_other_s), ("pim_fixed_s", pim_fixed_s), ("attn_kv_bytes", attn_kv_bytes)):
            if not value >= 0:
                raise ValueError(f"{name} must be >= 0, got {value}")
        self.gpu_other_s = float(gpu_other_s)
        self.pim_fixed_s = float(pim_fixed_s)
        self.attn_gpu_s = float(attn_kv_bytes) / (gpu.eta_bw * gpu.ext_bw_bytes_per_s)
        self.attn_pim_s = float(attn_kv_bytes) / system.pim.internal_bw_bytes_per_s
        self.channels_per_gpu = system.pim.stacks_per_gpu * system.pim.pseudo_channels_per_stack
        self._tables: tuple[np.ndarray, np.ndarray] = (np.zeros(0), np.zeros(0))
        self._tables_version = None
        self._fixed_arrays: dict[tuple[int, bool], tuple[np.ndarray, np.ndarray]] = {}

    def tables(self, max_count: int) -> tuple[np.ndarray, np.ndarray]:
        """(flop_tab, pim_tab): GPU compute and PIM seconds of one expert for n = 0..max_count tokens.

        Cached and grown by doubling: the fast-path kernels look costs up by token count. The planners ask
        for at most TABLE_MAX_COUNT tokens (`PlacementContext.fast_path`); lookups at given counts are
        `gpu_flop_s` / `pim_time_s`.
        """
        version = getattr(self.pim, "version", None)  # a learned table changes with what it observes
        if self._tables[0].shape[0] <= max_count or version != self._tables_version:
            self._tables_version = version
            size = max(64, 1 << int(max_count).bit_length())
            n = np.arange(size)
            self._tables = (self.gpu_flop_s(n), self.pim_time_s(n))
        return self._tables

    def gpu_flop_s(self, tokens) -> np.ndarray:
        """[n] GPU compute seconds of one expert for each entry of `tokens`: the values `tables()` holds,
        computed at the counts given (O(len(tokens)), whatever the counts)."""
        return np.asarray(self.gpu.flop_s(np.asarray(tokens, dtype=np.int64)), dtype=np.float64)

    def pim_time_s(self, tokens) -> np.ndarray:
        """[n] PIM seconds of one expert for each entry of `tokens` (the values `tables()` holds)."""
        return np.asarray(self.pim.times_s(np.asarray(tokens, dtype=np.int64)), dtype=np.float64)

    def fixed_arrays(self, num_gpus: int, attention_on_pim: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """`fixed_s` as [G] arrays (cached and read-only: the planners take them on every layer call)."""
        key = (num_gpus, attention_on_pim)
        cached = self._fixed_arrays.get(key)
        if cached is None:
            gpu_fixed, pim_fixed = self.fixed_s(attention_on_pim)
            cached = (np.full(num_gpus, gpu_fixed), np.full(num_gpus, pim_fixed))
            for arr in cached:
                arr.setflags(write=False)
            self._fixed_arrays[key] = cached
        return cached

    def fixed_s(self, attention_on_pim: bool = True) -> tuple[float, float]:
        """(GPU, PIM) seconds of work besides the experts, per GPU, with decode attention placed as asked."""
        if attention_on_pim:
            return self.gpu_other_s, self.pim_fixed_s + self.attn_pim_s
        return self.gpu_other_s + self.attn_gpu_s, self.pim_fixed_s

    def comm_s(self, counts: np.ndarray, slot_gpu: np.ndarray, num_gpus: int,
               origin: np.ndarray | None = None) -> np.ndarray:
        """[G] all-to-all seconds for `counts [P]` tokens per slot (optionally [G, P] by origin GPU)."""
        return all_to_all_s(counts, slot_gpu, num_gpus, self.system.link, self.model, origin)

    def pim_s_per_gpu(self, pim_tokens: np.ndarray, expert_gpu: np.ndarray, num_gpus: int,
                      pim_layout: str = "tp", groups_per_gpu: int | None = None) -> np.ndarray:
        """[G] PIM seconds of the experts alone: summed (tp) or the busiest group's (ep: `groups_per_gpu`
        expert-parallel groups per GPU, by default one per pseudo-channel)."""
        if pim_layout == "tp":
            return np.bincount(expert_gpu, weights=self.pim.times_s(pim_tokens), minlength=num_gpus)
        if pim_layout != "ep":
            raise ValueError(f"unknown PIM layout {pim_layout!r}; known: {PIM_LAYOUTS}")
        groups = self.channels_per_gpu if groups_per_gpu is None else groups_per_gpu
        group, share, slots = channel_groups(expert_gpu, num_gpus, groups)
        per_group = np.bincount(group, weights=self.pim.times_s(pim_tokens, share), minlength=slots)
        return per_group.reshape(num_gpus, groups).max(axis=1)

    def times(self, counts: np.ndarray, gpu_tokens: np.ndarray, pim_tokens: np.ndarray,
              expert_gpu: np.ndarray, num_gpus: int, *, attention_on_pim: bool = True,
              pim_layout: str = "tp", comm_s: np.ndarray | None = None) -> StepTimes:
        """Evaluate a split: `gpu_tokens [P]` on the SMs, `pim_tokens [P]` in PIM, slots on `expert_gpu`.

        `comm_s` ([G], e.g. from known token origins) replaces the uniform-origin all-to-all estimate."""
        gpu_fixed, pim_fixed = self.fixed_s(attention_on_pim)
        read = self.gpu.read_s(gpu_tokens)
        flop = self.gpu.flop_s(gpu_tokens)
        read_g = np.bincount(expert_gpu, weights=read, minlength=num_gpus)
        flop_g = np.bincount(expert_gpu, weights=flop, minlength=num_gpus)
        busy_g = np.bincount(expert_gpu, weights=(np.asarray(gpu_tokens) > 0).astype(np.float64), minlength=num_gpus)
        t_gpu = gpu_time_s(read_g, flop_g, busy_g > 0, self.gpu.launch_s, gpu_fixed)

        t_pim = self.pim_s_per_gpu(pim_tokens, expert_gpu, num_gpus, pim_layout) + pim_fixed
        if comm_s is None:
            comm_s = self.comm_s(counts, expert_gpu, num_gpus)
        return StepTimes(t_comm_s=comm_s, t_gpu_s=t_gpu, t_pim_s=t_pim)
