"""expert_mma's launch choices on a GPU: the gpu-only layer (graph clock) and each of its kernels alone, for
the configuration the HETEROMOE_MMA_* environment variables pick (read once per process, so run one
process per configuration; csrc/cuda/mma_launch.cuh lists them).

    for cfg in "" "HETEROMOE_MMA_SMEM=0" "HETEROMOE_MMA_SHAPE=14"; do
        env $cfg python bench/gpu_mma_sweep.py --label "${cfg:-default}" --json sweep.jsonl; done

Each run appends one JSON line: the label, the GPU, the read bandwidth measured in the run, and per batch the
whole call's device time (route_prep -> up -> down -> unpermute), the up and down projections, route_prep and
unpermute alone (20 back to back in one graph, so each includes the gap to the next), and the share of the read
bandwidth. Every
configuration's output is checked against transformers' experts module first.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_gpu_layer import SHAPES, check, layer, routing  # noqa: E402
from heteromoe import kernels  # noqa: E402
from heteromoe.calibrate import graph_time_s, read_bandwidth  # noqa: E402


def main() -> None:
    from heteromoe.runtime.fused import FusedLayerPath
    from heteromoe.runtime.layer import ExpertLayer

    parser = argparse.ArgumentParser()
    parser.add_argument("--label", required=True)
    parser.add_argument("--model", default="qwen3-30b-a3b", choices=list(SHAPES))
    parser.add_argument("--batches", default="16,64,256")
    parser.add_argument("--json", default=None, help="append the record (one JSON line) to this file")
    parser.add_argument("--gemv-batch-tokens", type=int, default=None,
                        help="FusedLayerPath(gemv_batch_tokens=...) for the whole call (batches up to it on the GEMV)")
    args = parser.parse_args()
    bandwidth = read_bandwidth()
    experts = layer(args.model)
    view = ExpertLayer.from_module("layer", experts)
    E, k, d, f = SHAPES[args.model]
    path = FusedLayerPath() if args.gemv_batch_tokens is None else FusedLayerPath(gemv_batch_tokens=args.gemv_batch_tokens)
    rows = []
    with torch.no_grad():
        for batch in (int(b) for b in args.batches.split(",")):
            hidden, ids, weights, touched = routing(args.model, batch)
            check(path.run(view, hidden, ids, weights), experts(hidden, ids, weights))
            whole = graph_time_s(lambda: path.run(view, hidden, ids, weights))
            prep = kernels.route_prep(ids, E, threshold=batch)  # every expert on the list (cold) side
            h = kernels.expert_mma(hidden, view.up_weight, prep, in_pairs=prep.cold_pairs, top_k=k, out_rows=f,
                                   silu_chunk=True, max_tokens=batch)
            reps = 20

            def many(fn):
                return lambda: [fn() for _ in range(reps)]

            up = graph_time_s(many(lambda: kernels.expert_mma(
                hidden, view.up_weight, prep, in_pairs=prep.cold_pairs, top_k=k, out_rows=f, silu_chunk=True,
                max_tokens=batch))) / reps
            down = graph_time_s(many(lambda: kernels.expert_mma(
                h, view.down_weight, prep, in_pairs=None, top_k=k, out_rows=d, silu_chunk=False, max_tokens=batch,
                lists_ready=True))) / reps
            prep_s = graph_time_s(many(lambda: kernels.route_prep(ids, E, threshold=batch))) / reps
            y = kernels.expert_mma(h, view.down_weight, prep, in_pairs=None, top_k=k, out_rows=d, silu_chunk=False,
                                   max_tokens=batch, lists_ready=True)
            unpermute_s = graph_time_s(many(lambda: kernels.unpermute(y, y, prep.pair_row, weights,
                                                                      round_products=True))) / reps
            row = {"batch": batch, "touched_weight_bytes": touched, "whole_call_s": whole, "up_s": up, "down_s": down,
                   "route_prep_s": prep_s, "unpermute_s": unpermute_s,
                   "share_whole": touched / whole / bandwidth,
                   "share_up_down": touched / (up + down) / bandwidth}
            rows.append(row)
            print(args.label, json.dumps({key: round(v * 1e6, 1) if key.endswith("_s") else
                                          (round(v, 4) if isinstance(v, float) else v) for key, v in row.items()}),
                  flush=True)
    record = {"label": args.label, "model": args.model, "gpu": torch.cuda.get_device_name(),
              "read_bandwidth_bytes_per_s": bandwidth, "rows": rows}
    if args.json:
        with open(args.json, "a") as fh:
            fh.write(json.dumps(record) + "\n")


if __name__ == "__main__":
    main()
