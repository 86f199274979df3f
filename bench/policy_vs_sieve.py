"""`heteromoe` against `sieve` in the step simulator: ratios per setup and batch, the ablation of each of
heteromoe's step mechanisms, colocated prefill and real routing traces.

Run:  python bench/policy_vs_sieve.py --json bench/results/policy-vs-sieve.json --md bench/results/policy-vs-sieve.md
(2-core CPU, a few minutes). Ratio = sieve step time / heteromoe step time at equal batch (> 1: heteromoe is
faster), mean of 3 steps of the same routing (synthetic calibrated routing, context 2048). Ablation: heteromoe
with one mechanism off (`HeteromoePolicy` flags: sub_batch_choice, dense_on_pim, attention_split) and with all
three off (one sub-batch, the expert split alone); a mechanism's share of the gain is
(log gain - log gain without it) / log gain. Traces: each trace's expert count, top-k and MoE layers on
Qwen3-30B-A3B's shapes (the shared traces are of small 60-64-expert models); skipped where /work/shared or the
trace is absent.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path

import numpy as np

from heteromoe.routing.traces import load_trace
from heteromoe.sched.policies.heteromoe_policy import HeteromoePolicy
from heteromoe.sim.prefill import sieve_prefill
from heteromoe.sim.sweep import sweep
from heteromoe.spec.presets import models

BATCHES = [1, 4, 16, 32, 64, 128, 256]
SETUPS = [("b200-hbm3e-pim", "qwen3-30b-a3b", 1), ("b200-hbm3e-pim", "gpt-oss-120b", 4),
          ("b200-hbm3e-pim", "qwen3.5-397b-a17b", 8), ("h100-hbm3-pim", "qwen3-30b-a3b", 1),
          ("h100-hbm3-pim", "qwen3-30b-a3b", 2), ("h100-hbm3-pim", "gpt-oss-120b", 2)]
ABLATION = {"sub_batch_choice": dict(sub_batch_choice=False), "dense_on_pim": dict(dense_on_pim=False),
            "attention_split": dict(attention_split=False),
            "all three": dict(sub_batch_choice=False, dense_on_pim=False, attention_split=False)}
TRACES = ["/work/shared/traces/DynaNDE-Simulator", "/work/shared/traces/cerebras-assesment2/moe_routes.jsonl",
          "/work/shared/traces/vllm_moe_routelogging_patch"]


def times(model, system, gpus, policy, batches, **kw) -> dict[int, float]:
    records = sweep(model, system, gpus, [policy], batches, **kw)
    return {r["batch"]: r["step_time_s"] for r in records}


def ratios(model, system, gpus, batches, policy=None, **kw) -> dict:
    sieve = times(model, system, gpus, "sieve", batches, **kw)
    het = times(model, system, gpus, policy or "heteromoe", batches, **kw)
    r = {b: sieve[b] / het[b] for b in batches}
    return {"sieve_s": sieve, "heteromoe_s": het, "ratio": r, "geomean": float(np.exp(np.mean(np.log(list(r.values())))))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", required=True)
    ap.add_argument("--md", required=True)
    args = ap.parse_args()
    out: dict = {"batches": BATCHES, "setups": [], "prefill": [], "traces": []}
    lines = ["| system | model x GPUs | " + " | ".join(f"B={b}" for b in BATCHES) + " | geomean | best |",
             "|---|---|" + "---|" * (len(BATCHES) + 2)]
    abl = ["| model x GPUs | mechanism off | " + " | ".join(f"B={b}" for b in BATCHES) + " |",
           "|---|---|" + "---|" * len(BATCHES)]
    for system, model, gpus in SETUPS:
        res = ratios(model, system, gpus, BATCHES)
        entry = {"system": system, "model": model, "gpus": gpus, **res, "ablation": {}}
        r = res["ratio"]
        lines.append(f"| {system} | {model} x{gpus} | " + " | ".join(f"{r[b]:.2f}" for b in BATCHES)
                     + f" | {res['geomean']:.2f} | {max(r.values()):.2f} |")
        if system == "b200-hbm3e-pim":
            for name, flags in ABLATION.items():
                het_off = times(model, system, gpus, HeteromoePolicy(**flags), BATCHES)
                shares = {}
                for b in BATCHES:
                    full = math.log(r[b])
                    without = math.log(res["sieve_s"][b] / het_off[b])
                    shares[b] = {"ratio_without": res["sieve_s"][b] / het_off[b],
                                 "share": (full - without) / full if abs(full) > 1e-9 else 0.0}
                entry["ablation"][name] = shares
                abl.append(f"| {model} x{gpus} | {name} | " + " | ".join(
                    f"{shares[b]['ratio_without']:.2f} ({100 * shares[b]['share']:.0f} %)" for b in BATCHES) + " |")
        out["setups"].append(entry)
        print(lines[-1], flush=True)
    pre = ["| model x GPUs | " + " | ".join(f"B={b}" for b in BATCHES[1:]) + " |", "|---|" + "---|" * (len(BATCHES) - 1)]
    for system, model, gpus in SETUPS[:3]:
        res = ratios(model, system, gpus, BATCHES[1:], prefill=sieve_prefill)
        out["prefill"].append({"system": system, "model": model, "gpus": gpus, **res})
        pre.append(f"| {model} x{gpus} | " + " | ".join(f"{res['ratio'][b]:.2f}" for b in BATCHES[1:]) + " |")
        print(pre[-1], flush=True)
    tr = ["| trace | experts / top-k / layers | " + " | ".join(f"B={b}" for b in BATCHES[:5]) + " |",
          "|---|---|" + "---|" * 5]
    base = models.get("qwen3-30b-a3b")
    for path in TRACES:
        if not Path(path).exists():
            continue
        t = load_trace(path)
        layers = base.num_layers if t.num_layers == 1 else t.num_layers
        spec = dataclasses.replace(base, name=f"qwen3-30b-shapes-{t.num_experts}e", num_experts=t.num_experts,
                                   top_k=t.top_k, num_layers=layers, num_moe_layers=layers)
        batches = [b for b in BATCHES[:5] if b <= t.num_tokens // 3]
        res = ratios(spec, "b200-hbm3e-pim", 1, batches, trace=t)
        out["traces"].append({"trace": path, "experts": t.num_experts, "top_k": t.top_k, "layers": layers, **res})
        tr.append(f"| {Path(path).name} | {t.num_experts} / {t.top_k} / {layers} | "
                  + " | ".join(f"{res['ratio'].get(b, float('nan')):.2f}" for b in BATCHES[:5]) + " |")
        print(tr[-1], flush=True)
    Path(args.json).write_text(json.dumps(out, indent=1, default=float))
    md = ["## sieve / heteromoe step time", "", *lines, "", "## Ablation (ratio with the mechanism off, its share of "
          "the gain)", "", *abl, "", "## Colocated prefill (2 x 1024 at B <= 32, 8 x 1024 at B >= 64)", "", *pre, "",
          "## Real routing traces (b200-hbm3e-pim, 1 GPU)", "", *tr, ""]
    Path(args.md).write_text("\n".join(md))


if __name__ == "__main__":
    main()
