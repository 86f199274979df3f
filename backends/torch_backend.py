"""`torch`: experts computed with torch on the device that holds the weights (a GPU if present).

The slice's pairs are sorted by expert and each projection runs as one grouped GEMM over all of them
(`torch.nn.functional.grouped_mm`, what transformers' `grouped_mm` experts use), with the module's own gate
in between; where grouped_mm cannot run (no kernel for the dtype/device, unaligned strides), one matmul pair
per expert. On CUDA the executor usually bypasses this backend for the fused kernel path
(`heteromoe.runtime.fused`: GEMV kernel, two streams, graph-capturable); this is the generic path it falls
back to, and the one third-party PIM backends and expert-parallel runs use.
"""
from __future__ import annotations

import logging

import numpy as np
import torch

from heteromoe.device import Backend
from heteromoe.runtime.layer import ExpertLayer, expert_forward
from heteromoe.runtime.work import WorkSlice

logger = logging.getLogger(__name__)


def probe() -> str | None:
    """Entry point: always available (torch is a dependency)."""
    return "heteromoe_backends.torch_backend.TorchBackend"


def _grouped_linear(x: torch.Tensor, weight: torch.Tensor, offs: torch.Tensor, transposed: bool) -> torch.Tensor:
    """x [P, in] (rows grouped by expert) times each group's weight -> [P, out]."""
    w = weight if transposed else weight.transpose(-2, -1)  # (E, in, out)
    return torch.nn.functional.grouped_mm(x, w, offs=offs)


def grouped_experts(layer: ExpertLayer, x: torch.Tensor, experts: np.ndarray, rows_per_expert: np.ndarray) -> torch.Tensor:
    """Unweighted expert outputs of rows already grouped by ascending expert id.

    Args:
        x: [P, d] rows, expert-contiguous in ascending expert order.
        experts, rows_per_expert: [G] the experts present and their row counts.
    Returns:
        [P, d].
    """
    counts = np.zeros(layer.num_experts, dtype=np.int64)
    counts[experts] = rows_per_expert
    offs = torch.from_numpy(np.cumsum(counts).astype(np.int32)).to(x.device)
    row_expert = torch.from_numpy(np.repeat(experts, rows_per_expert)).to(x.device)
    x = x.to(layer.dtype)
    h = _grouped_linear(x, layer.up_weight, offs, layer.is_transposed)  # (P, 2f)
    if layer.up_bias is not None:
        h = h + layer.up_bias[row_expert]
    h = layer.activate(h)  # (P, f)
    y = _grouped_linear(h, layer.down_weight, offs, layer.is_transposed)  # (P, d)
    if layer.down_bias is not None:
        y = y + layer.down_bias[row_expert]
    return layer.post_norm(y)


class TorchBackend(Backend):
    """GPU side of the plan: grouped GEMMs over the slice's experts, on the weights' device."""

    name = "torch"
    kind = "gpu" if torch.cuda.is_available() else "cpu"

    def __init__(self) -> None:
        self._grouped_failed: set[tuple] = set()

    def run_experts(self, layer: ExpertLayer, hidden: torch.Tensor, top_k_weights: torch.Tensor,
                    work: WorkSlice) -> torch.Tensor:
        key = (layer.dtype, layer.device.type, layer.name)
        if hasattr(torch.nn.functional, "grouped_mm") and key not in self._grouped_failed:
            try:
                return self._run_grouped(layer, hidden, top_k_weights, work)
            except RuntimeError as exc:  # no kernel for this dtype/device, unaligned strides: per-expert loop
                self._grouped_failed.add(key)
                logger.info("torch backend: grouped_mm unavailable for %s (%s); using one matmul per expert",
                            layer.name, exc)
        return self._run_per_expert(layer, hidden, top_k_weights, work, lambda e, x: expert_forward(layer, e, x))

    def _run_grouped(self, layer: ExpertLayer, hidden: torch.Tensor, top_k_weights: torch.Tensor,
                     work: WorkSlice) -> torch.Tensor:
        out_dtype = torch.promote_types(hidden.dtype, top_k_weights.dtype)
        if work.experts_ascending:  # the usual case: rows already grouped as grouped_mm wants, no permutation
            y = grouped_experts(layer, hidden[work.token_index(hidden.device)], work.experts, work.tokens_per_expert)
            return (y * work.pair_weights(top_k_weights)[:, None]).to(out_dtype)
        sizes = work.tokens_per_expert
        row_expert = np.repeat(work.experts, sizes)
        perm = np.argsort(row_expert, kind="stable")  # ascending experts (a slice may list replicas twice)
        experts, per = np.unique(row_expert, return_counts=True)
        perm_t = torch.from_numpy(perm).to(hidden.device)
        tokens = work.token_index(hidden.device)[perm_t]
        weights = work.pair_weights(top_k_weights)[perm_t]
        y = grouped_experts(layer, hidden[tokens], experts, per)  # (P, d) in sorted order
        out = torch.empty(work.num_pairs, hidden.shape[-1], dtype=out_dtype, device=hidden.device)
        out[perm_t] = (y * weights[:, None]).to(out_dtype)
        return out
