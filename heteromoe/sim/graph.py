"""The dependency-driven step core: operations on per-GPU lanes, vectorized over the GPUs.

Each GPU has lanes (`timeline.LANES`: the SMs, the PIM stacks, the NVLink port). An operation has a
duration per GPU, a lane, and inputs (the end times of earlier operations). It starts on each GPU when its
inputs are done there and its lane is free, and holds the lane until it ends. A collective (AllGather,
the combine that closes a layer) starts on every GPU when its inputs are done on *every* GPU. A lane runs
its operations in the order they are issued, as a CUDA stream or the PIM command queue does; the step
builder (`sim.step`) issues them in a software-pipelined order when a layer runs several sub-batches.
"""
from __future__ import annotations

import numpy as np

from heteromoe.sim.timeline import LANES, Timeline

__all__ = ["LaneGraph"]


class LaneGraph:
    """Schedules operations as they are issued; keeps the timeline when `timeline` is given."""

    def __init__(self, gpus: int, timeline: Timeline | None = None) -> None:
        self.gpus = gpus
        self.free = {lane: np.zeros(gpus) for lane in LANES}
        self.timeline = timeline
        self.last_duration = np.zeros(gpus)  # [G] of the last operation that ran on a lane

    def op(self, name: str, lane: str | None, duration, inputs, layer: int, sub: int = 0,
           collective: bool = False, start_fn=None) -> np.ndarray:
        """Issue one operation; returns its [G] end times.

        Args:
            lane: one of LANES, or None for a zero-length barrier that holds no lane.
            duration: [G] seconds (or one for all GPUs), or None when `start_fn` gives it.
            inputs: end times ([G] arrays or scalars) that must be reached before it starts.
            collective: start on every GPU when the inputs are done on every GPU.
            start_fn: maps the [G] start times to [G] durations (PIM refresh depends on when work starts).
        """
        start = inputs[0]
        for t in inputs[1:]:
            start = np.maximum(start, t)
        if collective:
            start = np.full(self.gpus, np.max(start))
        elif np.ndim(start) == 0:
            start = np.full(self.gpus, float(start))
        if start_fn is None:
            dur = duration if isinstance(duration, np.ndarray) else np.full(self.gpus, float(duration))
            if lane is None or not dur.any():
                return start  # a barrier, or nothing to run: the lane's next operation waits for it anyway
        if lane is not None:
            start = np.maximum(start, self.free[lane])
        if start_fn is not None:
            dur = start_fn(start)
        self.last_duration = dur
        end = start + dur
        if lane is not None:
            self.free[lane] = np.where(dur > 0, end, self.free[lane])
            if self.timeline is not None:
                for g in np.flatnonzero(dur > 0).tolist():
                    self.timeline.add(g, lane, name, layer, start[g], end[g], sub)
        return end
