"""GPU cost model v2: the runtime's own measured expert times (`heteromoe calibrate`), by token count.

The roofline (cost.gpu) prices an expert at max(weight read, tensor-core FLOPs) at fixed efficiencies; the
runtime really runs a GEMV kernel for few tokens and a grouped GEMM for many, with fixed costs per layer
(launches, routing prep, unpermute). A table measured on the GPU replaces both guesses with what the
kernels take: per-expert seconds t(n) for n tokens (interpolated between measured counts, extended past
the last with the last slope) and the layer's fixed seconds, plus those of the grouped side when some
expert has more tokens than the GEMV takes; where the runtime runs every expert on the tensor-core kernel
past the GEMV batches, a second table for the all-GEMV batches. Same interface as `GpuRoofline` (CostModel adds the regime
term), so every policy and the simulator use it: T_GPU = sum_e t(n_e) + fixed [+ grouped_fixed].

Shipped tables live in spec/presets/gpu_tables/<gpu>.json (the calibrate command's output); `CostModel`
picks the one whose GPU key occurs in the system's GPU name and whose shape matches the model's experts.
"""
from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import numpy as np

from heteromoe.spec.hardware import SystemSpec
from heteromoe.spec.model import MoEModelSpec

__all__ = ["GpuCostTable", "find_table", "load_tables", "shipped_tables"]


class GpuCostTable:
    """Measured per-expert times.

    Args:
        per_expert_s: {tokens: seconds of one expert with that many tokens}, tokens >= 1.
        fixed_s: seconds per layer call besides the experts (launches, routing prep, combine).
        source: where the numbers come from (file, GPU), for reports.
        grouped_fixed_s: seconds a layer call adds on a GPU where some expert has more than
            `gemv_max_tokens` tokens (the grouped-GEMM side: gather, two grouped GEMMs, the gate, a stream),
            unless the batch has at most `gemv_batch_tokens` tokens (then every expert takes the GEMV).
        small_batch: (per_expert_s, fixed_s) of the all-GEMV regime, where the table's main regime is another
            kernel (`expert_mma` on every expert): batches of at most `gemv_batch_tokens` tokens are priced
            by it instead.
    """

    def __init__(self, per_expert_s: dict[int, float], fixed_s: float, source: str = "",
                 grouped_fixed_s: float = 0.0, gemv_max_tokens: int | None = None, gemv_batch_tokens: int = 0,
                 small_batch: tuple[dict[int, float], float] | None = None) -> None:
        if not per_expert_s:
            raise ValueError("a GPU cost table needs at least one measured token count")
        n = np.array(sorted(int(k) for k in per_expert_s), dtype=np.float64)
        if n[0] < 1:
            raise ValueError(f"token counts must be >= 1, got {int(n[0])}")
        t = np.array([float(per_expert_s[k]) for k in sorted(per_expert_s, key=int)], dtype=np.float64)
        if not np.all(np.isfinite(t)) or (t <= 0).any():
            raise ValueError(f"per-expert times must be positive and finite, got {t.tolist()}")
        if not fixed_s >= 0:
            raise ValueError(f"fixed_s must be >= 0, got {fixed_s}")
        self.tokens, self.seconds = n, t
        self.slope_s = (t[-1] - t[-2]) / (n[-1] - n[-2]) if n.size > 1 else t[-1] / n[-1]
        self.slope_s = max(self.slope_s, 0.0)
        self.read_s_per_expert = float(self.time_at(np.array([1]))[0])
        self.launch_s = float(fixed_s)
        if not grouped_fixed_s >= 0:
            raise ValueError(f"grouped_fixed_s must be >= 0, got {grouped_fixed_s}")
        self.grouped_fixed_s = float(grouped_fixed_s)
        self.gemv_max_tokens = gemv_max_tokens
        self.gemv_batch_tokens = int(gemv_batch_tokens)
        self.small_batch = GpuCostTable(*small_batch, source=source) if small_batch is not None else None
        self.source = source

    def time_at(self, tokens) -> np.ndarray:
        """[E] seconds of each expert for `tokens` (0 where 0)."""
        n = np.asarray(tokens, dtype=np.float64)
        inside = np.interp(n, self.tokens, self.seconds)
        beyond = self.seconds[-1] + (n - self.tokens[-1]) * self.slope_s
        return np.where(n <= 0, 0.0, np.where(n > self.tokens[-1], beyond, inside))

    def read_s(self, tokens: np.ndarray) -> np.ndarray:
        """[E] the one-token time where an expert has GPU tokens (the part that does not grow with tokens)."""
        return np.where(np.asarray(tokens) > 0, self.read_s_per_expert, 0.0)

    def flop_s(self, tokens: np.ndarray) -> np.ndarray:
        """[E] each expert's measured time (>= read_s, so max(sum read, sum flop) is the sum of the table)."""
        return self.time_at(tokens)

    def regime_fixed_s(self, tokens: np.ndarray, batch_tokens: int | None = None) -> float:
        """What the runtime's kernel regime adds to `time_s(tokens)` (one GPU's tokens; the batch has
        `batch_tokens` tokens): for a batch it runs on the GEMV alone, the GEMV table's time minus this one's
        (where the table has one; may be negative), else the grouped side's fixed seconds if any expert has
        more tokens than the GEMV takes."""
        small_batch = batch_tokens is not None and batch_tokens <= self.gemv_batch_tokens
        if small_batch and self.small_batch is not None:
            return self.small_batch.time_s(tokens) - self.time_s(tokens)
        if self.gemv_max_tokens is None or not self.grouped_fixed_s or small_batch:
            return 0.0
        return self.grouped_fixed_s if (np.asarray(tokens) > self.gemv_max_tokens).any() else 0.0

    def time_s(self, tokens: np.ndarray) -> float:
        tokens = np.asarray(tokens)
        if not tokens.any():
            return 0.0
        return float(self.time_at(tokens).sum()) + self.launch_s + self.regime_fixed_s(tokens)


def load_tables(path: str | Path) -> dict:
    """The JSON `heteromoe calibrate` writes: {"gpu", "device", "tables": {model: {...}}}."""
    data = json.loads(Path(path).read_text())
    if "tables" not in data:
        raise ValueError(f"{path}: not a GPU cost table file (no 'tables'); write one with `heteromoe calibrate`")
    data["_path"] = str(path)
    return data


def shipped_tables() -> list[dict]:
    """The GPU tables shipped as presets (spec/presets/gpu_tables/*.json)."""
    folder = resources.files("heteromoe.spec") / "presets" / "gpu_tables"
    if not folder.is_dir():
        return []
    return [load_tables(Path(str(p))) for p in sorted(folder.iterdir(), key=lambda p: p.name) if p.name.endswith(".json")]


def find_table(system: SystemSpec, model: MoEModelSpec, files: list[dict] | None = None) -> GpuCostTable | None:
    """The table for this system's GPU and this model's expert shape (d, f, 16-bit weights), or None."""
    gpu_name = (system.gpu.name if system.gpu is not None else "").lower()
    for data in shipped_tables() if files is None else files:
        key = str(data.get("gpu") or "").lower()
        if not key or key not in gpu_name:
            continue
        for table in data["tables"].values():
            shape = table["shape"]
            if (shape["hidden_size"], shape["intermediate_size"]) == (model.hidden_size, model.moe_intermediate_size) \
                    and model.bytes_per_weight == 2.0:
                per = {int(k): float(v) for k, v in table["per_expert_s"].items()}
                small = table.get("small_batch")
                return GpuCostTable(per, table["fixed_s"], source=f"{data.get('_path', '')} ({data.get('device', key)})",
                                    grouped_fixed_s=table.get("grouped_fixed_s", 0.0),
                                    gemv_max_tokens=table.get("gemv_max_tokens"),
                                    gemv_batch_tokens=table.get("gemv_batch_tokens", 0),
                                    small_batch=None if small is None else (
                                        {int(k): float(v) for k, v in small["per_expert_s"].items()}, small["fixed_s"]))
    return None
