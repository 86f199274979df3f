"""Does the cost model predict the measured GPU layer times? The `gpu-only` plan's predicted time (what the
step simulator charges for the layer's expert window) on `h100-hbm3-pim`, with the roofline and with the
calibrated table, against the fused path's measured device time (CUDA graph) from bench_gpu_layer.py.

    python bench/gpu_calibration_check.py --layers bench/results/gpu-layer-h100.json \\
        --table heteromoe/spec/presets/gpu_tables/h100.json --json bench/results/gpu-calibration-check-h100.json
Runs on CPU (it rebuilds the benchmark's routing from its seeds).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def counts_for(model: str, batch: int) -> np.ndarray:
    from heteromoe.routing import BimodalRouting

    E, k = {"qwen3-30b-a3b": (128, 8), "mixtral-8x7b": (8, 2)}[model]
    ids = BimodalRouting(num_experts=E, top_k=k, hot_share=0.5, ratio=14.0, seed=batch).decode(batch, 1, 1)[0, 0]
    return np.bincount(ids.reshape(-1), minlength=E)


def main() -> None:
    import heteromoe
    from heteromoe.cost.gpu_table import find_table, load_tables
    from heteromoe.cost.model import CostModel
    from heteromoe.sched import get_policy
    from heteromoe.sched.placement import Placement

    parser = argparse.ArgumentParser()
    parser.add_argument("--layers", required=True, help="bench_gpu_layer.py's --benchmark-json output")
    parser.add_argument("--table", required=True, help="`heteromoe calibrate` output")
    parser.add_argument("--system", default="h100-hbm3-pim")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    system = heteromoe.systems.get(args.system)
    tables = [load_tables(args.table)]
    policy = get_policy("gpu-only")
    records = []
    for b in json.loads(Path(args.layers).read_text())["benchmarks"]:
        info = b["extra_info"]
        if info.get("path") != "heteromoe gpu-only" or info.get("clock") != "graph":
            continue
        model, batch = info["model"], info["batch"]
        spec = heteromoe.models.get(model)
        counts = counts_for(model, batch)
        placement = Placement.from_homes(np.zeros(spec.num_experts, dtype=np.int64), 1)
        table = find_table(system, spec, tables)
        rec = {"model": model, "batch": batch, "measured_s": info["seconds_per_call"]}
        for name, gpu_model in (("roofline", "roofline"), ("table", table)):
            if gpu_model is None:
                continue
            plan = policy.plan(counts, placement, 1, CostModel(system, spec, gpu_model=gpu_model))
            rec[f"{name}_s"] = plan.predicted_time_s
            rec[f"{name}_error"] = plan.predicted_time_s / rec["measured_s"] - 1.0
        records.append(rec)
        print(f"{model:14s} b{batch:<4d} measured {rec['measured_s'] * 1e6:8.1f} us  roofline "
              f"{rec['roofline_s'] * 1e6:8.1f} us ({rec['roofline_error']:+.0%})  table "
              f"{rec.get('table_s', float('nan')) * 1e6:8.1f} us ({rec.get('table_error', float('nan')):+.0%})")
    if args.json:
        Path(args.json).write_text(json.dumps({"system": args.system, "layers": args.layers, "table": args.table,
                                               "records": records}, indent=1))


if __name__ == "__main__":
    main()
