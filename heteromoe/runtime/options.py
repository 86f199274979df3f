"""The fused kernel path's options: `KernelTuning` (which kernel runs which batch) and `FusedOptions`
(whether the path runs, with which tuning and plan source: `wrap(..., fused=...)`).

The one environment override of the tuning, `HETEROMOE_SPLIT_K` (for measuring, `bench/gpu_splitk.sh`), is
read here, once, at import, into `DEFAULT_TUNING`; everything else is passed from Python.
"""
from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass

from heteromoe.kernels import check_pass_tiles
from heteromoe.kernels.grouped_triton import GroupedTile
from heteromoe.kernels.splitk import H100_SPLIT_K, SplitKRule

__all__ = ["DEFAULT_TUNING", "GROUPED_GEMMS", "FusedOptions", "KernelTuning"]

#: `KernelTuning.pass_tiles`'s rule: the 48-token pass from 16 routed pairs per expert on.
WIDE_PASS_TILES = 6
WIDE_PASS_PAIRS_PER_EXPERT = 16

#: What can run the hot side's grouped GEMMs (`KernelTuning.grouped_gemm`).
GROUPED_GEMMS = ("auto", "grouped_mm", "triton")


@dataclass(frozen=True)
class KernelTuning:
    """Which fused kernel runs which call (`runtime.fused.FusedLayerPath`); the defaults are the choices
    measured on the H100 machine (bench/results).

    Args:
        gemv_max_tokens: in kernel-choice mode, experts with at most this many tokens take the GEMV kernel.
        gemv_batch_tokens: batches of at most this many tokens run every expert on the GEMV kernel (H100
            sweep, bench/results/gpu-threshold-sweep-h100.json: faster than mixing up to 4 tokens).
        mma_max_tokens: batches of more than `gemv_batch_tokens` and at most this many tokens run every expert
            (gpu-only) or the hot side (plans) on the tensor-core kernel `expert_mma` (bf16/fp16; 0: never)...
        mma_min_warps_per_sm: ...where the down projection gives every SM at least this many warps (32 rows
            each) over the experts the batch can touch: a kernel streaming each expert's weights once per warp
            needs that many loads in flight. Shapes with few experts and long rows (Mixtral-8x7B: at most 8
            experts x 128 warps, K 14336) run the hot experts on the grouped GEMM instead (H100: Mixtral batch
            16 / 256 on the kernel 879 / 1685 us, bench/results/gpu-mma-sweep-h100.json, on grouped_mm + GEMV
            704.4 / 1225.8 us, gpu-layer-h100-7c6e5be.json; Qwen3-30B-A3B 240.5 / 466.5 on the kernel, the
            former, vs 263.8 / 486.0 us on grouped_mm + GEMV, the latter). With split-K the down projection's
            warps count once per split, unless Triton runs the grouped GEMM (`grouped_gemm`).
        streams: run the cold side on a second CUDA stream when both sides have work.
        split_k: how many K ranges the down projection is cut into (`heteromoe.kernels.splitk`: gpu-only calls,
            and a plan's GPU set on the tensor cores). Default: `splitk.H100_SPLIT_K`, the rule measured on an
            H100 (it splits only rows of at least 2048 elements: the Mixtral-8x7B shape's down projection);
            `SplitKRule()` never splits (`HETEROMOE_SPLIT_K=off`).
        mma_pass_tiles: the tensor-core kernel's pass in tiles of 8 tokens where a launch can give an expert more
            than 32 tokens: 0 the 32-token pass; 6, 8 or 16 the wide kernel (48 / 64 / 128 tokens per reading of
            an expert's weights, the weights one K chunk deep; docs/gpu-wide-pass.md); None (default): 6 where
            a call routes at least `WIDE_PASS_PAIRS_PER_EXPERT` (16) pairs per expert, else 0 (`pass_tiles`).
            `H100_SPLIT_K` still splits only up to 32 pairs per expert (one default pass): a wider pass wants
            a wider bound, e.g. `SplitKRule.from_env("h100:64")`.
        grouped_gemm: what runs the hot experts where the tensor-core kernel does not: "triton"
            (`kernels.grouped_triton`: the SiLU gate fused into the up projection, tokens read through the
            pairs, no gather), "grouped_mm" (torch's, after a gather, the gate apart), or "auto" (default):
            Triton where it is installed and the tensors are on a GPU, else grouped_mm. Where Triton runs the
            hot side, the tensor-core kernel takes a call only if its down projection has
            `mma_min_warps_per_sm` warps per SM unsplit: on an H100 the Triton kernel beat the split-K'd
            tensor-core kernel on the Mixtral-8x7B-shaped layer at 16 and 64 tokens (94.0 / 97.8 % of the read
            bandwidth against 88.6 / 91.6 %) and grouped_mm at 256 (83.6 against 74.6 %), and lost to the
            unsplit one on the Qwen3-30B-A3B shape at 64 (88.8 % with the tile the rule picks there against
            92.4 %): bench/results/gpu-grouped-h100.txt, docs/gpu-grouped-triton.md. "triton" warns (once) and counts each call where it cannot run.
        grouped_tile: the Triton kernel's tile (None: `grouped_triton.tile_for`'s choice by tokens per expert).
    """

    gemv_max_tokens: int = 2
    gemv_batch_tokens: int = 4
    mma_max_tokens: int = 256
    mma_min_warps_per_sm: int = 8
    streams: bool = True
    split_k: SplitKRule = H100_SPLIT_K
    mma_pass_tiles: int | None = None
    grouped_gemm: str = "auto"
    grouped_tile: GroupedTile | None = None

    def __post_init__(self) -> None:
        if self.mma_pass_tiles is not None:
            check_pass_tiles(self.mma_pass_tiles, name="mma_pass_tiles")
        if self.grouped_gemm not in GROUPED_GEMMS:
            raise ValueError(f"grouped_gemm must be one of {GROUPED_GEMMS}, got {self.grouped_gemm!r}")
        if self.grouped_tile is not None and not isinstance(self.grouped_tile, GroupedTile):
            raise ValueError(f"grouped_tile must be a GroupedTile or None, got {self.grouped_tile!r} "
                             "(GroupedTile.parse('128x64x64w8s4') reads the spelled form)")
        if self.gemv_max_tokens < 1:
            raise ValueError(f"gemv_max_tokens must be >= 1, got {self.gemv_max_tokens}")
        for name in ("gemv_batch_tokens", "mma_max_tokens", "mma_min_warps_per_sm"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")

    def pass_tiles(self, num_pairs: int, num_experts: int) -> int:
        """The tensor-core pass of a call routing `num_pairs` pairs over `num_experts` experts: `mma_pass_tiles`,
        or by the rule where it is None. The rule, measured on H100s (Qwen3-30B-A3B-shaped layer, gpu-only,
        graph clock): at 256 tokens (16 pairs per expert, the busiest experts of 35-41 tokens) the 48-token pass
        was 1.2 % and 0.4 % faster on two machines (one reading per expert instead of two for the busiest); at
        128 tokens (8 per expert) 1.1 % slower, at 64 the same (bench/results/gpu-wide-pass-h100.txt,
        gpu-wide6-h100-qwen3.txt)."""
        if self.mma_pass_tiles is not None:
            return self.mma_pass_tiles
        return WIDE_PASS_TILES if num_pairs >= WIDE_PASS_PAIRS_PER_EXPERT * num_experts else 0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> KernelTuning:
        """The defaults with the environment's override, `HETEROMOE_SPLIT_K` (see `SplitKRule.from_env`; `off`
        never splits). Only this constructor reads the environment: a `KernelTuning(...)` built in code takes
        its `split_k` from its arguments (`dataclasses.replace(DEFAULT_TUNING, ...)` keeps the override)."""
        return cls(split_k=SplitKRule.from_env(environ.get("HETEROMOE_SPLIT_K")))


#: The tuning a FusedLayerPath gets by default: the defaults and the environment's override, read once.
DEFAULT_TUNING = KernelTuning.from_env()


@dataclass(frozen=True)
class FusedOptions:
    """Whether and how the fused kernels (`runtime.fused`) run a wrapped model's layer calls.

    Args:
        enabled: None (default): on for CUDA calls; True: also on CPU (float32, C++ / numba kernels);
            False: off (every call on the backends).
        tuning: the kernels' choices (KernelTuning; default: DEFAULT_TUNING).
        plan_ahead: on CUDA, plan each layer call from the layer's previous call's counts (copied to the host
            without waiting), so the host never stalls the device (`runtime.plan_sources.AheadPlans`); off:
            every call's plan is made from its own counts, after one device-to-host copy.
        plan_on_device: on CUDA with a policy whose `device_rule` the device planner runs (`sieve`,
            `heteromoe`) on one GPU, plan inside the routing kernel from the call's own counts (the same rule
            and doubles as the host planner): no host plan, no wait, capturable in a CUDA graph (use it
            there); statistics are settled lazily. Off by default: not knowing the plan, the host must
            launch the grouped side every call, which costs more in eager mode than the host plan's copy
            when the plan puts every expert on PIM (small batches). Takes precedence over plan_ahead.
    """

    enabled: bool | None = None
    tuning: KernelTuning = DEFAULT_TUNING
    plan_ahead: bool = False
    plan_on_device: bool = False

    def __post_init__(self) -> None:
        if self.enabled not in (None, True, False):
            raise ValueError(f"FusedOptions.enabled must be None, True or False, got {self.enabled!r}")

    @classmethod
    def of(cls, fused: bool | None | FusedOptions, **overrides) -> FusedOptions:
        """Options from `wrap`'s `fused=` (a bool, None or FusedOptions) and its shorthand keywords
        (`gemv_max_tokens`: the tuning's field, `plan_ahead`, `plan_on_device`; None: not given)."""
        options = fused if isinstance(fused, cls) else cls(enabled=fused)
        given = {k: v for k, v in overrides.items() if v is not None}
        if given and isinstance(fused, cls):
            raise ValueError(f"pass {sorted(given)} inside FusedOptions(...), not beside fused=FusedOptions(...)")
        if "gemv_max_tokens" in given:
            given["tuning"] = dataclasses.replace(options.tuning, gemv_max_tokens=given.pop("gemv_max_tokens"))
        return dataclasses.replace(options, **given) if given else options
