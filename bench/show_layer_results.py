"""Print a bench_gpu_layer.py JSON as one line per benchmark: model, batch, path, clock, us per call, share
of the read bandwidth.

    python bench/show_layer_results.py bench/results/gpu-layer-h100.json
"""
from __future__ import annotations

import json
import sys
from collections import defaultdict
from collections.abc import Callable


def main(path: str) -> None:
    for bench in json.load(open(path))["benchmarks"]:
        info = bench["extra_info"]
        print(f"{info['model']:14s} {info['batch']:4d} {info['clock']:5s} {info['path']:45s} "
              f"{info['seconds_per_call'] * 1e6:9.1f} us {100 * info['share_of_read_bandwidth']:5.1f} %")


def load_graph_sweep(paths: list[str], column: Callable[[dict], str | None]) -> tuple[dict, dict]:
    """A sweep's graph-clock rows from bench_gpu_layer.py JSONs: ({(model, batch): grouped_mm's extra_info},
    {(model, batch): {column(info): extra_info}}) for the rows `column` names (None: not part of the sweep)."""
    grouped: dict = {}
    rows: dict = defaultdict(dict)
    for path in paths:
        for bench in json.load(open(path))["benchmarks"]:
            info = bench["extra_info"]
            if info.get("clock") != "graph":
                continue
            key = (info["model"], info["batch"])
            if info["path"] == "grouped_mm":
                grouped[key] = info
            elif (name := column(info)) is not None:
                rows[key][name] = info
    return grouped, rows


if __name__ == "__main__":
    main(sys.argv[1])
