"""How close the synthetic routing is to the published one-token shares.

Run:  python bench/synth_calibration.py --json bench/results/synth-calibration.json
Per model with a published figure: the share of activated experts receiving exactly one token at batch
64 and 256, over 48 layers x 4 decode steps, mean and standard deviation over 8 seeds.
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from heteromoe.routing.synth import (
    PRESET_SKEW,
    PUBLISHED_ONE_TOKEN_SHARE,
    BimodalRouting,
    one_token_share,
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--seeds", type=int, default=8)
    args = parser.parse_args(argv)
    out = {"command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]), "models": {}}
    for model, published in PUBLISHED_ONE_TOKEN_SHARE.items():
        rows = {}
        for batch, target in zip((64, 256), published):
            values = []
            for seed in range(args.seeds):
                gen = BimodalRouting.for_model(model, seed=100 + seed)
                ids = gen.decode(batch, 4, 48)
                counts = np.stack([np.bincount(s.reshape(-1), minlength=gen.num_experts)
                                   for s in ids.reshape(-1, batch, gen.top_k)])
                values.append(100 * one_token_share(counts))
            rows[batch] = {"published_pct": target, "mean_pct": float(np.mean(values)), "std_pct": float(np.std(values))}
        out["models"][model] = {"hot_share_ratio": PRESET_SKEW[model], "batches": rows}
        print(model, {b: f"{r['mean_pct']:.1f} +- {r['std_pct']:.1f} (published {r['published_pct']})"
                      for b, r in rows.items()})
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
