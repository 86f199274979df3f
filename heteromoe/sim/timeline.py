"""A step's timeline: spans on per-GPU lanes (gpu, pim, link, coll), exportable as a Chrome trace."""
from __future__ import annotations

import json
from dataclasses import dataclass, field

__all__ = ["LANES", "Span", "Timeline"]

LANES = ("gpu", "pim", "link", "coll")  # SMs, PIM stacks, NVLink all-to-all, collectives of routing counts


@dataclass(frozen=True)
class Span:
    gpu: int
    lane: str
    name: str
    layer: int
    start_s: float
    end_s: float
    sub: int = 0  # sub-batch of the layer

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass
class Timeline:
    spans: list[Span] = field(default_factory=list)

    def add(self, gpu: int, lane: str, name: str, layer: int, start_s: float, end_s: float, sub: int = 0) -> None:
        if end_s > start_s:
            self.spans.append(Span(gpu, lane, name, layer, float(start_s), float(end_s), sub))

    def layer(self, layer: int) -> list[Span]:
        return [s for s in self.spans if s.layer == layer]

    def busy_s(self, gpu: int, lane: str) -> float:
        return sum(s.duration_s for s in self.spans if s.gpu == gpu and s.lane == lane)

    def to_chrome_trace(self) -> dict:
        """Chrome-trace "X" events: pid = GPU, tid = lane; open in chrome://tracing or Perfetto."""
        return {"traceEvents": [
            {"name": s.name, "ph": "X", "pid": s.gpu, "tid": LANES.index(s.lane), "ts": s.start_s * 1e6,
             "dur": s.duration_s * 1e6, "args": {"layer": s.layer, "lane": s.lane, "sub_batch": s.sub}}
            for s in self.spans
        ] + [{"name": "thread_name", "ph": "M", "pid": g, "tid": i, "args": {"name": lane}}
             for g in sorted({s.gpu for s in self.spans}) for i, lane in enumerate(LANES)]}

    def save_chrome_trace(self, path) -> None:
        with open(path, "w") as fh:
            json.dump(self.to_chrome_trace(), fh)
