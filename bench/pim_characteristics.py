"""The PIM timing model's characteristics that the README compares with published figures.

Run:  python bench/pim_characteristics.py --json bench/results/pim-characteristics.json
Per bank-level preset: the derived internal bandwidth multiple, GEMV speed-up over plain HBM at one token,
break-even token count, refresh share, and the closed form's largest deviation from the command walk
(averaged over refresh phases); per model on b200-hbm3e-pim: the bank model's time per expert token over
the plain roofline, and the mode switches' share of its up-projection.
"""
from __future__ import annotations

import argparse
import json
import sys

import heteromoe
from heteromoe.cost.pim import PimRooflineV1
from heteromoe.cost.pim_bank import BankPimCost, BankPimTiming

BANK = ["samsung-hbm2-pim", "h100-hbm3-pim", "h200-hbm3e-pim", "b200-hbm3e-pim"]
GEMVS = [(4096, 28672), (2048, 1536)]
GRID = [(64, 64), (512, 512), (768, 2048), (2048, 1536), (2880, 5760), (4096, 28672), (7168, 4096)]
MODELS = ["qwen3-30b-a3b", "gpt-oss-120b", "qwen3.5-397b-a17b", "mixtral-8x7b", "deepseek-v3"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    out = {"command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
           "systems": {}, "models_on_b200": {}}
    for name in BANK:
        system = heteromoe.systems.get(name)
        t = BankPimTiming(system.pim)
        entry = {"bw_multiplier": system.pim.bw_multiplier,
                 "refresh_share": t.t.t_rfc_ns / (t.t.t_refi_ns - t.t.t_rfc_ns), "gemv": []}
        for d_in, d_out in GEMVS:
            pim = float(t.gemv_s(d_in, d_out, 1))
            hbm = t.hbm_read_s(d_in, d_out, 1, gpu=system.gpu)
            break_even = next(n for n in range(1, 1000)
                              if t.hbm_read_s(d_in, d_out, n, gpu=system.gpu) < float(t.gemv_s(d_in, d_out, n)))
            entry["gemv"].append({"d_in": d_in, "d_out": d_out, "pim_ns": pim * 1e9, "hbm_read_ns": hbm * 1e9,
                                  "speedup": hbm / pim, "break_even_tokens": break_even})
        entry["closed_vs_commands_max_rel_dev"] = max(
            abs(float(t.gemv_s(di, do, n)) / t.gemv_commands_expected_s(di, do, n) - 1)
            for di, do in GRID for n in (1, 3, 16))
        out["systems"][name] = entry
        print(f"{name}: X {entry['bw_multiplier']:.2f}, refresh {100 * entry['refresh_share']:.1f} %, closed form vs "
              f"walk max {100 * entry['closed_vs_commands_max_rel_dev']:.2f} %; " + "; ".join(
                  f"{g['d_in']}x{g['d_out']}: {g['speedup']:.2f}x, break-even {g['break_even_tokens']}" for g in entry["gemv"]))
    logic = heteromoe.systems.get("h100-logic-pim")
    roof = PimRooflineV1(logic.pim, heteromoe.models.get("qwen3-30b-a3b"))
    out["systems"]["h100-logic-pim"] = {"gemv_roofline_ns": {f"{di}x{do}": float(roof.gemv_s(di, do, 1)) * 1e9
                                                             for di, do in GEMVS}}
    b200 = heteromoe.systems.get("b200-hbm3e-pim")
    for name in MODELS:
        spec = heteromoe.models.get(name)
        cost = BankPimCost(b200.pim, spec)
        up = cost.timing.gemv(spec.hidden_size, 2 * spec.moe_intermediate_size, 1)
        ratio = cost.per_token_s() / (spec.expert_weight_bytes / b200.pim.internal_bw_bytes_per_s)
        out["models_on_b200"][name] = {"per_token_ns": cost.per_token_s() * 1e9, "over_roofline": ratio,
                                       "mode_share_of_up_gemv": float(up.mode_s / up.total_s)}
        print(f"b200 {name}: {ratio:.2f}x the roofline per expert token, mode switches "
              f"{100 * float(up.mode_s / up.total_s):.0f} % of the up-projection")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
