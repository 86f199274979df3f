"""Where a layer call's host time goes on a GPU machine: the CPU time from the Python call until the GPU work
is queued (no synchronization inside the timing), for the runtime's entry point and for each layer below it,
down to the one C++ call that launches the kernels.

    python bench/gpu_host_time.py --json bench/results/gpu-host-time-<gpu>.json

Qwen3-30B-A3B-shaped layer (bench_gpu_layer.py's routing), policy gpu-only at batch 1 / 16 / 256, and the
`heteromoe` policy with the plan made on the device. Medians of 300 calls after 20 warm-up calls; the device
is synchronized before each timed call, so no call waits for an earlier one (a full launch queue, or the
device-plan path's look at the layer's previous call, would count the GPU's time as the host's). The
gpu-only call is also timed on the thread's CPU clock (time the thread was descheduled does not count).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench.bench_gpu_layer import executor_for, layer, routing  # noqa: E402
from heteromoe import kernels  # noqa: E402

MODEL = "qwen3-30b-a3b"


def host_s(fn, calls: int = 300, warmup: int = 20, clock=time.perf_counter) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(calls):
        torch.cuda.synchronize()
        t0 = clock()
        fn()
        times.append(clock() - t0)
    torch.cuda.synchronize()
    return float(np.median(times))


def main() -> None:
    from heteromoe.runtime.layer import ExpertLayer

    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", default="1,16,256")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    experts = layer(MODEL)
    view = ExpertLayer.from_module("layer", experts)
    records = []
    with torch.no_grad():
        for batch in (int(b) for b in args.batches.split(",")):
            hidden, ids, weights, _ = routing(MODEL, batch)
            run, executor = executor_for(MODEL, "gpu-only")
            fused = executor.fused
            run_dev, executor_dev = executor_for(MODEL, "heteromoe", plan_on_device=True)
            run(hidden, ids, weights)
            mma = batch > fused.tuning.gemv_batch_tokens
            ws = torch.empty(kernels._cuda.gemv_layer_workspace(batch * ids.shape[1], view.num_experts, view.hidden_size,
                                                                view.intermediate_size, hidden.element_size()),
                             dtype=torch.uint8, device=hidden.device)
            out = torch.empty_like(hidden)
            cuda = kernels._cuda
            dev = hidden.device
            stream = torch.cuda.current_stream(dev).cuda_stream
            raw_stream = getattr(torch._C, "_cuda_getCurrentRawStream", None)
            raw_args = (kernels._DTYPE_CODE[hidden.dtype], kernels._DTYPE_CODE[weights.dtype], hidden.data_ptr(),
                        ids.data_ptr(), batch, ids.shape[1], view.num_experts, view.up_weight.data_ptr(),
                        view.down_weight.data_ptr(), view.hidden_size, view.intermediate_size, weights.data_ptr(),
                        True, fused.tuning.gemv_batch_tokens + 1 if mma else 0, batch == 1, ws.data_ptr(),
                        out.data_ptr(), 0, stream)
            rec = {"model": MODEL, "batch": batch,
                   "executor_run_gpu_only_s": host_s(lambda: run(hidden, ids, weights)),
                   # the same on the thread's CPU clock: not counting time the thread was descheduled
                   "executor_run_gpu_only_thread_cpu_s": host_s(lambda: run(hidden, ids, weights), clock=time.thread_time),
                   "fused_run_s": host_s(lambda: fused.run(view, hidden, ids, weights)),
                   "one_c_call_s": host_s(lambda: cuda.gemv_layer(*raw_args)),
                   "executor_run_heteromoe_device_plan_s": host_s(lambda: run_dev(hidden, ids, weights)),
                   "torch_empty_s": host_s(lambda: torch.empty(batch, view.hidden_size, dtype=hidden.dtype, device=dev)),
                   "current_stream_object_s": host_s(lambda: torch.cuda.current_stream(dev).cuda_stream),
                   "raw_stream_handle_s": host_s(lambda: raw_stream(dev.index)) if raw_stream else None,
                   "is_capturing_s": host_s(torch.cuda.is_current_stream_capturing)}
            executor_dev.flush()
            records.append(rec)
            print(json.dumps({key: round(v * 1e6, 2) if key.endswith("_s") and v is not None else v for key, v in rec.items()}), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"gpu": torch.cuda.get_device_name(), "command": " ".join(sys.argv),
                                               "records": records}, indent=1))


if __name__ == "__main__":
    main()
