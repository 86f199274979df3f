"""Modeling switches of the step simulator, one per modeling change, so an ablation can turn each off.

`StepOptions()` is the physical step model (docs/step-model.md); `StepOptions.legacy()` is the serialized
layer model (attention as KV bytes over the internal bandwidth, serialized before one expert
window; every layer charged full-attention projections; no launch cost on dense work; PIMoE's experts in
channel groups; PIM truth = the planners' closed form). Each field names one change.
"""
from __future__ import annotations

from dataclasses import dataclass, fields, replace

__all__ = ["ABLATIONS", "StepOptions"]


@dataclass(frozen=True)
class StepOptions:
    """What the simulator models.

    Attributes:
        pim_attention: "bank": decode attention on PIM runs through the bank-level timing model, the GQA
            group's query heads as that many GEMV vectors over the same K / V rows (no row reuse);
            "bytes": KV bytes over the internal bandwidth.
        co_execution: each policy runs its own number of sub-batches (`Policy.sub_batches`), the layer is
            a dependency graph per sub-batch, and each planner sees what its paper says it sees (Sieve:
            attention in T_PIM and the dense GPU work in T_GPU). Off: one sub-batch, planners see the
            expert window only.
        linear_attention: Gated DeltaNet layers of hybrid models get their own projections and recurrent
            state (GPU); off: every layer is charged full-attention projections and no attention core.
        dense_launch: every dense GPU kernel (projections, router, attention core on the GPU, shared
            experts) pays the GPU's launch overhead, as the expert grouped GEMM does.
        pimoe_stack_groups: PIMoE's expert-parallel groups are the GPU's PIM stacks (one expert's weights
            over the channels of one stack); off: groups of channels (min(local experts, channels)).
        pimoe_no_overshoot: PIMoE moves an expert to the GPU only while the GPU stays the faster side
            (Sieve §5.2's account of PIMoE); off: it keeps the move that makes the GPU slower (§7.1).
        pim_truth: "walk": PIM operations take the bank model's busy time with refresh stalls placed at the
            operation's real start (the command walk's rule), and Sieve's planner learns observed PIM times
            in its EMA table (§5.1) while the others keep the closed form; "closed": the closed form with the
            expected refresh factor is both the truth and every planner's estimate.
        pim_separate_paths: PIM commands have their own path and NeuPIMs' dual row buffers (Sieve §7.1: "dual
            row buffers in NeuPIMs", "separate paths for DRAM and PIM commands" for every method): a GEMV
            pays no all-bank mode switch; it still writes its input, streams and reads its results back.
            Off: each GEMV also enters and leaves all-bank mode (the bank model's sequence).
    """

    pim_attention: str = "bank"
    co_execution: bool = True
    linear_attention: bool = True
    dense_launch: bool = True
    pimoe_stack_groups: bool = True
    pimoe_no_overshoot: bool = True
    pim_truth: str = "walk"
    pim_separate_paths: bool = True

    def __post_init__(self) -> None:
        if self.pim_attention not in ("bank", "bytes"):
            raise ValueError(f"pim_attention must be 'bank' or 'bytes', got {self.pim_attention!r}")
        if self.pim_truth not in ("walk", "closed"):
            raise ValueError(f"pim_truth must be 'walk' or 'closed', got {self.pim_truth!r}")

    @classmethod
    def legacy(cls) -> StepOptions:
        """The serialized layer model (every switch off)."""
        return cls(pim_attention="bytes", co_execution=False, linear_attention=False, dense_launch=False,
                   pimoe_stack_groups=False, pimoe_no_overshoot=False, pim_truth="closed",
                   pim_separate_paths=False)

    @property
    def is_legacy(self) -> bool:
        return self == StepOptions.legacy()

    def without(self, name: str) -> StepOptions:
        """These options with the change `name` (one of ABLATIONS) turned off."""
        if name not in ABLATIONS:
            raise ValueError(f"unknown modeling change {name!r}; known: {', '.join(ABLATIONS)}")
        off = StepOptions.legacy()
        return replace(self, **{name: getattr(off, name)})


ABLATIONS = tuple(f.name for f in fields(StepOptions))
