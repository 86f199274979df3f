"""Where a step's requests live: attention is data-parallel, GPU g holds a contiguous block of the batch's
requests and their KV cache (`sim.layer_work` splits the blocks into sub-batches and costs their work).
"""
from __future__ import annotations

import numpy as np

__all__ = ["context_per_gpu", "local_requests"]


def local_requests(batch: int, gpus: int) -> np.ndarray:
    """[G] requests per GPU: the batch split as evenly as possible (data-parallel attention)."""
    return np.full(gpus, batch // gpus) + (np.arange(gpus) < batch % gpus)


def context_per_gpu(context, batch: int, gpus: int) -> np.ndarray:
    """[G] KV-cache tokens each GPU holds: `context` is one length for every request, or [batch] lengths
    (requests assigned to GPUs in contiguous blocks, as `local_requests` counts them)."""
    ctx = np.asarray(context, dtype=np.float64)
    if ctx.ndim == 0:
        return local_requests(batch, gpus) * float(ctx)
    if ctx.shape != (batch,) or (ctx < 0).any():
        raise ValueError(f"context must be one length or {batch} non-negative lengths (one per request), "
                         f"got shape {ctx.shape}")
    ends = np.cumsum(local_requests(batch, gpus))
    return np.add.reduceat(np.append(ctx, 0.0), np.concatenate([[0], ends[:-1]]))[:gpus] * (local_requests(batch, gpus) > 0)
