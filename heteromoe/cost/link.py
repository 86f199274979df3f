"""Link cost: dispatch + combine all-to-all over NVLink, per GPU.

Each routed pair whose token lives on another GPU than the slot that serves it crosses the link twice
(dispatch there, combine back), `d * bytes_per_activation` bytes each way. Links are full duplex, so a
GPU's time is set by the larger of what it receives and what it sends. Token origins come from the
routing (`origin`: tokens of each slot by origin GPU); without them, attention is data-parallel and a
token's origin is taken as uniform over the G GPUs.
"""
from __future__ import annotations

import numpy as np

from heteromoe.spec.hardware import LinkSpec
from heteromoe.spec.model import MoEModelSpec

__all__ = ["all_to_all_s"]


def all_to_all_s(counts: np.ndarray, slot_gpu: np.ndarray, num_gpus: int, link: LinkSpec, model: MoEModelSpec,
                 origin: np.ndarray | None = None) -> np.ndarray:
    """[G] seconds of dispatch + combine traffic on each GPU's link (0 on one GPU).

    Args:
        counts: [P] tokens served by each slot (expert).
        slot_gpu: [P] GPU of each slot.
        origin: optional [G, P] tokens of each slot by origin GPU (columns sum to `counts`).
    """
    if num_gpus == 1:
        return np.zeros(1)
    served = np.bincount(slot_gpu, weights=counts, minlength=num_gpus)  # pairs each GPU serves
    if origin is None:
        received = served * (num_gpus - 1) / num_gpus
        sent = (served.sum() - served) / num_gpus
    else:
        local = origin[slot_gpu, np.arange(slot_gpu.shape[0])]  # pairs served where their token lives
        local_g = np.bincount(slot_gpu, weights=local, minlength=num_gpus)
        received = served - local_g
        sent = origin.sum(axis=1) - local_g
    pairs = np.maximum(received, sent)
    pair_s = 2.0 * model.hidden_size * model.bytes_per_activation / link.bw_bytes_per_s_per_dir  # there and back
    return np.where(pairs > 0, pairs * pair_s + 2.0 * link.latency_s, 0.0)
