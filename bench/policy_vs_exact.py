"""`heteromoe`'s per-layer decision against the widened `exact` yardstick (`sched.exact_layer`) on hidden
bimodal loads.

Run:  python bench/policy_vs_exact.py --json bench/results/policy-vs-exact.json
(2-core CPU, about a minute). Per setup (b200-hbm3e-pim: qwen3-30b-a3b x1, gpt-oss-120b x4,
qwen3.5-397b-a17b x8), batch (1, 16, 256) and seed (0-4), one decode step's routing is drawn from
`routing.synth.BimodalRouting.for_model(model, seed)` and run through the step simulator with `heteromoe`,
which records the inputs of its step plan. For the one-sub-batch candidate and each kind of MoE layer
(full attention; Qwen3.5 also linear attention), on the first MoE layer's counts, it reports the layer
estimate (`sched.step_plan.estimate_layer`) of `heteromoe`'s decision, of `sieve`'s, and of the yardstick's
optimum (every dense placement, every per-GPU attention request count, the CP-SAT expert split), and
heteromoe / exact and sieve / heteromoe.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from heteromoe.routing.synth import BimodalRouting
from heteromoe.sched.exact_layer import exact_layer, policy_layer_time
from heteromoe.sched.policies.heteromoe_policy import HeteromoePolicy
from heteromoe.sim.step import StepSimulator
from heteromoe.spec.presets import models

SYSTEM = "b200-hbm3e-pim"
SETUPS = [("qwen3-30b-a3b", 1), ("gpt-oss-120b", 4), ("qwen3.5-397b-a17b", 8)]
BATCHES = [1, 16, 256]
SEEDS = [0, 1, 2, 3, 4]


class _Recording(HeteromoePolicy):
    """`heteromoe`, keeping the inputs of its last step plan."""

    def step_plan(self, candidates, dense_layers, placement, num_gpus, cost):
        self.inputs = (candidates, dense_layers, placement, cost)
        return super().step_plan(candidates, dense_layers, placement, num_gpus, cost)


def cases(model: str, gpus: int, batch: int, seed: int, time_limit_s: float) -> list[dict]:
    spec = models.get(model)
    policy = _Recording()
    sim = StepSimulator(spec, SYSTEM, gpus, policy, 2048, record=False)
    sim.run(BimodalRouting.for_model(spec, seed=seed).decode(batch, 1, spec.num_moe_layers)[0])
    candidates, dense_layers, placement, cost = policy.inputs
    layers, counts, _ = candidates[1]
    out, seen = [], set()
    for i in range(dense_layers, len(layers)):
        c = layers[i]
        if id(c) in seen:
            continue
        seen.add(id(c))
        ex = exact_layer(c, counts[0], placement, cost, time_limit_s=time_limit_s)
        het, het_combo, het_attn, _ = policy_layer_time(c, counts[0], placement, cost, "heteromoe")
        sieve, _, _, _ = policy_layer_time(c, counts[0], placement, cost, "sieve")
        out.append({"model": model, "gpus": gpus, "batch": batch, "seed": seed, "layer": i,
                    "full_attention": bool(np.any(c.attn_gpu > 0)),
                    "exact_s": ex.time_s, "heteromoe_s": het, "sieve_s": sieve,
                    "heteromoe_over_exact": het / ex.time_s, "sieve_over_heteromoe": sieve / het,
                    "exact_placement": list(ex.placement), "exact_attn_gpu_requests": ex.attn_gpu_requests.tolist(),
                    "heteromoe_placement": list(het_combo), "heteromoe_attn_gpu_requests": np.asarray(het_attn).tolist(),
                    "cp_sat_statuses": ex.statuses, "proved_optimal": ex.proved})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--time-limit", type=float, default=2.0, help="CP-SAT seconds per (placement, GPU) solve")
    args = ap.parse_args()
    rows = []
    for model, gpus in SETUPS:
        for batch in BATCHES:
            for seed in SEEDS:
                rows.extend(cases(model, gpus, batch, seed, args.time_limit))
    r = np.array([x["heteromoe_over_exact"] for x in rows])
    s = np.array([x["sieve_over_heteromoe"] for x in rows])
    summary = {"cases": len(rows), "heteromoe_over_exact_mean": float(r.mean()),
               "heteromoe_over_exact_max": float(r.max()), "sieve_over_heteromoe_min": float(s.min()),
               "all_proved_optimal": all(x["proved_optimal"] for x in rows), "per_setup_batch": []}
    for model, gpus in SETUPS:
        for batch in BATCHES:
            sel = [x for x in rows if x["model"] == model and x["batch"] == batch]
            rr = np.array([x["heteromoe_over_exact"] for x in sel])
            summary["per_setup_batch"].append({"model": model, "gpus": gpus, "batch": batch, "cases": len(sel),
                                               "heteromoe_over_exact_mean": float(rr.mean()),
                                               "heteromoe_over_exact_max": float(rr.max()),
                                               "sieve_over_heteromoe_min": float(min(x["sieve_over_heteromoe"] for x in sel))})
    doc = {"command": "python " + " ".join(sys.argv), "system": SYSTEM, "machine": "2-core CPU",
           "seeds": SEEDS, "batches": BATCHES, "summary": summary, "cases": rows}
    with open(args.json, "w") as f:
        json.dump(doc, f, indent=1)
    print(f"{len(rows)} layer cases: heteromoe / exact mean {r.mean():.4f}, max {r.max():.4f}; "
          f"sieve / heteromoe min {s.min():.3f}; all proved optimal: {summary['all_proved_optimal']}")
    for e in summary["per_setup_batch"]:
        print(f"{e['model']} x{e['gpus']} B={e['batch']}: mean {e['heteromoe_over_exact_mean']:.4f} "
              f"max {e['heteromoe_over_exact_max']:.4f} sieve/het min {e['sieve_over_heteromoe_min']:.3f}")


if __name__ == "__main__":
    main()
