"""Print a hot-side GEMM sweep (bench_gpu_layer.py's test_heteromoe_gpu_only_grouped, graph clock) as one table
per model: per batch, transformers' grouped_mm, the shipped default path, then each variant (what runs the hot
experts: grouped_mm, triton, triton:<tile>), with its time in us, its share of the read bandwidth, the hot
experts, the most tokens of one expert, and the kernels; the fastest of each batch is starred.

    python bench/show_grouped_results.py sweep.json [more.json ...]
"""
from __future__ import annotations

import sys

from show_layer_results import load_graph_sweep


def column(info: dict) -> str | None:
    """A grouped-sweep row's column: its variant (None: not a row of this sweep)."""
    return info.get("grouped_variant")


def line(batch: int, column: str, info: dict, best: bool) -> str:
    return (f"{batch:5d} {'*' if best else ' '}{column:28s} {info['seconds_per_call'] * 1e6:8.1f} "
            f"{100 * info['share_of_read_bandwidth']:6.1f} {info.get('hot_experts', '-'):>4} "
            f"{info.get('max_expert_tokens', '-'):>5} {info.get('kernel', 'transformers'):s}")


def main(paths: list[str]) -> None:
    grouped, rows = load_graph_sweep(paths, column)
    if not rows:
        print("no grouped-sweep rows (extra_info 'grouped_variant') in", ", ".join(paths))
        return
    for model in sorted({m for m, _ in rows}):
        print(f"\n{model}, graph clock (hot: experts above the GEMV's 2 tokens; max: most tokens of one expert;"
              " * the fastest of the batch)")
        print(f"{'batch':>5s}  {'variant':28s} {'us':>8s} {'% bw':>6s} {'hot':>4s} {'max':>5s} kernel")
        for key in sorted(k for k in rows if k[0] == model):
            cells = rows[key]
            best = min(cells, key=lambda c: cells[c]["seconds_per_call"])
            if key in grouped:
                print(line(key[1], "transformers grouped_mm", grouped[key], False))
            for name in sorted(cells, key=lambda c: (c != "default", c)):
                print(line(key[1], name, cells[name], name == best))


if __name__ == "__main__":
    main(sys.argv[1:])
