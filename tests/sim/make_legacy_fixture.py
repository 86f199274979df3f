"""Writes `tests/sim/data/legacy_step_times.json`: decode step times of the step simulator's legacy mode.

The figures were produced by the serialized layer model (QKV, attention, O projection + router, AllGather,
one expert window of max(T_comm, T_GPU, T_PIM)) at commit 8fca1f5, with:

    git worktree add /tmp/heteromoe-8fca1f5 8fca1f5
    cd /tmp/heteromoe-8fca1f5 && python /path/to/tests/sim/make_legacy_fixture.py --out legacy_step_times.json

`tests/sim/test_graph.py` checks that `StepSimulator(..., options=StepOptions.legacy())` reproduces every
figure to 1e-9 (relative). Run at a later commit it writes the legacy mode's own figures (the script asks for
legacy options where the simulator has them), which is how a change of the legacy figures would be shown.
"""
from __future__ import annotations

import argparse
import inspect
import json

import numpy as np

import heteromoe
from heteromoe.sim import StepSimulator, SyntheticWorkload

SMALL = dict(name="small", hidden_size=2048, moe_intermediate_size=768, num_experts=32, top_k=4, num_layers=3,
             num_moe_layers=2, num_attention_heads=32, num_kv_heads=4, head_dim=128)
SETUPS = [("qwen3-30b-a3b", 1), ("gpt-oss-120b", 4), ("qwen3.5-397b-a17b", 8), ("small", 2)]
POLICIES = ["gpu-only", "no-exp", "all-exp", "duplex", "pimoe", "sieve", "heteromoe"]
BATCHES = [1, 16, 256]


def _legacy_kwargs() -> dict:
    if "options" in inspect.signature(StepSimulator).parameters:
        from heteromoe.sim.options import StepOptions
        return {"options": StepOptions.legacy()}
    return {}


def cases() -> list[dict]:
    out = []
    for model, gpus in SETUPS:
        spec = heteromoe.MoEModelSpec(**SMALL) if model == "small" else heteromoe.models.get(model)
        for batch in BATCHES:
            step = SyntheticWorkload(spec, seed=0).steps(batch, 1)[0]
            for policy in POLICIES:
                for context in (2048, "per-request"):
                    ctx = 2048 if context == 2048 else np.arange(batch) * 37 % 4096
                    sim = StepSimulator(spec, "b200-hbm3e-pim", gpus, policy, ctx, record=False, **_legacy_kwargs())
                    out.append({"model": model, "gpus": gpus, "batch": batch, "policy": policy,
                                "context": context, "step_time_s": sim.run(step).step_time_s})
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="tests/sim/data/legacy_step_times.json")
    args = parser.parse_args()
    with open(args.out, "w") as fh:
        json.dump({"system": "b200-hbm3e-pim", "seed": 0, "small_model": SMALL, "cases": cases()}, fh, indent=1)


if __name__ == "__main__":
    main()
