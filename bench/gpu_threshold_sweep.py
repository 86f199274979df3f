"""Which experts should the fused gpu-only path give the GEMV kernel? Device time (CUDA graph) of one layer
for thresholds `gemv_max_tokens` in {2, 4, 8, 16} against transformers' grouped_mm, same routing as
bench_gpu_layer.py.

    python bench/gpu_threshold_sweep.py --json bench/results/gpu-threshold-sweep-<gpu>.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_gpu_layer import BATCHES, SHAPES, layer, routing
from heteromoe.calibrate import graph_time_s, read_bandwidth


def main() -> None:
    from heteromoe.runtime.fused import FusedLayerPath
    from heteromoe.runtime.layer import ExpertLayer

    parser = argparse.ArgumentParser()
    parser.add_argument("--thresholds", default="2,4,8,16")
    parser.add_argument("--one-stream", action="store_true", help="also time both sides on one stream")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    bw = read_bandwidth()
    records = []
    for model in SHAPES:
        experts = layer(model)
        view = ExpertLayer.from_module("layer", experts)
        for batch in BATCHES:
            hidden, ids, weights, touched = routing(model, batch)
            with torch.no_grad():
                rec = {"model": model, "batch": batch, "touched_weight_bytes": touched,
                       "grouped_mm_s": graph_time_s(lambda: experts(hidden, ids, weights))}
                for thr in (int(t) for t in args.thresholds.split(",")):
                    path = FusedLayerPath(gemv_max_tokens=thr)
                    rec[f"fused_t{thr}_s"] = graph_time_s(lambda: path.run(view, hidden, ids, weights))
                    if args.one_stream:  # the same, both sides on one stream
                        path = FusedLayerPath(gemv_max_tokens=thr, streams=False)
                        rec[f"fused_t{thr}_one_stream_s"] = graph_time_s(lambda: path.run(view, hidden, ids, weights))
            records.append(rec)
            print(json.dumps({k: (round(v * 1e6, 1) if k.endswith("_s") else v) for k, v in rec.items()}), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "read_bandwidth_bytes_per_s": bw,
                                               "records": records}, indent=1))


if __name__ == "__main__":
    main()
