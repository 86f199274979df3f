"""The dependency-driven step core: operations on per-GPU lanes, scheduled as soon as they can run.

Each GPU has lanes (`timeline.LANES`: the SMs, the PIM stacks, the NVLink port, the collectives of routing
counts). An operation has a duration per GPU, a lane, and inputs (earlier operations). On each GPU it
becomes ready when its inputs are done there; a collective (AllGather, the combine that closes a layer)
becomes ready on every GPU when its inputs are done on *every* GPU. A free lane starts the ready operation
issued first (non-preemptive list scheduling, priority = issue order), so a lane never idles while one of
its operations can run. A PIM operation's duration depends on when it starts (refresh stalls on the
stacks' clock, `sim.pim_truth`).

The builder (`sim.step`) issues operations with `op()`, which returns a handle; `run()` schedules them
all and returns [N, G] start and end times. The event loop is compiled by numba where it is installed.
"""
from __future__ import annotations

import heapq

import numpy as np

from heteromoe.sim.timeline import LANES, Timeline

__all__ = ["LaneGraph"]

_LANE = {lane: i for i, lane in enumerate(LANES)}


class LaneGraph:
    """Collects operations, then schedules them (`run`)."""

    def __init__(self, gpus: int, refresh: tuple[float, float] | None = None) -> None:
        self.gpus = gpus
        self.refresh = refresh  # (tREFI, tRFC) seconds for operations marked `refresh`, or None
        self.names: list[str] = []
        self.meta: list[tuple[int, int]] = []  # (layer, sub-batch)
        self.lane: list[int] = []
        self.collective: list[bool] = []
        self.with_refresh: list[bool] = []
        self.durations: list[np.ndarray] = []
        self.deps: list[list[int]] = []
        self.start: np.ndarray | None = None
        self.end: np.ndarray | None = None

    def op(self, name: str, lane: str | None, duration, inputs, layer: int, sub: int = 0,
           collective: bool = False, refresh: bool = False) -> int:
        """Issue one operation; returns its handle.

        Args:
            lane: one of LANES, or None for a zero-length barrier that holds no lane.
            duration: [G] seconds (or one for all GPUs); for `refresh` operations the busy time, stretched
                by the refresh stalls it runs into.
            inputs: handles of operations that must be done first (issued earlier).
            collective: ready on every GPU when the inputs are done on every GPU.
        """
        self.names.append(name)
        self.meta.append((layer, sub))
        self.lane.append(-1 if lane is None else _LANE[lane])
        self.collective.append(collective)
        self.with_refresh.append(refresh and self.refresh is not None)
        self.durations.append(duration if isinstance(duration, np.ndarray) else np.full(self.gpus, float(duration)))
        self.deps.append(list(inputs))
        return len(self.names) - 1

    def run(self) -> tuple[np.ndarray, np.ndarray]:
        """Schedule every operation; returns ([N, G] start, [N, G] end) seconds."""
        n = len(self.names)
        ptr = np.zeros(n + 1, dtype=np.int64)
        ptr[1:] = np.cumsum([len(d) for d in self.deps])
        dep = np.array([i for d in self.deps for i in d], dtype=np.int64)
        dur = np.array(self.durations, dtype=np.float64).reshape(n, self.gpus)
        refi, rfc = self.refresh if self.refresh is not None else (1.0, 0.0)
        self.start, self.end = _schedule(ptr, dep, np.array(self.lane, dtype=np.int64),
                                         np.array(self.collective, dtype=np.bool_),
                                         np.array(self.with_refresh, dtype=np.bool_), dur, len(LANES), refi, rfc)
        return self.start, self.end

    def record(self, timeline: Timeline) -> None:
        """Add every operation that held a lane to `timeline`."""
        for i, (name, lane) in enumerate(zip(self.names, self.lane)):
            if lane < 0:
                continue
            layer, sub = self.meta[i]
            for g in np.flatnonzero(self.end[i] > self.start[i]).tolist():
                timeline.add(g, LANES[lane], name, layer, self.start[i, g], self.end[i, g], sub)


def _refresh_stretch(start: float, busy: float, refi: float, rfc: float) -> float:
    """`pim_truth.with_refresh` for one operation."""
    if busy <= 0.0:
        return 0.0
    first = np.floor(start / refi)
    count = 0.0
    for _ in range(64):
        new = np.floor((start + busy + count * rfc) / refi) - first
        if new == count:
            break
        count = new
    return busy + count * rfc


def _schedule_py(ptr, dep, lane, collective, refresh, dur, lanes, refi, rfc):
    """List scheduling of [N] operations on G GPUs (see the module docstring)."""
    n, gpus = dur.shape
    start = np.zeros((n, gpus))
    end = np.zeros((n, gpus))
    # dependents (reverse edges)
    count = np.zeros(n + 1, dtype=np.int64)
    for i in range(n):
        for k in range(ptr[i], ptr[i + 1]):
            count[dep[k] + 1] += 1
    rptr = np.cumsum(count)
    rdep = np.empty(dep.size, dtype=np.int64)
    fill = rptr[:-1].copy()
    for i in range(n):
        for k in range(ptr[i], ptr[i + 1]):
            rdep[fill[dep[k]]] = i
            fill[dep[k]] += 1
    need = np.zeros((n, gpus), dtype=np.int64)  # inputs still running, per GPU
    need_all = np.zeros(n, dtype=np.int64)      # for collectives: over all GPUs
    ready = np.zeros((n, gpus))
    for i in range(n):
        k = ptr[i + 1] - ptr[i]
        need_all[i] = k * gpus
        for g in range(gpus):
            need[i, g] = k
    free = np.zeros((gpus, lanes))
    busy_lane = np.zeros((gpus, lanes), dtype=np.bool_)
    queues = [[(0, 0)] for _ in range(gpus * lanes)]  # per (GPU, lane): heap of (op, 0); a sentinel first
    for q in queues:
        q.pop()
    events = [(0.0, 0, 0, 0)]  # (time, kind 0 = done / 1 = ready, op, gpu)
    events.pop()
    for i in range(n):
        if ptr[i + 1] == ptr[i]:
            for g in range(gpus):
                heapq.heappush(events, (0.0, 1, i, g))
    while events:
        t, kind, i, g = heapq.heappop(events)
        if kind == 1:  # i is ready on g at t
            if lane[i] < 0 or dur[i, g] <= 0.0 and not refresh[i]:
                start[i, g] = t
                end[i, g] = t
                heapq.heappush(events, (t, 0, i, g))
            else:
                heapq.heappush(queues[g * lanes + lane[i]], (i, 0))
        else:  # i is done on g at t
            if lane[i] >= 0 and end[i, g] > start[i, g]:
                busy_lane[g, lane[i]] = False
            for k in range(rptr[i], rptr[i + 1]):
                d = rdep[k]
                if collective[d]:
                    need_all[d] -= 1
                    for h in range(gpus):
                        if t > ready[d, h]:
                            ready[d, h] = t
                    if need_all[d] == 0:
                        for h in range(gpus):
                            heapq.heappush(events, (ready[d, h], 1, d, h))
                else:
                    need[d, g] -= 1
                    if t > ready[d, g]:
                        ready[d, g] = t
                    if need[d, g] == 0:
                        heapq.heappush(events, (ready[d, g], 1, d, g))
        # events at the same time first, then the free lanes take their first ready operation
        if events and events[0][0] == t:
            continue
        for h in range(gpus):
            for ln in range(lanes):
                q = queues[h * lanes + ln]
                if busy_lane[h, ln] or not q:
                    continue
                j = heapq.heappop(q)[0]
                s = max(t, free[h, ln])
                d = _refresh_stretch(s, dur[j, h], refi, rfc) if refresh[j] else dur[j, h]
                start[j, h] = s
                end[j, h] = s + d
                if d > 0.0:
                    busy_lane[h, ln] = True
                    free[h, ln] = s + d
                heapq.heappush(events, (s + d, 0, j, h))
    return start, end


try:
    import numba

    _refresh_stretch = numba.njit(cache=True)(_refresh_stretch)
    _schedule = numba.njit(cache=True)(_schedule_py)
except ImportError:  # pragma: no cover - numba is a dependency; the python loop gives the same schedule
    _schedule = _schedule_py
