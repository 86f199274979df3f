"""Print a split-K sweep (bench_gpu_layer.py with HETEROMOE_BENCH_SPLIT_K, graph clock) as one table: per model
and batch, the unsplit down projection's warps per SM (SplitKRule's input, on the kernel a split runs, over
the experts expected under uniform routing; in brackets over the experts this routing touched),
grouped_mm's time, then each split setting's time, share of the read bandwidth, the splits launched and
the kernel; the fastest setting is starred.

    python bench/show_splitk_results.py sweep.json [baseline.json ...]

Every JSON given is read; grouped_mm's graph-clock rows may come from any of them.
"""
from __future__ import annotations

import sys

from show_layer_results import load_graph_sweep


def load(paths: list[str]) -> tuple[dict, dict]:
    """({(model, batch): grouped_mm seconds}, {(model, batch): {setting: extra_info}})."""
    grouped, sweep = load_graph_sweep(  # the wide-pass sweep records split_k too: its rows are not this table's
        paths, lambda info: None if "wide_variant" in info else info.get("split_k"))
    return {key: info["seconds_per_call"] for key, info in grouped.items()}, sweep


def main(paths: list[str]) -> None:
    grouped, sweep = load(paths)
    if not sweep:
        print("no split-K rows (extra_info 'split_k') in", ", ".join(paths))
        return
    print(f"{'model':14s} {'batch':>5s} {'warps/SM':>14s} {'grouped_mm':>11s}  "
          "setting: us (% of read bandwidth, splits launched, kernel)")
    for key in sorted(sweep, key=lambda k: (k[0], k[1])):
        rows = sweep[key]
        best = min(rows, key=lambda s: rows[s]["seconds_per_call"])
        g = grouped.get(key)
        cells = []
        for setting in sorted(rows, key=lambda s: (not s.isdigit(), int(s) if s.isdigit() else 0, s)):
            info = rows[setting]
            star = "*" if setting == best else " "
            cells.append(f"{star}S={setting}: {info['seconds_per_call'] * 1e6:7.1f} "
                         f"({100 * info['share_of_read_bandwidth']:4.1f} %, {info['down_k_splits']}, {info['kernel']})")
        gtxt = f"{g * 1e6:8.1f} us" if g else "         -"
        any_info = next(iter(rows.values()))
        warps = (f"{any_info['unsplit_warps_per_sm']:6.1f} ({any_info['touched_unsplit_warps_per_sm']:5.1f})"
                 if "unsplit_warps_per_sm" in any_info else f"{'-':>14s}")
        print(f"{key[0]:14s} {key[1]:5d} {warps} {gtxt}  " + "  ".join(cells))


if __name__ == "__main__":
    main(sys.argv[1:])
