"""Expert placement on GPUs (expert parallelism): which GPU is each expert's home."""
from __future__ import annotations

import numpy as np

__all__ = ["contiguous_placement", "check_placement"]


def contiguous_placement(num_experts: int, num_gpus: int) -> np.ndarray:
    """[E] home GPU: contiguous blocks, the first `E % G` GPUs get one extra expert."""
    if num_gpus < 1:
        raise ValueError(f"num_gpus must be >= 1, got {num_gpus}")
    if num_experts < num_gpus:
        raise ValueError(f"{num_experts} experts cannot be spread over {num_gpus} GPUs (one at least per GPU)")
    return (np.arange(num_experts, dtype=np.int64) * num_gpus) // num_experts


def check_placement(expert_gpu, num_experts: int, num_gpus: int) -> np.ndarray:
    """Validate a user's placement: [E] ints in [0, G), every expert homed."""
    arr = np.asarray(expert_gpu)
    if arr.shape != (num_experts,):
        raise ValueError(f"placement must give a home GPU for each of the {num_experts} experts, got shape {arr.shape}")
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"placement must hold integer GPU ids, got dtype {arr.dtype}")
    bad = np.flatnonzero((arr < 0) | (arr >= num_gpus))
    if bad.size:
        e = int(bad[0])
        raise ValueError(f"placement leaves expert {e} homeless: GPU {int(arr[e])} is outside [0, {num_gpus})")
    return arr.astype(np.int64, copy=False)
