"""Where does one fused layer call's device time go? Each kernel of the gpu-only path alone, captured
20 times back to back in a CUDA graph (so a kernel's time includes the gap to the next), against the whole call.

    python bench/gpu_kernel_times.py --json bench/results/gpu-kernel-times-<gpu>.json
    python bench/gpu_kernel_times.py --batches 16,64,256 --json ...   # the tensor-core path's kernels

Batches up to `gemv_batch_tokens` time the GEMV path (route_prep, GEMV up, GEMV down, unpermute); larger ones,
where the shape runs on the tensor cores, the tensor-core path with every expert on it (route_prep, expert_mma
up with the SiLU gate, expert_mma down unsplit, unpermute), and the same two projections with the 48-token pass
(`pass_tiles=6`).
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


def gemv_path_times(view, hidden, ids, weights, path, many, reps: int) -> dict[str, float]:
    """Seconds per kernel of the GEMV path (every pair on the GEMV: decode-sized batches)."""
    E, k, d, f = view.num_experts, ids.shape[1], view.hidden_size, view.intermediate_size
    thr = path.tuning.gemv_max_tokens
    mt = min(hidden.shape[0], thr)
    prep = kernels.route_prep(ids, E, threshold=thr)
    h = kernels.expert_gemv(hidden, view.up_weight, prep, in_pairs=prep.cold_pairs, top_k=k, out_rows=f,
                            silu_chunk=True, max_tokens=mt)
    y = kernels.expert_gemv(h, view.down_weight, prep, in_pairs=None, top_k=k, out_rows=d, silu_chunk=False,
                            max_tokens=mt)
    return {"route_prep_s": graph_time_s(many(lambda: kernels.route_prep(ids, E, threshold=thr))) / reps,
            "gemv_up_s": graph_time_s(many(lambda: kernels.expert_gemv(
                hidden, view.up_weight, prep, in_pairs=prep.cold_pairs, top_k=k, out_rows=f, silu_chunk=True,
                max_tokens=mt))) / reps,
            "gemv_down_s": graph_time_s(many(lambda: kernels.expert_gemv(
                h, view.down_weight, prep, in_pairs=None, top_k=k, out_rows=d, silu_chunk=False,
                max_tokens=mt))) / reps,
            "unpermute_s": graph_time_s(many(lambda: kernels.unpermute(
                y, y, prep.pair_row, weights, round_products=True))) / reps}


def mma_path_times(view, hidden, ids, weights, batch: int, many, reps: int) -> dict[str, float]:
    """Seconds per kernel of the tensor-core path with every expert on it (route_prep with no GEMV side), the
    projections also with the 48-token pass."""
    E, k, d, f = view.num_experts, ids.shape[1], view.hidden_size, view.intermediate_size
    prep = kernels.route_prep(ids, E, threshold=0)

    def up(tiles: int = 0):
        return kernels.expert_mma(hidden, view.up_weight, prep, in_pairs=prep.hot_pairs, top_k=k, out_rows=f,
                                  silu_chunk=True, max_tokens=batch, side="hot", pass_tiles=tiles)

    h = up()

    def down(tiles: int = 0):
        return kernels.expert_mma(h, view.down_weight, prep, in_pairs=None, top_k=k, out_rows=d, silu_chunk=False,
                                  max_tokens=batch, side="hot", lists_ready=True, pass_tiles=tiles)

    y = down()
    return {"route_prep_s": graph_time_s(many(lambda: kernels.route_prep(ids, E, threshold=0))) / reps,
            "mma_up_s": graph_time_s(many(up)) / reps,
            "mma_down_s": graph_time_s(many(down)) / reps,
            "mma_up_pass6_s": graph_time_s(many(lambda: up(6))) / reps,
            "mma_down_pass6_s": graph_time_s(many(lambda: down(6))) / reps,
            "unpermute_s": graph_time_s(many(lambda: kernels.unpermute(
                y, y, prep.pair_row, weights, round_products=True))) / reps}


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
            reps = 20

            def many(fn):
                return lambda: [fn() for _ in range(reps)]

            with torch.no_grad():
                rec = {"model": model, "batch": batch, "touched_weight_bytes": touched,
                       "whole_call_s": graph_time_s(lambda: path.run(view, hidden, ids, weights))}
                if batch <= path.tuning.gemv_batch_tokens:
                    rec.update(gemv_path_times(view, hidden, ids, weights, path, many, reps))
                elif kernels.mma_supported(view.dtype, d, f):
                    rec.update(mma_path_times(view, hidden, ids, weights, batch, many, reps))
            records.append(rec)
            print(json.dumps({k_: (round(v * 1e6, 2) if k_.endswith("_s") else v) for k_, v in rec.items()}), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "records": records}, indent=1))


if __name__ == "__main__":
    main()
