"""Print a wide-pass sweep (bench_gpu_layer.py's test_heteromoe_gpu_only_wide_pass, graph clock) as one table per
model: per batch, transformers' grouped_mm, the shipped default path, then each variant "P=.. S=.." (passes of P
tiles of 8 tokens on the tensor cores, P = 4 the default 32-token pass; the down projection split by the setting
S), each with its time in us, its share of the read bandwidth, the readings of expert weights it makes (passes
summed over the experts), the splits launched and the kernel; the fastest of each batch is starred.

    python bench/show_wide_pass_results.py sweep.json [more.json ...]
"""
from __future__ import annotations

import sys

from show_layer_results import load_graph_sweep


def column(info: dict) -> str | None:
    """A wide-pass row's column: "default" or "P=.. S=.." (None: not a wide-pass row)."""
    variant = info.get("wide_variant")
    if variant is None:
        return None
    return "default" if variant == "default" else f"P={variant} S={info['split_k']}"


def load(paths: list[str]) -> tuple[dict, dict]:
    """({(model, batch): grouped_mm extra_info}, {(model, batch): {column: extra_info}})."""
    return load_graph_sweep(paths, column)


def line(batch: int, column: str, info: dict, best: bool) -> str:
    reads = info.get("expert_reads")
    return (f"{batch:5d} {'*' if best else ' '}{column:14s} {info['seconds_per_call'] * 1e6:8.1f} "
            f"{100 * info['share_of_read_bandwidth']:6.1f} {'-' if reads is None else reads:>6} "
            f"{info.get('down_k_splits', '-'):>6} {info.get('kernel', 'transformers'):s}")


def main(paths: list[str]) -> None:
    grouped, rows = load(paths)
    if not rows:
        print("no wide-pass rows (extra_info 'wide_variant') in", ", ".join(paths))
        return
    for model in sorted({m for m, _ in rows}):
        print(f"\n{model}, graph clock (reads: passes summed over the experts; * the fastest of the batch)")
        print(f"{'batch':>5s}  {'variant':14s} {'us':>8s} {'% bw':>6s} {'reads':>6s} {'splits':>6s} kernel")
        for key in sorted(k for k in rows if k[0] == model):
            cells = rows[key]
            best = min(cells, key=lambda c: cells[c]["seconds_per_call"])
            touched = next(iter(cells.values())).get("touched_experts", "-")
            if key in grouped:
                print(line(key[1], "grouped_mm", grouped[key], False) + f" ({touched} experts touched)")
            for column in sorted(cells, key=lambda c: (c != "default", c)):
                print(line(key[1], column, cells[column], column == best))


if __name__ == "__main__":
    main(sys.argv[1:])
