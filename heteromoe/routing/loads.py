"""routing -> loads: per-expert token counts and the expert-contiguous order of (token, slot) pairs.

A routed pair is identified by its flat index `p = t * k + slot` into `top_k_index [T, k]`. The
counting sort is stable, so each expert's pairs are in token order; a plan hands an expert's first
`gpu_tokens[e]` pairs to the GPU and the rest to PIM.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from heteromoe import _ext

__all__ = ["RoutingLoads", "loads_from_topk"]


@dataclass(frozen=True, eq=False)
class RoutingLoads:
    """The loads of one MoE layer call.

    Attributes:
        counts: [E] int64, tokens routed to each expert (n_e).
        offsets: [E+1] int64, expert e's pairs are `order[offsets[e]:offsets[e+1]]`.
        order: [T*k] int64, flat pair indices grouped by expert, ascending within an expert.
        num_tokens: T.
        top_k: k.
    """

    counts: np.ndarray
    offsets: np.ndarray
    order: np.ndarray
    num_tokens: int
    top_k: int

    @property
    def num_experts(self) -> int:
        return int(self.counts.shape[0])

    def pairs_of(self, expert: int) -> np.ndarray:
        """[n_e] flat pair indices routed to `expert`."""
        return self.order[self.offsets[expert]:self.offsets[expert + 1]]


def loads_from_topk(top_k_index, num_experts: int, *, where: str = "") -> RoutingLoads:
    """Count tokens per expert and group pairs by expert (the C++ / numba / numpy counting sort).

    Args:
        top_k_index: [T, k] integer expert ids (numpy array or torch tensor, any device).
        num_experts: E.
        where: a name for error messages (the layer).
    Returns:
        RoutingLoads.
    Raises:
        ValueError: an expert id outside [0, E), naming the id and `where`.
    """
    if hasattr(top_k_index, "detach"):  # a torch tensor: one host copy of the ids
        top_k_index = top_k_index.detach().to("cpu").numpy()
    ids = np.asarray(top_k_index)
    if ids.ndim != 2:
        raise ValueError(f"{where or 'routing'}: top_k_index must be 2-D [tokens, k], got shape {ids.shape}")
    if ids.size and not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"{where or 'routing'}: top_k_index must hold integers, got dtype {ids.dtype}")
    num_tokens, top_k = ids.shape
    try:
        counts, offsets, order = _ext.counting_sort(ids.reshape(-1).astype(np.int64, copy=False), int(num_experts))
    except ValueError as exc:
        prefix = f"layer {where}: " if where else ""
        raise ValueError(f"{prefix}{exc} (the layer has {num_experts} experts)") from None
    return RoutingLoads(counts=np.asarray(counts), offsets=np.asarray(offsets), order=np.asarray(order),
                        num_tokens=int(num_tokens), top_k=int(top_k))
