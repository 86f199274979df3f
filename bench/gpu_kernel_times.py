"""Where does one fused layer call's device time go? Each kernel of the gpu-only path alone, captured
20 times back to back in a CUDA graph (so a kernel's time includes the gap to the next), against the whole call.

    python bench/gpu_kernel_times.py --json bench/results/gpu-kernel-times-<gpu>.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_gpu_layer import SHAPES, layer, routing
from heteromoe import kernels
from heteromoe.calibrate import graph_time_s


def main() -> None:
    from heteromoe.runtime.fused import FusedLayerPath
    from heteromoe.runtime.layer import ExpertLayer

    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", default="1,2,4")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    records = []
    for model in SHAPES:
        view = ExpertLayer.from_module("layer", layer(model))
        E, k, d, f = SHAPES[model]
        for batch in (int(b) for b in args.batches.split(",")):
            hidden, ids, weights, touched = routing(model, batch)
            path = FusedLayerPath()
            thr = path.tuning.gemv_max_tokens
            mt = min(batch, thr)
            with torch.no_grad():
                prep = kernels.route_prep(ids, E, threshold=thr)
                h = kernels.expert_gemv(hidden, view.up_weight, prep, in_pairs=prep.cold_pairs, top_k=k, out_rows=f,
                                        silu_chunk=True, max_tokens=mt)
                y = kernels.expert_gemv(h, view.down_weight, prep, in_pairs=None, top_k=k, out_rows=d,
                                        silu_chunk=False, max_tokens=mt)
                reps = 20

                def many(fn):
                    return lambda: [fn() for _ in range(reps)]

                rec = {"model": model, "batch": batch, "touched_weight_bytes": touched,
                       "whole_call_s": graph_time_s(lambda: path.run(view, hidden, ids, weights)),
                       "route_prep_s": graph_time_s(many(lambda: kernels.route_prep(ids, E, threshold=thr))) / reps,
                       "gemv_up_s": graph_time_s(many(lambda: kernels.expert_gemv(
                           hidden, view.up_weight, prep, in_pairs=prep.cold_pairs, top_k=k, out_rows=f, silu_chunk=True,
                           max_tokens=mt))) / reps,
                       "gemv_down_s": graph_time_s(many(lambda: kernels.expert_gemv(
                           h, view.down_weight, prep, in_pairs=None, top_k=k, out_rows=d, silu_chunk=False,
                           max_tokens=mt))) / reps,
                       "unpermute_s": graph_time_s(many(lambda: kernels.unpermute(
                           y, y, prep.pair_row, weights, round_products=True))) / reps}
            records.append(rec)
            print(json.dumps({k_: (round(v * 1e6, 2) if k_.endswith("_s") else v) for k_, v in rec.items()}), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "records": records}, indent=1))


if __name__ == "__main__":
    main()
