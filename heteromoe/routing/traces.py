"""Routing traces: the real logs in `shared/traces/`, as top-k index arrays.

Every loader returns a `RoutingTrace`: `top_k_index [layers, tokens, k]` in processing order, plus the
expert count and where it came from. Batches for replay are consecutive token windows (`batches()`).
The vLLM JSON-lines logs open with warm-up rows of one identical dummy routing: rows whose (ids, weights)
repeat more than `max_repeats` times are dropped, as their READMEs say.

Every error about a trace is a `TraceError` (a `UserError`): one line that names the file.
"""
from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from heteromoe.errors import UserError

__all__ = ["RoutingTrace", "TraceError", "load_dynande", "load_exflow", "load_jsonl", "load_trace"]


class TraceError(UserError):
    """A trace that cannot be read: missing, unreadable, or not in a known format (the message names the file)."""


def _load_npy(path: Path) -> np.ndarray:
    """An integer .npy array, or a TraceError naming the file."""
    if not path.is_file():
        raise TraceError(f"trace {path}: no such file")
    try:
        ids = np.load(path, allow_pickle=False)
    except Exception as exc:  # noqa: BLE001 - numpy raises ValueError, OSError or pickle errors for junk
        raise TraceError(f"trace {path}: not a NumPy .npy array ({type(exc).__name__}: {exc})") from None
    if not np.issubdtype(ids.dtype, np.integer):
        raise TraceError(f"trace {path}: expert ids must be integers, the array holds {ids.dtype}")
    return ids.astype(np.int64)


@dataclass(frozen=True, eq=False)
class RoutingTrace:
    """Attributes: top_k_index [L, T, k] int64; num_experts E; source (path); model (as the trace says)."""

    top_k_index: np.ndarray
    num_experts: int
    source: str
    model: str = ""

    def __post_init__(self) -> None:
        if self.top_k_index.ndim != 3:
            raise TraceError(f"trace {self.source}: top_k_index must be [layers, tokens, k], "
                             f"got {self.top_k_index.shape}")
        if self.top_k_index.size and (self.top_k_index.min() < 0 or self.top_k_index.max() >= self.num_experts):
            raise TraceError(f"trace {self.source}: expert ids outside [0, {self.num_experts})")

    @property
    def num_layers(self) -> int:
        return int(self.top_k_index.shape[0])

    @property
    def num_tokens(self) -> int:
        return int(self.top_k_index.shape[1])

    @property
    def top_k(self) -> int:
        return int(self.top_k_index.shape[2])

    def batches(self, batch: int, layer: int = 0):
        """Consecutive windows of `batch` tokens of one layer: yields [batch, k] arrays."""
        if batch < 1:
            raise ValueError(f"batch must be >= 1, got {batch}")
        ids = self.top_k_index[layer]
        for start in range(0, ids.shape[0] - batch + 1, batch):
            yield ids[start:start + batch]


def load_dynande(folder, phase: str = "decode") -> RoutingTrace:
    """FLAME-MoE-290M (64 experts, top-6). decode: [positions, layers, seqs, 6] -> layers x (position-major tokens)."""
    folder = Path(folder)
    ids = _load_npy(folder / f"{phase}_topk_ids.npy")
    if phase == "decode":  # a decode step = one position of all 64 sequences: keep steps consecutive
        if ids.ndim != 4:
            raise TraceError(f"trace {folder / 'decode_topk_ids.npy'}: expected [positions, layers, seqs, k], "
                             f"got {ids.shape}")
        ids = ids.transpose(1, 0, 2, 3).reshape(ids.shape[1], -1, ids.shape[-1])
    return RoutingTrace(ids, 64, str(folder), "FLAME-MoE-290M")


def load_jsonl(path, max_repeats: int = 16) -> RoutingTrace:
    """vLLM route logs: a meta line, then one {"type": "route", "topk_ids", "topk_weights", "layer"} per token."""
    path = Path(path)
    meta, rows = {}, []
    try:
        with path.open(encoding="utf-8") as fh:
            for number, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise TraceError(f"trace {path}: line {number} is not JSON ({exc})") from None
                if not isinstance(record, dict):
                    raise TraceError(f"trace {path}: line {number} is not a JSON object")
                if record.get("type") == "meta":
                    meta = record
                elif record.get("type") == "route":
                    try:
                        rows.append((int(record.get("layer", 0)), tuple(int(i) for i in record["topk_ids"]),
                                     tuple(round(w, 6) for w in record.get("topk_weights", ()))))
                    except (KeyError, TypeError, ValueError) as exc:
                        raise TraceError(f"trace {path}: line {number} is not a valid route record ({exc!r})") from None
    except UnicodeDecodeError as exc:
        raise TraceError(f"trace {path}: not UTF-8 text ({exc.reason}); expected a vLLM JSON-lines route log") from None
    except OSError as exc:
        raise TraceError(f"trace {path}: cannot be read ({exc.strerror or exc})") from None
    if meta.get("source") == "heteromoe":  # our own capture (runtime.save_trace): no warm-up rows to drop
        real = rows
    else:
        repeats = Counter(rows)
        real = [r for r in rows if repeats[r] <= max_repeats]
    if not real:
        raise TraceError(f"trace {path}: no routing rows left after dropping warm-up repeats")
    layers = sorted({r[0] for r in real})
    widths = {len(r[1]) for r in real}
    if len(widths) != 1:
        raise TraceError(f"trace {path}: route rows have different top-k widths {sorted(widths)}")
    per_layer = [np.array([r[1] for r in real if r[0] == layer], dtype=np.int64) for layer in layers]
    tokens = min(len(a) for a in per_layer)
    ids = np.stack([a[:tokens] for a in per_layer])
    num_experts = int(meta.get("num_experts") or ids.max() + 1)
    return RoutingTrace(ids, num_experts, str(path), str(meta.get("model_id", "")))


def load_exflow(path, num_experts: int = 64) -> RoutingTrace:
    """ExFlow format: [tokens, layers] top-1 expert ids."""
    path = Path(path)
    ids = _load_npy(path)
    if ids.ndim != 2:
        raise TraceError(f"trace {path}: expected [tokens, layers] top-1 expert ids, got shape {ids.shape}")
    return RoutingTrace(ids.T[:, :, None].copy(), num_experts, str(path), "unknown (ExFlow trace)")


def load_trace(path) -> RoutingTrace:
    """Any of the formats above, by what the path holds."""
    path = Path(path)
    if not path.exists():
        raise TraceError(f"trace {path}: no such file or folder")
    if path.is_dir() and (path / "decode_topk_ids.npy").exists():
        return load_dynande(path)
    if path.is_dir() and (path / "moe_routes.jsonl").exists():
        return load_jsonl(path / "moe_routes.jsonl")
    if path.is_dir() and (path / "trace.npy").exists():
        return load_exflow(path / "trace.npy")
    if path.suffix == ".jsonl":
        return load_jsonl(path)
    if path.suffix == ".npy":
        return load_exflow(path)
    raise TraceError(f"unrecognised trace {path}: expected a DynaNDE folder, a vLLM .jsonl route log or an ExFlow "
                     "trace.npy")
