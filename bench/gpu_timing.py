"""GPU timing helpers shared by the GPU benchmarks and `heteromoe calibrate`: achievable read bandwidth,
and the device time of one call measured by replaying it as a CUDA graph (no launch or host cost)."""
from __future__ import annotations

from heteromoe.calibrate import graph_time_s, read_bandwidth  # noqa: F401 - re-exported for bench scripts
