"""The fused layer's GPU table (docs/results.md) from a bench_gpu_layer.py JSON: per layer shape and batch,
transformers' grouped_mm and heteromoe gpu-only on the graph clock (us per call, share of the read bandwidth),
both on the eager clock, and heteromoe's host time per call.

    python bench/gpu_table.py bench/results/gpu-layer-h200.json                      # print the table
    python bench/gpu_table.py bench/results/gpu-layer-h200.json --docs docs/results.md  # rewrite its marked table

With --docs the table between `<!-- gpu-layer-table:begin -->` and `<!-- gpu-layer-table:end -->` is replaced
(the GPU's name, from the JSON, heads it), so the figures in the documentation are the file's.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

MARK_BEGIN, MARK_END = "<!-- gpu-layer-table:begin -->", "<!-- gpu-layer-table:end -->"
LAYERS = {"qwen3-30b-a3b": "Qwen3-30B-A3B", "mixtral-8x7b": "Mixtral-8x7B"}
GPU_ONLY, GROUPED = "heteromoe gpu-only", "grouped_mm"


def rows_of(path: Path) -> dict[tuple[str, int, str, str], dict]:
    """extra_info of every benchmark, keyed by (model, batch, path, clock)."""
    rows = {}
    for bench in json.loads(path.read_text())["benchmarks"]:
        info = bench["extra_info"]
        if any(k in info for k in ("wide_variant", "split_k", "grouped_variant")):  # sweep rows (gpu_wide_pass.sh,
            continue                                                                # gpu_splitk.sh, gpu_grouped.sh)
        rows[(info["model"], info["batch"], info["path"], info["clock"])] = info
    return rows


def table(path: Path) -> str:
    """The markdown table of one layer benchmark JSON (cases it lacks are left out)."""
    rows = rows_of(path)
    gpus = {info["gpu"] for info in rows.values()}
    lines = [f"GPU: {', '.join(sorted(gpus))}; file: `{path.as_posix()}`", "",
             "| layer | batch | grouped_mm us (BW) | heteromoe gpu-only us (BW) | gpu-only / grouped_mm "
             "| eager us: grouped_mm / heteromoe | host us |",
             "|---|---|---|---|---|---|---|"]
    cases = sorted({(m, b) for m, b, p, _ in rows if p == GPU_ONLY}, key=lambda c: (list(LAYERS).index(c[0])
                                                                                     if c[0] in LAYERS else 9, c[1]))
    for model, batch in cases:
        mine, theirs = rows.get((model, batch, GPU_ONLY, "graph")), rows.get((model, batch, GROUPED, "graph"))
        if mine is None:
            continue
        mine_eager, theirs_eager = rows.get((model, batch, GPU_ONLY, "eager")), rows.get((model, batch, GROUPED,
                                                                                            "eager"))

        def us(info: dict | None, bw: bool = False) -> str:
            if info is None:
                return "-"
            text = f"{info['seconds_per_call'] * 1e6:.1f}"
            return text + f" ({100 * info['share_of_read_bandwidth']:.1f} %)" if bw else text

        ratio = f"{mine['seconds_per_call'] / theirs['seconds_per_call']:.2f}" if theirs else "-"
        host = f"{mine_eager['host_s_per_call'] * 1e6:.0f}" if mine_eager and "host_s_per_call" in mine_eager else "-"
        lines.append(f"| {LAYERS.get(model, model)} | {batch} | {us(theirs, True)} | {us(mine, True)} | {ratio} "
                     f"| {us(theirs_eager)} / {us(mine_eager)} | {host} |")
    return "\n".join(lines)


def write_docs(docs: Path, text: str) -> None:
    """Replace the marked table of `docs` by `text`."""
    content = docs.read_text()
    begin, end = content.find(MARK_BEGIN), content.find(MARK_END)
    if begin < 0 or end < begin:
        raise SystemExit(f"--docs {docs}: no {MARK_BEGIN} ... {MARK_END} markers to write between")
    docs.write_text(content[:begin + len(MARK_BEGIN)] + "\n" + text + "\n" + content[end:])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("json", type=Path, help="a bench_gpu_layer.py --benchmark-json file")
    parser.add_argument("--docs", type=Path, default=None, help="markdown file whose marked table is rewritten")
    args = parser.parse_args(argv)
    text = table(args.json)
    print(text)
    if args.docs is not None:
        write_docs(args.docs, text)


if __name__ == "__main__":
    main()
