"""`heteromoe ...`: the command line.

    heteromoe backends            list backends, where they come from, whether they run here
    heteromoe presets             list system and model presets
    heteromoe schedule ...        plan one layer from token counts (JSON out)
    heteromoe pim-time ...        emulated time of one GEMV on PIM, and of the same GEMV read by the GPU
    heteromoe simulate ...        decode steps on N GPUs: step time, throughput, interactivity, Pareto, plots
    heteromoe demo                wrap a tiny random Qwen3-MoE model, generate, print the GPU/PIM split
    heteromoe calibrate ...       (on a GPU) measure the runtime's expert times, write a GPU cost table
"""
from __future__ import annotations

import argparse
import json
import logging
import sys

__all__ = ["main"]


def _cmd_backends(args) -> int:
    from heteromoe import _ext
    from heteromoe.device import registry

    rows = []
    for entry in registry.entries():
        ok, reason = registry.availability(entry.name)
        kind = ""
        if ok:
            cls = registry.backend_class(entry.name)
            kind = getattr(cls, "kind", "")
        rows.append({"name": entry.name, "kind": kind, "available": ok, "origin": entry.origin,
                     "reason": reason or entry.reason})
    if args.json:
        print(json.dumps({"backends": rows, "fastpath": _ext.impl.name, "has_ext": _ext.HAS_EXT,
                          "ext_load_error": _ext.ext_load_error}, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows) if rows else 4
    for r in rows:
        status = "available" if r["available"] else f"unavailable: {r['reason']}"
        print(f"{r['name']:<{width}}  {r['kind']:<4}  {status}  [{r['origin']}]")
    print(f"fast path: {_ext.impl.name} (C++ extension {'loaded' if _ext.HAS_EXT else 'missing: ' + str(_ext.ext_load_error)})")
    return 0


def _cmd_presets(args) -> int:
    from heteromoe.spec import models, systems

    out = {"systems": {}, "models": {}}
    for name in systems.names():
        s = systems.get(name)
        out["systems"][name] = {"gpu": s.gpu.name if s.gpu else None, "pim": s.pim.kind,
                                "stacks_per_gpu": s.pim.stacks_per_gpu, "pim_bw_multiplier": round(s.pim.bw_multiplier, 3),
                                "description": s.description}
    for name in models.names():
        m = models.get(name)
        out["models"][name] = {"d": m.hidden_size, "f": m.moe_intermediate_size, "E": m.num_experts, "k": m.top_k,
                               "layers": m.num_layers}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print("systems:")
    for name, s in out["systems"].items():
        print(f"  {name:<18} gpu={s['gpu']}, {s['stacks_per_gpu']} {s['pim']}-PIM stacks, X={s['pim_bw_multiplier']}")
    print("models:")
    for name, m in out["models"].items():
        print(f"  {name:<20} d={m['d']} f={m['f']} E={m['E']} k={m['k']} layers={m['layers']}")
    return 0


def _cmd_schedule(args) -> int:
    import numpy as np

    import heteromoe

    try:
        counts = np.array(json.loads(args.counts))
    except json.JSONDecodeError as exc:
        raise ValueError(f"--counts must be a JSON list of integers: {exc}") from None
    plan = heteromoe.schedule(counts, model=args.model, system=args.system, gpus=args.gpus, policy=args.policy)
    print(json.dumps(plan.to_dict(), indent=None if args.compact else 2))
    return 0


class ArgumentError(ValueError):
    """A bad command-line value; the message names the argument."""


def _cmd_pim_time(args) -> int:
    from heteromoe.cost.pim import PimRooflineV1
    from heteromoe.cost.pim_bank import BankPimTiming, hbm_read_s
    from heteromoe.spec import models, systems

    def models_any():  # PimRooflineV1 wants a model; gemv_s does not use its shapes
        return models.get(models.names()[0])

    for name in ("d_in", "d_out", "tokens"):
        if getattr(args, name) <= 0:
            raise ArgumentError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    try:
        system = systems.get(args.system)
    except KeyError as exc:
        raise ArgumentError(f"--system: {exc}") from None
    pim = system.pim
    stacks = pim.stacks_per_gpu if args.stacks is None else args.stacks
    if not 1 <= stacks <= pim.stacks_per_gpu:
        raise ArgumentError(f"--stacks must be in [1, {pim.stacks_per_gpu}] for {system.name}, got {stacks}")
    bytes_w = {"bf16": 2.0, "fp16": 2.0}[args.dtype]
    out = {"system": system.name, "stacks": stacks, "d_in": args.d_in, "d_out": args.d_out, "tokens": args.tokens,
           "dtype": args.dtype}
    if pim.kind == "bank" and pim.timings is not None:
        timing = BankPimTiming(pim, stacks)
        t = timing.gemv(args.d_in, args.d_out, args.tokens, bytes_w, bytes_w)
        out.update(model="bank-level", pim_ns=float(t.total_s) * 1e9,
                   breakdown_ns={k: float(getattr(t, k)) * 1e9 for k in ("mode_s", "input_s", "stream_s", "output_s",
                                                                         "refresh_s")},
                   hbm_read_ns=float(timing.hbm_read_s(args.d_in, args.d_out, args.tokens, bytes_w, system.gpu)) * 1e9)
    else:
        # Logic-PIM (and presets without timings): the roofline of cost.pim on `stacks` stacks
        import dataclasses

        scaled = dataclasses.replace(pim, stacks_per_gpu=stacks)
        per = float(PimRooflineV1(scaled, models_any()).gemv_s(args.d_in, args.d_out, args.tokens, bytes_w))
        hbm = hbm_read_s(pim, stacks, args.d_in, args.d_out, args.tokens, bytes_w, system.gpu)
        out.update(model="roofline", pim_ns=per * 1e9, hbm_read_ns=hbm * 1e9)
    out["speedup"] = out["hbm_read_ns"] / out["pim_ns"]
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{system.name} x{stacks} stacks, GEMV {args.tokens} x {args.d_in} x {args.d_out} {args.dtype} "
              f"({out['model']} model): PIM {out['pim_ns']:.1f} ns, plain HBM read {out['hbm_read_ns']:.1f} ns, "
              f"PIM speed-up {out['speedup']:.2f}x")
    return 0


def _int_list(text: str, name: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ArgumentError(f"{name} must be a comma-separated list of integers, got {text!r}") from None
    if not values or min(values) < 1:
        raise ArgumentError(f"{name} must list positive integers, got {text!r}")
    return values


def _prefill(text: str) -> tuple[int, int]:
    try:
        requests, tokens = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ArgumentError(f"--prefill must be REQUESTSxTOKENS, e.g. 2x1024, got {text!r}") from None
    if requests < 0 or tokens < 0:
        raise ArgumentError(f"--prefill needs non-negative numbers, got {text!r}")
    return requests, tokens


def _cmd_simulate(args) -> int:
    from tqdm import tqdm

    from heteromoe.sched.factory import POLICIES
    from heteromoe.sim import StepSimulator, pareto_frontier, sweep
    from heteromoe.sim.sweep import prefill_for
    from heteromoe.sim.workload import workload_for
    from heteromoe.spec import models

    batches = _int_list(args.batch, "--batch")
    policies = [p for p in args.policies.split(",") if p]
    unknown = [p for p in policies if p not in POLICIES]
    if unknown:
        raise ArgumentError(f"--policies: unknown {unknown}; known: {', '.join(sorted(POLICIES))}")
    if args.context < 0:
        raise ArgumentError(f"--context must be >= 0, got {args.context}")
    prefill = _prefill(args.prefill)
    bar = tqdm(total=len(policies) * len(batches), desc="simulate", unit="run", disable=args.quiet)
    records = sweep(args.model, args.system, args.gpus, policies, batches, context=args.context, steps=args.steps,
                    trace=args.trace, seed=args.seed, progress=lambda policy, batch: bar.update(1), prefill=prefill)
    bar.close()
    header = f"{'policy':<10} {'batch':>5} {'step ms':>9} {'tok/s/GPU':>11} {'tok/s/user':>11}"
    print(header)
    for r in records:
        print(f"{r['policy']:<10} {r['batch']:>5} {r['step_time_s'] * 1e3:>9.3f} {r['throughput_per_gpu']:>11.1f} "
              f"{r['interactivity']:>11.1f}")
    unfit = sorted({r["batch"] for r in records if not r["fits"]})
    if unfit:
        print(f"note: at batch {', '.join(map(str, unfit))} weights + KV exceed the PIM-capable HBM of a GPU "
              f"(sim.memory); the step times assume they fit")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"command": "heteromoe " + " ".join(sys.argv[1:]), "records": records,
                       "pareto": {p: [r["batch"] for r in pts] for p, pts in pareto_frontier(records).items()}},
                      fh, indent=1)
    if args.plot:
        from heteromoe.sim.plots import plot_gantt, plot_load_histogram, plot_pareto

        spec = models.get(args.model)
        title = f"{spec.name} on {args.gpus}x {args.system}, context {args.context}"
        plot_pareto(records, args.plot, title)
        stem = args.plot.removesuffix(".png")
        batch = max(batches)
        p_req, p_tok = prefill_for(batch, prefill)
        step = workload_for(spec, args.trace, args.seed).steps(batch - p_req + p_req * p_tok, 1)[0]
        result = StepSimulator(spec, args.system, args.gpus, policies[-1], args.context,
                               prefill=(p_req, p_tok)).run(step)
        layer = spec.num_layers - 1
        plot_gantt(result.timeline, layer, f"{stem}-gantt.png",
                   f"{policies[-1]}: layer {layer} at batch {batch} ({title})")
        plot_load_histogram(result.loads[-1], f"{stem}-loads.png",
                            f"expert loads, last MoE layer, batch {batch}: "
                            f"{int((result.loads[-1] == 1).sum())} experts with one token")
    return 0


def _cmd_demo(args) -> int:
    from heteromoe.demo import run_demo

    report = run_demo(system=args.system, policy=args.policy, batch=args.batch, new_tokens=args.new_tokens,
                      seed=args.seed)
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


def _cmd_calibrate(args) -> int:
    from pathlib import Path

    from heteromoe.calibrate import TOKEN_COUNTS, calibrate

    counts = TOKEN_COUNTS if args.tokens is None else tuple(int(n) for n in args.tokens.split(","))
    if min(counts) < 1:
        raise ValueError(f"--tokens must be positive counts, got {args.tokens!r}")
    try:
        result = calibrate(args.models.split(","), args.gpu, Path(args.out), counts)
    except RuntimeError as exc:
        print(f"heteromoe calibrate: error: {exc}", file=sys.stderr)
        return 2
    for name, table in result["tables"].items():
        per = table["per_expert_s"]
        print(f"{name}: fixed {table['fixed_s'] * 1e6:.1f} us, per expert "
              + ", ".join(f"{n} tok {s * 1e6:.1f} us" for n, s in list(per.items())[:: max(1, len(per) // 6)]))
    print(f"wrote {args.out} ({result['device']})")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="heteromoe", description="MoE inference across GPU and HBM-PIM")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("backends", help="list backends, their origin and availability")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_backends)

    p = sub.add_parser("presets", help="list system and model presets")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_presets)

    p = sub.add_parser("schedule", help="plan one MoE layer call from per-expert token counts")
    p.add_argument("--counts", required=True, help="JSON list: tokens per expert")
    p.add_argument("--model", required=True)
    p.add_argument("--system", required=True)
    p.add_argument("--gpus", type=int, default=1)
    p.add_argument("--policy", default="sieve")
    p.add_argument("--compact", action="store_true")
    p.set_defaults(func=_cmd_schedule)

    p = sub.add_parser("pim-time", help="emulated PIM time of one GEMV, and the plain-HBM time of the same GEMV")
    p.add_argument("--system", required=True)
    p.add_argument("--stacks", type=int, default=None, help="stacks to use (default: all of one GPU)")
    p.add_argument("--d-in", type=int, required=True)
    p.add_argument("--d-out", type=int, required=True)
    p.add_argument("--tokens", type=int, default=1)
    p.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_pim_time)

    p = sub.add_parser("simulate", help="simulate decode steps: step time, throughput/GPU, interactivity")
    p.add_argument("--model", required=True)
    p.add_argument("--system", required=True)
    p.add_argument("--gpus", type=int, default=1)
    p.add_argument("--policies", default="gpu-only,no-exp,all-exp,duplex,pimoe,sieve,heteromoe")
    p.add_argument("--batch", default="1,4,16,64,256")
    p.add_argument("--trace", default=None, help="replay a recorded trace instead of the synthetic generator")
    p.add_argument("--context", type=int, default=2048, help="KV-cache tokens per request")
    p.add_argument("--steps", type=int, default=3, help="decode steps averaged per point")
    p.add_argument("--prefill", default="0x0",
                   help="colocated prefill in every step as REQUESTSxTOKENS: that many of the batch's requests are in "
                        "prefill with TOKENS prompt tokens each, e.g. 2x1024 (default: 0x0, decode only)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="write the records here")
    p.add_argument("--plot", default=None, help="write the Pareto plot here (and -gantt.png, -loads.png beside it)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("demo", help="wrap a tiny random Qwen3-MoE model, generate, print the GPU/PIM split")
    p.add_argument("--system", default="h100-hbm3-pim")
    p.add_argument("--policy", default="sieve")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--new-tokens", type=int, default=8)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", action="store_true", help="also print the full report as JSON")
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("calibrate", help="(GPU) measure the runtime's expert times; write a GPU cost table (JSON)")
    p.add_argument("--models", default="qwen3-30b-a3b,mixtral-8x7b", help="model presets whose expert shapes to measure")
    p.add_argument("--gpu", default=None, help="name the table's GPU (the key cost models look it up by), e.g. h100")
    p.add_argument("--tokens", default=None, help="token counts to measure (default 1..256)")
    p.add_argument("--out", required=True, help="write the table here (JSON)")
    p.set_defaults(func=_cmd_calibrate)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.func(args)
    except (ValueError, KeyError, TypeError) as exc:
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"heteromoe {args.command}: error: {message}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
