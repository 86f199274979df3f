"""Where a layer call's time goes on a GPU: torch.profiler over heteromoe's runtime (gpu-only) and
transformers' grouped_mm for a Qwen3-30B-A3B-shaped layer.

Run on a GPU machine:  python bench/profile_gpu_layer.py --batch 1 > profile.txt
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from bench.bench_gpu_layer import layer, routing


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batch", type=int, default=1)
    args = parser.parse_args()
    import heteromoe
    from heteromoe.cost.model import CostModel
    from heteromoe.device import registry
    from heteromoe.runtime.executor import MoEExecutor
    from heteromoe.runtime.layer import ExpertLayer
    from heteromoe.sched import Placement, get_policy

    experts, _ = layer("qwen3-30b-a3b")
    hidden, ids, weights, _ = routing("qwen3-30b-a3b", args.batch)
    cost = CostModel(heteromoe.systems.get("h100-hbm3-pim"), heteromoe.models.get("qwen3-30b-a3b"))
    backend = registry.get("torch")
    executor = MoEExecutor(get_policy("gpu-only"), backend, registry.get("pim-emulator"), backend)
    view = ExpertLayer.from_module("layer", experts)
    placement = Placement.from_homes(np.zeros(128, dtype=np.int64), 1)
    calls = {"heteromoe": lambda: executor.run(view, cost, placement, hidden, ids, weights),
             "grouped_mm": lambda: experts(hidden, ids, weights)}
    with torch.no_grad():
        for name, fn in calls.items():
            for _ in range(5):
                fn()
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            for _ in range(20):
                fn()
            torch.cuda.synchronize()
            print(f"{name}: {(time.perf_counter() - t0) / 20 * 1e6:.1f} us per layer call (batch {args.batch})")
            with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU,
                                                    torch.profiler.ProfilerActivity.CUDA]) as prof:
                for _ in range(5):
                    fn()
                torch.cuda.synchronize()
            print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12, max_name_column_width=40))


if __name__ == "__main__":
    main()
