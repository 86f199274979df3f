"""Link cost: dispatch + combine all-to-all bytes over NVLink, per GPU.

Attention is data-parallel, so a token's origin GPU is uniform over the G GPUs: of the n_e tokens of an
expert homed on GPU g, a share (G-1)/G arrives over the link (dispatch) and goes back (combine).
"""
from __future__ import annotations

import numpy as np

from heteromoe.spec.hardware import LinkSpec
from heteromoe.spec.model import MoEModelSpec

__all__ = ["all_to_all_s"]


def all_to_all_s(counts: np.ndarray, expert_gpu: np.ndarray, num_gpus: int, link: LinkSpec,
                 model: MoEModelSpec) -> np.ndarray:
    """[G] seconds of dispatch + combine traffic on each GPU's link (0 on one GPU).

    Args:
        counts: [E] tokens per expert.
        expert_gpu: [E] home GPU of each expert.
    """
    if num_gpus == 1:
        return np.zeros(1)
    pairs_in = np.bincount(expert_gpu, weights=counts, minlength=num_gpus)
    # seconds per routed pair over the link, both ways: the remote share of its activation bytes
    pair_s = 2.0 * (num_gpus - 1) / num_gpus * model.hidden_size * model.bytes_per_activation / link.bw_bytes_per_s_per_dir
    return np.where(pairs_in > 0, pairs_in * pair_s + 2.0 * link.latency_s, 0.0)
