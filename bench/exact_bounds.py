"""How far `exact` runs past its time limit, and the memory it takes, at any token count.

Run:  python bench/exact_bounds.py --json bench/results/exact-bounds-cpu-2core.json

Each case runs in a fresh Python process (so its peak resident memory is its own): the process imports
heteromoe, makes one plan with the `heteromoe` policy and imports OR-Tools (warm-up; the import, which the first
`exact` call of a process pays, is timed apart), records its resident memory,
then times one `schedule(..., policy=ExactPolicy(time_limit_s))` call and records the peak resident memory
again. Cases: Qwen3-30B-A3B's expert shape with 128 or 512 experts on 1 or 8 h100-hbm3-pim GPUs, uniform
(2,000 tokens), Zipf (10^6) and huge (up to 10^7 tokens per expert) counts, limits 0.1 s and 1 s.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import dataclasses, json, resource, sys, time
import numpy as np
import heteromoe
from heteromoe.sched.exact import cp_model_module
from heteromoe.sched.policies.exact import ExactPolicy

experts, gpus, kind, limit = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
rng = np.random.default_rng(0)
if kind == "uniform":
    counts = rng.multinomial(2000, np.full(experts, 1 / experts))
elif kind == "zipf":
    w = 1.0 / np.arange(1, experts + 1) ** 1.2
    counts = rng.multinomial(1_000_000, rng.permutation(w / w.sum()))
else:
    counts = rng.integers(0, 10_000_000, experts)
spec = dataclasses.replace(heteromoe.models.get("qwen3-30b-a3b"), num_experts=experts, top_k=8)
kw = dict(model=spec, system="h100-hbm3-pim", gpus=gpus)
heteromoe.schedule(counts, policy="heteromoe", **kw)
import_start = time.perf_counter()
cp_model_module()  # the first call in a process imports OR-Tools: timed apart
import_s = time.perf_counter() - import_start
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
plan = heteromoe.schedule(counts, policy=ExactPolicy(time_limit_s=limit), **kw)
elapsed = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"experts": experts, "gpus": gpus, "counts": kind, "max_count": int(counts.max()),
                  "time_limit_s": limit, "ortools_import_s": import_s, "wall_s": elapsed,
                  "over_limit_s": elapsed - limit,
                  "rss_before_mib": before / 1024, "peak_rss_mib": after / 1024,
                  "peak_rss_growth_mib": (after - before) / 1024, "statuses": plan.info["statuses"],
                  "granularity": [g["granularity"] for g in plan.info["exact"]]}))
"""

CASES = [(128, 1, "uniform"), (128, 1, "zipf"), (128, 1, "huge"), (512, 1, "huge"), (512, 1, "zipf"),
         (128, 8, "huge"), (512, 8, "zipf")]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--limits", default="0.1,1.0")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    rows = []
    for limit in (float(x) for x in args.limits.split(",")):
        for experts, gpus, kind in CASES:
            out = subprocess.run([sys.executable, "-c", CHILD, str(experts), str(gpus), kind, str(limit)],
                                 capture_output=True, text=True, check=True)
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append(row)
            print(f"E={experts:>3} G={gpus} {kind:<8} limit {limit:>4.1f} s: wall {row['wall_s']:.3f} s "
                  f"(+{row['over_limit_s']:.3f}), peak RSS {row['peak_rss_mib']:.0f} MiB "
                  f"(+{row['peak_rss_growth_mib']:.0f}), {row['statuses']}, step {row['granularity']}")
    summary = {"max_over_limit_s": max(r["over_limit_s"] for r in rows),
               "max_peak_rss_growth_mib": max(r["peak_rss_growth_mib"] for r in rows)}
    print(summary)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
                       "rows": rows, "summary": summary}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
