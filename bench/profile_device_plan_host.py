"""Where the host time of a device-planned layer call goes: cProfile over 300 calls of the `heteromoe`
policy with `plan_on_device=True` (Qwen3-30B-A3B layer, bimodal routing), synchronized before each call so
the device is idle, top 25 functions by own time per batch. Profiler overhead inflates every figure; read
the shares, not the microseconds.

    python bench/profile_device_plan_host.py > bench/results/profile-device-plan-host-<gpu>.txt
"""
from __future__ import annotations

import cProfile
import io
import pstats
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_gpu_layer import executor_for, routing  # noqa: E402

MODEL = "qwen3-30b-a3b"


def main() -> None:
    print("gpu:", torch.cuda.get_device_name())
    with torch.no_grad():
        for batch in (1, 16, 256):
            hidden, ids, weights, _ = routing(MODEL, batch)
            run_dev, executor = executor_for(MODEL, "heteromoe", plan_on_device=True)
            for _ in range(20):
                run_dev(hidden, ids, weights)
            torch.cuda.synchronize()
            profile, calls = cProfile.Profile(), 300
            start = time.perf_counter()
            profile.enable()
            for _ in range(calls):
                torch.cuda.synchronize()
                run_dev(hidden, ids, weights)
            profile.disable()
            print("batch", batch, "per call us (with the sync and the profiler)",
                  round((time.perf_counter() - start) / calls * 1e6, 1))
            out = io.StringIO()
            pstats.Stats(profile, stream=out).sort_stats("tottime").print_stats(25)
            print(out.getvalue()[:6000])
            executor.flush()


if __name__ == "__main__":
    main()
