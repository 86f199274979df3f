"""Split-K for the down projection: how many ranges of K one launch cuts each row into.

A layer with few experts and long rows (8 experts, K = 14336) gives the down projection few warps per SM: each
warp streams a 28 KB row (or a 16-row fragment of them) with one or two loads in flight, and the last wave of
a launch leaves most SMs idle. Cut K into S ranges and the launch has S times the warps, each streaming a
S-th of its rows; the CUDA kernels write fp32 partial sums and reduce them in split order (deterministic;
only the order of the fp32 additions differs from one launch over all of K).

`SplitKRule` picks S from the launch's shape, never from a model's name: the warps the down projection would
put on each SM (the experts a call can touch x the warps per expert of the kernel that runs it), against a
target measured on the device (`bench/gpu_splitk.sh` sweeps S). `H100_SPLIT_K`, the fused path's default
(`KernelTuning.split_k`), holds the targets measured on an H100; `SplitKRule()` never splits
(`HETEROMOE_SPLIT_K=off` or `KernelTuning(split_k=SplitKRule())`).
"""
from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Literal

__all__ = ["H100_SPLIT_K", "SPLIT_K_GRAIN", "SplitKRule", "down_warps", "expected_experts", "launched_splits"]

#: K elements per split are a multiple of this (every kernel's K step divides it): `_cuda.SPLIT_K_GRAIN`.
SPLIT_K_GRAIN = 256

Kernel = Literal["gemv", "mma"]


def launched_splits(k_splits: int, k_dim: int) -> int:
    """The splits the CUDA kernels launch for `k_splits` requested over a row of `k_dim` elements: each split a
    multiple of SPLIT_K_GRAIN elements, none empty (so fewer than requested where K is short)."""
    if k_splits < 1:
        raise ValueError(f"k_splits must be >= 1, got {k_splits}")
    if k_splits == 1 or k_dim <= SPLIT_K_GRAIN:
        return 1
    per = math.ceil(math.ceil(k_dim / k_splits) / SPLIT_K_GRAIN) * SPLIT_K_GRAIN
    return 1 if per >= k_dim else math.ceil(k_dim / per)


def expected_experts(num_experts: int, top_k: int, tokens: int) -> float:
    """The experts a call of `tokens` tokens touches, expected under uniform routing: E (1 - (1 - k/E)^T).
    The host does not see the counts (they stay on the device); this is exact for one token (k experts) and
    tends to E as T grows. Skewed routing touches fewer, so a rule fed this errs towards fewer splits."""
    if num_experts <= 0 or top_k <= 0 or tokens <= 0:
        return 0.0
    return num_experts * (1.0 - (1.0 - min(top_k, num_experts) / num_experts) ** tokens)


def _gemv_rows_per_warp(tokens: int) -> int:
    """expert_gemv's output rows per warp: 4 for a pass of one or two tokens, 2 above (rows_per_warp in the .cu)."""
    return 4 if min(tokens, 8) <= 2 else 2


def down_warps(kernel: Kernel, out_rows: int, experts: float, tokens: int) -> float:
    """Warps of one down-projection launch over `experts` experts of `out_rows` rows, for a call whose experts
    have at most `tokens` tokens: the GEMV's warps own 4 or 2 rows (by its token tile), the tensor-core kernels'
    one 16-row fragment (their default shapes for a projection without the gate, 1 to 256 tokens)."""
    if kernel == "gemv":
        rows = _gemv_rows_per_warp(tokens)
    elif kernel == "mma":
        rows = 16
    else:
        raise ValueError(f"kernel must be 'gemv' or 'mma', got {kernel!r}")
    return experts * math.ceil(out_rows / rows)


@dataclass(frozen=True)
class SplitKRule:
    """The number of K splits of a down projection (1: none).

    Args:
        gemv_warps_per_sm: on the GEMV, split while the launch would give each SM fewer warps than this, into
            the fewest splits that reach it (0: never split, the default).
        mma_warps_per_sm: the same on the tensor-core kernels (they keep fewer warps resident per SM than the
            GEMV, so their target is measured apart).
        mma_max_tokens_per_expert: on the tensor-core kernels, split only while the call's routed pairs per
            touched expert stay at or below this (one pass of `expert_mma_smem` holds 32 tokens; an expert of
            more tokens is read again per pass, and the split launch then loses: see H100_SPLIT_K).
        min_k_per_split: no split shorter than this many K elements (short rows gain nothing: their warps
            are short already).
        max_splits: at most this many splits.
        fixed: every launch whose K allows it gets this many splits (for measuring; overrides the targets).
    """

    gemv_warps_per_sm: float = 0.0
    mma_warps_per_sm: float = 0.0
    mma_max_tokens_per_expert: float = math.inf
    min_k_per_split: int = 1024
    max_splits: int = 8
    fixed: int | None = None

    def __post_init__(self) -> None:
        for name in ("gemv_warps_per_sm", "mma_warps_per_sm", "mma_max_tokens_per_expert"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.min_k_per_split < SPLIT_K_GRAIN:
            raise ValueError(f"min_k_per_split must be >= {SPLIT_K_GRAIN}, got {self.min_k_per_split}")
        if self.max_splits < 1:
            raise ValueError(f"max_splits must be >= 1, got {self.max_splits}")
        if self.fixed is not None and self.fixed < 1:
            raise ValueError(f"fixed must be >= 1 (or None), got {self.fixed}")

    @functools.cached_property
    def splits_ever(self) -> bool:
        """Whether this rule can split at all (the default cannot; read on every layer call, so cached)."""
        targets = self.gemv_warps_per_sm > 0 or self.mma_warps_per_sm > 0
        return (self.fixed or 1) > 1 or (targets and self.max_splits > 1)

    def splits(self, kernel: Kernel, *, k_dim: int, out_rows: int, experts: float, tokens: int, sms: int,
               pairs: int | None = None) -> int:
        """Splits for a down projection of rows of `k_dim` elements on `kernel`, over `experts` experts (the
        caller's estimate, e.g. `expected_experts`) with at most `tokens` tokens each, on a GPU of `sms` SMs,
        for a call of `pairs` routed pairs where known (what to pass as `k_splits`)."""
        if not self.splits_ever or experts <= 0:
            return 1
        if (kernel == "mma" and self.fixed is None and pairs is not None
                and pairs / experts > self.mma_max_tokens_per_expert):
            return 1
        by_k = max(1, k_dim // self.min_k_per_split)  # the most splits K allows
        if self.fixed is not None:
            want = self.fixed
        else:
            target = self.gemv_warps_per_sm if kernel == "gemv" else self.mma_warps_per_sm
            warps = down_warps(kernel, out_rows, experts, tokens)
            want = math.ceil(target * sms / warps) if warps and target > 0 else 1
        return max(1, min(want, by_k, self.max_splits))

    @classmethod
    def from_env(cls, value: str | None) -> SplitKRule:
        """A rule from a setting such as HETEROMOE_SPLIT_K: unset, "" or "h100" -> H100_SPLIT_K (the default),
        "off" -> never split, an integer N -> `fixed=N`, "warps:W" -> both targets W, "warps:G/M" -> GEMV target G,
        tensor-core target M (no tokens-per-expert bound: for sweeps). "h100" and "warps:..." take a bound on the
        tensor cores' pairs per expert after a second colon (`mma_max_tokens_per_expert`): "h100:64" is
        H100_SPLIT_K splitting up to 64 pairs per expert (one pass of the 8-tile kernel), "warps:256/30:64"."""
        if not value or value == "h100":
            return H100_SPLIT_K
        if value == "off":
            return cls()
        try:
            if value.startswith("h100:") or value.count(":") == 2:
                head, _, bound = value.rpartition(":")
                if not bound or math.isnan(float(bound)):
                    raise ValueError(f"the bound after the last ':' must be a number, got {bound!r}")
                base = H100_SPLIT_K if head == "h100" else cls._targets(head)
                return dataclasses.replace(base, mma_max_tokens_per_expert=float(bound))
            return cls._targets(value)
        except ValueError as exc:
            raise ValueError(f"split-K setting {value!r}: expected 'off', an integer number of splits, "
                             f"'warps:W', 'warps:G/M' or 'h100', the last three optionally with ':T' pairs per "
                             f"expert ({exc})") from None

    @classmethod
    def _targets(cls, value: str) -> SplitKRule:
        """"warps:W", "warps:G/M" or an integer (from_env's settings without a bound)."""
        if value.startswith("warps:"):
            targets = value.split(":", 1)[1].split("/")
            if len(targets) > 2:
                raise ValueError("at most two targets")
            return cls(gemv_warps_per_sm=float(targets[0]), mma_warps_per_sm=float(targets[-1]))
        return cls(fixed=int(value))


#: The rule measured on an H100, the fused path's default (`KernelTuning.split_k`), from
#: the sweep of S = 1, 2, 4, 8 on a Mixtral-8x7B-shaped layer
#: (8 experts, K 14336; bench/results/gpu-splitk-h100-mixtral-8x7b.json, `bash bench/gpu_splitk.sh`, graph
#: clock). GEMV launches (1-4 tokens; 15.5 / 27.2 / 84.8 warps per SM unsplit): the fastest S was 8 / 8 / 4,
#: which a target of 256 warps per SM gives (264.8 -> 254.8, 420.8 -> 391.9, 485.6 -> 432.7 us). Tensor cores
#: (16 and 64 tokens, 15.5 warps per SM unsplit, so they ran on grouped_mm unsplit): S = 2 to 8 all within
#: 2 %, S = 2 fastest at 64 tokens (959.6 -> 905.3 us); a target of 30 gives 2. At 256 tokens (64 pairs per
#: expert, two passes of the tensor-core kernel) every split launch was 1.5x slower than grouped_mm + GEMV
#: unsplit (1839-1903 vs 1240 us): hence the bound of 32 pairs per expert. Qwen3-30B-A3B-shaped layers (K 768)
#: are never split (min_k_per_split), and measured the same for every S.
H100_SPLIT_K = SplitKRule(gemv_warps_per_sm=256.0, mma_warps_per_sm=30.0, mma_max_tokens_per_expert=32.0)
