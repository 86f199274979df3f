"""The PIM timing model's characteristics, beside the published figures they are compared with.

Run:  python bench/pim_characteristics.py --json bench/results/pim-characteristics.json --docs docs/pim-timing.md
Per bank-level preset: its command flow, the internal bandwidth multiple, the refresh share, the closed form's
largest deviation from the command walk (averaged over refresh phases, 1-8 tokens); the reference runs
(PIMSimulator's stock GEMV and plain reads for samsung-hbm2-pim, AttAcc's bank-PIM sweep rate and plain HBM3
reads for h100-hbm3-pim); the PIM speed-up over the plain read per expert shape for 1, 2, 4 and 8 tokens
(samsung-hbm2-pim on one stack against host reads, GPU presets on all stacks against the GPU's read); per
model on b200-hbm3e-pim, the bank model's time per expert token over the plain roofline. With --docs the
speed-up table is rewritten in place between its markers in that markdown file.
"""
from __future__ import annotations

import argparse
import json
import re
import sys

import heteromoe
from heteromoe.cost.pim import PimRooflineV1
from heteromoe.cost.pim_bank import BankPimCost, BankPimTiming

BANK = ["samsung-hbm2-pim", "h100-hbm3-pim", "h200-hbm3e-pim", "b200-hbm3e-pim"]
GRID = [(64, 64), (512, 512), (768, 2048), (2048, 1536), (2880, 5760), (4096, 28672), (7168, 4096)]
TOKENS = (1, 2, 4, 8)
EXPERT_MODELS = ["qwen3-30b-a3b", "gpt-oss-120b", "qwen3.5-397b-a17b", "mixtral-8x7b", "deepseek-v3"]
PUBLISHED = {  # the published figure each preset's speed-ups are read beside
    "samsung-hbm2-pim": "PIMSimulator PIMBenchFixture.gemv, 4096 x 4096, 1 vector, 64 pCH: 36,082 / 13,166 cycles = 2.74x",
    "h100-hbm3-pim": "AttAcc src/config.py: power-constrained bank-level PIM streams at 9x; over a GPU read at 0.85 "
                     "of the peak at most 9 / 0.85 = 10.6x",
    "h200-hbm3e-pim": "AttAcc's 9x power cap as for h100: at most 10.6x over a GPU read at 0.85 of the peak",
    "b200-hbm3e-pim": "Sieve publishes no per-GEMV speed-up; its Table 1 timings bound the all-bank stream at 12x "
                      "(24 banks x 32 B per tCCD_L of 2 ns against 32 GB/s per pseudo-channel)",
}
MARK_BEGIN, MARK_END = "<!-- pim-characteristics:begin -->", "<!-- pim-characteristics:end -->"


def expert_shapes():
    out = []
    for name in EXPERT_MODELS:
        m = heteromoe.models.get(name)
        out.append((name, "up", m.hidden_size, 2 * m.moe_intermediate_size))
        out.append((name, "down", m.moe_intermediate_size, m.hidden_size))
    return out


def references(out: dict) -> list[str]:
    lines = []
    samsung = heteromoe.systems.get("samsung-hbm2-pim")
    t4 = BankPimTiming(samsung.pim, stacks=4)
    walk = t4.gemv_commands(4096, 4096, 1)  # first refresh one tREFI in, as the simulator's controller
    pim_ns, plain_ns = float(t4.gemv_s(4096, 4096, 1)) * 1e9, t4.hbm_read_s(4096, 4096, 1) * 1e9
    t1 = BankPimTiming(samsung.pim, stacks=1)
    read_bw = 8192 * 8192 * 2 / t1.hbm_read_s(8192, 8192, 1)
    out["references"]["samsung-hbm2-pim"] = {
        "stock_gemv_4096x4096_64pch": {"reference_pim_cycles": 13166, "model_pim_cycles": pim_ns,
                                       "walk_pim_cycles": walk.total_s * 1e9, "reference_plain_cycles": 36082,
                                       "model_plain_cycles": plain_ns},
        "one_stack_read": {"reference_bytes_per_s": 231e9, "model_bytes_per_s": read_bw}}
    lines.append(f"| samsung-hbm2-pim | PIMSimulator stock GEMV 4096 x 4096, 64 pCH: PIM cycles | 13,166 | "
                 f"{pim_ns:,.0f} (walk {walk.total_s * 1e9:,.0f}) | {pim_ns / 13166 - 1:+.1%} |")
    lines.append(f"| samsung-hbm2-pim | same, plain read cycles | 36,082 | {plain_ns:,.0f} | {plain_ns / 36082 - 1:+.1%} |")
    lines.append(f"| samsung-hbm2-pim | plain read of one stack (MemBandwidthFixture) | 231 GB/s | {read_bw / 1e9:.0f} GB/s | "
                 f"{read_bw / 231e9 - 1:+.1%} |")
    h100 = heteromoe.systems.get("h100-hbm3-pim")
    th = BankPimTiming(h100.pim)
    weights = 4096 * 28672 * 2
    sweep = weights / (9 * 670.4e9 * h100.pim.stacks_per_gpu)
    model = float(th.gemv_s(4096, 28672, 1))
    plain_ref = weights / (0.85 * 3352e9)
    plain = th.hbm_read_s(4096, 28672, 1, gpu=h100.gpu)
    out["references"]["h100-hbm3-pim"] = {"gemv_4096x28672": {"attacc_sweep_ns": sweep * 1e9, "model_pim_ns": model * 1e9,
                                                               "attacc_plain_ns": plain_ref * 1e9, "model_plain_ns": plain * 1e9}}
    lines.append(f"| h100-hbm3-pim | AttAcc bank-PIM sweep (9 x 670.4 GB/s per stack), GEMV 4096 x 28672 | "
                 f"{sweep * 1e9:,.0f} ns | {model * 1e9:,.0f} ns | {model / sweep - 1:+.1%} |")
    lines.append(f"| h100-hbm3-pim | AttAcc plain HBM3 read (0.85 x 3,352 GB/s), same GEMV | {plain_ref * 1e9:,.0f} ns | "
                 f"{plain * 1e9:,.0f} ns | {plain / plain_ref - 1:+.1%} |")
    return lines


def speedup_table(out: dict) -> list[str]:
    lines = ["| preset | stacks | expert (GEMV) | d_in x d_out | " + " | ".join(f"{n} tok" for n in TOKENS) + " |",
             "|---|---|---|---|" + "---|" * len(TOKENS)]
    for name in BANK:
        system = heteromoe.systems.get(name)
        stacks = 1 if system.gpu is None else system.pim.stacks_per_gpu
        t = BankPimTiming(system.pim, stacks)
        rows = {}
        for model, which, d_in, d_out in expert_shapes():
            sp = [t.hbm_read_s(d_in, d_out, n, gpu=system.gpu) / float(t.gemv_s(d_in, d_out, n)) for n in TOKENS]
            rows[f"{model} {which}"] = {"d_in": d_in, "d_out": d_out, "speedup": dict(zip(map(str, TOKENS), sp))}
            lines.append(f"| {name} | {stacks} | {model} {which} | {d_in} x {d_out} | "
                         + " | ".join(f"{s:.2f}" for s in sp) + " |")
        out["speedup_over_plain_read"][name] = {"stacks": stacks, "published": PUBLISHED[name], "experts": rows}
    lines.append("")
    lines.append("Published figures these are read beside:")
    lines.append("")
    lines.extend(f"- `{name}`: {PUBLISHED[name]}" for name in BANK)
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", default=None)
    parser.add_argument("--docs", default=None, help="markdown file whose marked table is rewritten")
    args = parser.parse_args(argv)
    out = {"command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
           "systems": {}, "references": {}, "speedup_over_plain_read": {}, "models_on_b200": {}}
    for name in BANK:
        system = heteromoe.systems.get(name)
        t = BankPimTiming(system.pim)
        big = t.gemv(4096, 4096, 1)
        entry = {"flow": system.pim.flow, "flow_source": system.pim.flow_source, "bw_multiplier": system.pim.bw_multiplier,
                 "refresh_share": float(big.refresh_s / (big.total_s - big.refresh_s))}
        entry["closed_vs_commands_max_rel_dev"] = max(
            abs(float(t.gemv_s(di, do, n)) / t.gemv_commands_expected_s(di, do, n) - 1)
            for di, do in GRID for n in (1, 3, 8))
        out["systems"][name] = entry
        print(f"{name}: flow {entry['flow']}, X {entry['bw_multiplier']:.2f}, refresh {100 * entry['refresh_share']:.1f} %, "
              f"closed form vs walk max {100 * entry['closed_vs_commands_max_rel_dev']:.2f} %")
    ref_lines = references(out)
    table = speedup_table(out)
    logic = heteromoe.systems.get("h100-logic-pim")
    roof = PimRooflineV1(logic.pim, heteromoe.models.get("qwen3-30b-a3b"))
    out["systems"]["h100-logic-pim"] = {"gemv_roofline_ns": {f"{di}x{do}": float(roof.gemv_s(di, do, 1)) * 1e9
                                                             for di, do in ((4096, 28672), (2048, 1536))}}
    b200 = heteromoe.systems.get("b200-hbm3e-pim")
    for name in EXPERT_MODELS:
        spec = heteromoe.models.get(name)
        cost = BankPimCost(b200.pim, spec)
        up = cost.timing.gemv(spec.hidden_size, 2 * spec.moe_intermediate_size, 1)
        ratio = cost.per_token_s() / (spec.expert_weight_bytes / b200.pim.internal_bw_bytes_per_s)
        out["models_on_b200"][name] = {"per_token_ns": cost.per_token_s() * 1e9, "over_roofline": ratio,
                                       "mode_share_of_up_gemv": float(up.mode_s / up.total_s)}
    block = ["| preset | reference run | published | model | deviation |", "|---|---|---|---|---|", *ref_lines, "",
             *table]
    print("\n".join(block))
    if args.docs:
        with open(args.docs) as fh:
            text = fh.read()
        pattern = re.compile(re.escape(MARK_BEGIN) + ".*?" + re.escape(MARK_END), re.S)
        if not pattern.search(text):
            raise SystemExit(f"--docs {args.docs}: no {MARK_BEGIN} ... {MARK_END} markers to write between")
        text = pattern.sub(lambda _: MARK_BEGIN + "\n" + "\n".join(block) + "\n" + MARK_END, text)
        with open(args.docs, "w") as fh:
            fh.write(text)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(out, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
