"""Print a bench_gpu_layer.py JSON as one line per benchmark: model, batch, path, clock, us per call, share
of the read bandwidth.

    python bench/show_layer_results.py bench/results/gpu-layer-h100.json
"""
from __future__ import annotations

import json
import sys


def main(path: str) -> None:
    for bench in json.load(open(path))["benchmarks"]:
        info = bench["extra_info"]
        print(f"{info['model']:14s} {info['batch']:4d} {info['clock']:5s} {info['path']:45s} "
              f"{info['seconds_per_call'] * 1e6:9.1f} us {100 * info['share_of_read_bandwidth']:5.1f} %")


if __name__ == "__main__":
    main(sys.argv[1])
