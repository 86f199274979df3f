"""Sieve's three setups on b200-hbm3e-pim, every policy, batch 1-256, decode only.

Run:  python bench/paper_comparison.py --out bench/results
Writes per setup `paper-<model>-x<G>.json` (records, Pareto frontiers, ratios) and `.png` (Pareto), plus
`-gantt.png` and `-loads.png` for sieve at batch 256, and `paper-summary.json`. Synthetic routing calibrated
per model (`routing.synth`), 2048 tokens of context per request, 3 decode steps per point. `heteromoe+replicas`
plans with 2 replica slots per GPU, placed by the slow loop from 32 warm-up steps (multi-GPU setups only).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

import heteromoe
from heteromoe.sched.placement import contiguous_placement
from heteromoe.sched.replicas import place_replicas
from heteromoe.sim import StepSimulator, pareto_frontier, sweep
from heteromoe.sim.plots import plot_gantt, plot_load_histogram, plot_pareto
from heteromoe.sim.workload import SyntheticWorkload

SETUPS = [("qwen3-30b-a3b", 1), ("gpt-oss-120b", 4), ("qwen3.5-397b-a17b", 8)]
PAPER_SIEVE_OVER_PIMOE = {"qwen3-30b-a3b": 1.6, "gpt-oss-120b": 1.3, "qwen3.5-397b-a17b": 1.3}
POLICIES = ["gpu-only", "no-exp", "all-exp", "duplex", "pimoe", "sieve", "heteromoe"]
BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256]


def ratios(records, num, den):
    by = {(r["policy"], r["batch"]): r["step_time_s"] for r in records}
    per_batch = {b: by[den, b] / by[num, b] for b in sorted({r["batch"] for r in records}) if (num, b) in by}
    vals = np.array(list(per_batch.values()))
    return {"per_batch": per_batch, "geomean": float(np.exp(np.log(vals).mean())), "max": float(vals.max()),
            "min": float(vals.min())}


def max_throughput_at(records, policy, min_interactivity):
    ok = [r["throughput_per_gpu"] for r in records if r["policy"] == policy and r["interactivity"] >= min_interactivity]
    return max(ok) if ok else None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="bench/results")
    parser.add_argument("--system", default="b200-hbm3e-pim")
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = {"command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
               "machine": platform.platform(), "system": args.system, "context": args.context, "setups": []}
    for model, gpus in SETUPS:
        start = time.time()
        spec = heteromoe.models.get(model)
        records = sweep(spec, args.system, gpus, POLICIES, BATCHES, context=args.context, steps=args.steps)
        if gpus > 1:
            warm = SyntheticWorkload(spec, seed=99).steps(64, 32)  # (steps, layers, batch, k)
            load = np.mean([np.bincount(s.reshape(-1), minlength=spec.num_experts) for s in warm.reshape(-1, *warm.shape[2:])], axis=0)
            placement = place_replicas(load, contiguous_placement(spec.num_experts, gpus), gpus, slots_per_gpu=2)
            for r in sweep(spec, args.system, gpus, ["heteromoe"], BATCHES, context=args.context, steps=args.steps,
                           placement=placement):
                r["policy"] = "heteromoe+replicas"
                records.append(r)
        ours = "heteromoe+replicas" if gpus > 1 else "heteromoe"
        result = {
            "model": model, "gpus": gpus, "records": records,
            "pareto": {p: [r["batch"] for r in pts] for p, pts in pareto_frontier(records).items()},
            "sieve_over_pimoe": ratios(records, "sieve", "pimoe"),
            "paper_sieve_over_pimoe": PAPER_SIEVE_OVER_PIMOE[model],
            "heteromoe_over_sieve": ratios(records, ours, "sieve"),
            "over_gpu_only": {p: ratios(records, p, "gpu-only")["geomean"] for p in POLICIES[1:] + [ours] if p != "gpu-only"},
            "max_throughput_per_gpu_at_50_tok_s_user": {
                p: max_throughput_at(records, p, 50.0) for p in sorted({r["policy"] for r in records})},
        }
        stem = out / f"paper-{model}-x{gpus}"
        Path(f"{stem}.json").write_text(json.dumps(result, indent=1))
        title = f"{model} on {gpus}x {args.system}, context {args.context}"
        plot_pareto(records, f"{stem}.png", title)
        step = SyntheticWorkload(spec).steps(256, 1)[0]
        sim = StepSimulator(spec, args.system, gpus, "sieve", args.context).run(step)
        plot_gantt(sim.timeline, spec.num_layers - 1, f"{stem}-gantt.png", f"sieve, last layer, batch 256 ({title})")
        plot_load_histogram(sim.loads[-1], f"{stem}-loads.png", f"{model}: expert loads of the last MoE layer, batch 256")
        summary["setups"].append({k: result[k] for k in ("model", "gpus", "sieve_over_pimoe", "paper_sieve_over_pimoe",
                                                         "heteromoe_over_sieve", "over_gpu_only",
                                                         "max_throughput_per_gpu_at_50_tok_s_user")})
        s = result["sieve_over_pimoe"]
        h = result["heteromoe_over_sieve"]
        print(f"{model} x{gpus}: sieve/pimoe geomean {s['geomean']:.3f} (min {s['min']:.2f}, max {s['max']:.2f}; paper "
              f"{PAPER_SIEVE_OVER_PIMOE[model]}), {ours}/sieve geomean {h['geomean']:.3f} (max {h['max']:.3f}), "
              f"over gpu-only: " + ", ".join(f"{p} {v:.2f}" for p, v in result["over_gpu_only"].items())
              + f"  [{time.time() - start:.0f} s]")
    (out / "paper-summary.json").write_text(json.dumps(summary, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
