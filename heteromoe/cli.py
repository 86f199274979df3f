"""`heteromoe ...`: the command line.

    heteromoe backends            list backends, where they come from, whether they run here
    heteromoe presets             list system and model presets
    heteromoe policies            list the scheduling policies, one line each
    heteromoe schedule ...        plan one layer from token counts (JSON out)
    heteromoe pim-time ...        emulated time of one GEMV on PIM, and of the same GEMV read by the GPU
    heteromoe simulate ...        decode steps on N GPUs: step time, throughput, interactivity, Pareto, plots
    heteromoe demo                wrap a tiny random Qwen3-MoE model, generate, print the GPU/PIM split
    heteromoe calibrate ...       (on a GPU) measure the runtime's expert times, write a GPU cost table

Errors in what the user passed (`heteromoe.errors.UserError` and the checks' other ValueErrors) print as one
line on stderr with exit status 2, before any slow work where the check can be made up front; `--debug` (or
`HETEROMOE_DEBUG=1`) shows the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from heteromoe.cli_checks import (ArgumentError, check_gpus, check_output, check_policies, format_seconds, int_list,
                                  policy_names, spec_arg)
from heteromoe.cli_lists import cmd_backends, cmd_policies, cmd_presets
from heteromoe.errors import UserError

__all__ = ["ArgumentError", "build_parser", "format_seconds", "main"]


def _cmd_schedule(args) -> int:
    import numpy as np

    import heteromoe
    from heteromoe.spec import models, systems

    try:
        counts = np.array(json.loads(args.counts))
    except json.JSONDecodeError as exc:
        raise ArgumentError(f"--counts must be a JSON list of integers: {exc}") from None
    model = spec_arg(models, args.model, "--model")
    system = spec_arg(systems, args.system, "--system")
    check_gpus(system, args.gpus)
    check_policies([args.policy], "--policy")
    plan = heteromoe.schedule(counts, model=model, system=system, gpus=args.gpus, policy=args.policy,
                              attn_kv_bytes=args.attn_kv_bytes)
    print(json.dumps(plan.to_dict(), indent=None if args.compact else 2))
    return 0


#: pim-time's per-phase breakdown: the GEMV timing's attribute -> its JSON key (in ns)
_PHASES = {"mode_s": "mode_ns", "input_s": "input_ns", "stream_s": "stream_ns", "output_s": "output_ns",
           "refresh_s": "refresh_ns"}


def _cmd_pim_time(args) -> int:
    from heteromoe.cost.pim import PimRooflineV1
    from heteromoe.cost.pim_bank import BankPimTiming, hbm_read_s
    from heteromoe.spec import models, systems

    for name in ("d_in", "d_out", "tokens"):
        if getattr(args, name) <= 0:
            raise ArgumentError(f"--{name.replace('_', '-')} must be a positive integer, got {getattr(args, name)}")
    system = spec_arg(systems, args.system, "--system")
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
                   breakdown_ns={key: float(getattr(t, attr)) * 1e9 for attr, key in _PHASES.items()},
                   hbm_read_ns=float(timing.hbm_read_s(args.d_in, args.d_out, args.tokens, bytes_w, system.gpu)) * 1e9)
    else:
        # Logic-PIM (and presets without timings): the roofline of cost.pim on `stacks` stacks. PimRooflineV1
        # wants a model spec; gemv_s does not read its shapes.
        import dataclasses

        scaled = dataclasses.replace(pim, stacks_per_gpu=stacks)
        per = float(PimRooflineV1(scaled, models.get(models.names()[0])).gemv_s(args.d_in, args.d_out, args.tokens,
                                                                                 bytes_w))
        hbm = hbm_read_s(pim, stacks, args.d_in, args.d_out, args.tokens, bytes_w, system.gpu)
        out.update(model="roofline", pim_ns=per * 1e9, hbm_read_ns=hbm * 1e9)
    out["speedup"] = out["hbm_read_ns"] / out["pim_ns"]
    if args.json:
        print(json.dumps(out))
    else:
        print(f"{system.name} x{stacks} stacks, GEMV {args.tokens} x {args.d_in} x {args.d_out} {args.dtype} "
              f"({out['model']} model): PIM {format_seconds(out['pim_ns'] * 1e-9)}, plain HBM read "
              f"{format_seconds(out['hbm_read_ns'] * 1e-9)}, PIM speed-up {out['speedup']:.2f}x")
    return 0


def _prefill(text: str) -> tuple[int, int]:
    try:
        requests, tokens = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ArgumentError(f"--prefill must be REQUESTSxTOKENS, e.g. 2x1024, got {text!r}") from None
    if requests < 0 or tokens < 0:
        raise ArgumentError(f"--prefill needs non-negative numbers, got {text!r}")
    return requests, tokens


def _cmd_simulate(args) -> int:
    from heteromoe.spec import models, systems

    # Every check first: the sweep takes seconds to minutes.
    spec = spec_arg(models, args.model, "--model")
    system = spec_arg(systems, args.system, "--system")
    check_gpus(system, args.gpus)
    batches = int_list(args.batch, "--batch")
    policies = [p.strip() for p in args.policies.split(",")]
    if not all(policies):
        raise ArgumentError(f"--policies must be a comma-separated list of policy names without empty entries, "
                            f"got {args.policies!r}")
    check_policies(policies, "--policies")
    if args.context < 0:
        raise ArgumentError(f"--context must be >= 0, got {args.context}")
    if args.steps < 1:
        raise ArgumentError(f"--steps must be >= 1, got {args.steps}")
    if args.trace is not None and not Path(args.trace).exists():
        raise ArgumentError(f"--trace {args.trace!r} does not exist; give a trace folder or .jsonl file "
                            f"(or leave --trace out for synthetic routing)")
    json_path = check_output(args.json, "--json") if args.json else None
    plot_path = check_output(args.plot, "--plot") if args.plot else None
    prefill = _prefill(args.prefill)

    from tqdm import tqdm

    from heteromoe.sim import StepSimulator, pareto_frontier, sweep
    from heteromoe.sim.sweep import prefill_for
    from heteromoe.sim.workload import workload_for

    bar = tqdm(total=len(policies) * len(batches), desc="simulate", unit="run", disable=args.quiet)
    records = sweep(spec, system, args.gpus, policies, batches, context=args.context, steps=args.steps,
                    trace=args.trace, seed=args.seed, progress=lambda policy, batch: bar.update(1), prefill=prefill)
    bar.close()
    print(f"{'policy':<10} {'batch':>5} {'step time':>10} {'tok/s/GPU':>11} {'tok/s/user':>11}")
    for r in records:
        print(f"{r['policy']:<10} {r['batch']:>5} {format_seconds(r['step_time_s']):>10} "
              f"{r['throughput_per_gpu']:>11.1f} {r['interactivity']:>11.1f}")
    unfit = sorted({r["batch"] for r in records if not r["fits"]})
    if unfit:
        print(f"note: at batch {', '.join(map(str, unfit))} weights + KV exceed the PIM-capable HBM of a GPU "
              f"(sim.memory); the step times assume they fit")
    written = []
    if json_path is not None:
        with open(json_path, "w") as fh:
            json.dump({"command": "heteromoe " + " ".join(sys.argv[1:]), "records": records,
                       "pareto": {p: [r["batch"] for r in pts] for p, pts in pareto_frontier(records).items()}},
                      fh, indent=1)
        written.append(str(json_path))
    if plot_path is not None:
        from heteromoe.sim.plots import plot_gantt, plot_load_histogram, plot_pareto

        title = f"{spec.name} on {args.gpus}x {system.name}, context {args.context}"
        plot_pareto(records, plot_path, title)
        stem = str(plot_path).removesuffix(".png")
        batch = max(batches)
        p_req, p_tok = prefill_for(batch, prefill)
        step = workload_for(spec, args.trace, args.seed).steps(batch - p_req + p_req * p_tok, 1)[0]
        result = StepSimulator(spec, system, args.gpus, policies[-1], args.context,
                               prefill=(p_req, p_tok)).run(step)
        layer = spec.num_layers - 1
        plot_gantt(result.timeline, layer, f"{stem}-gantt.png",
                   f"{policies[-1]}: layer {layer} at batch {batch} ({title})")
        plot_load_histogram(result.loads[-1], f"{stem}-loads.png",
                            f"expert loads, last MoE layer, batch {batch}: "
                            f"{int((result.loads[-1] == 1).sum())} experts with one token")
        written += [str(plot_path), f"{stem}-gantt.png", f"{stem}-loads.png"]
    if written:
        print("wrote " + ", ".join(written))
    return 0


def _cmd_demo(args) -> int:
    from heteromoe.spec import systems

    # Checked before torch and transformers load and the model is built (seconds).
    spec_arg(systems, args.system, "--system")
    check_policies([args.policy], "--policy")
    for name in ("batch", "new_tokens"):
        if getattr(args, name) < 1:
            raise ArgumentError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    from heteromoe.device import registry

    for side in ("gpu", "pim"):  # the backends wrap() will pick (HETEROMOE_BACKENDS may leave none)
        registry.default(side)

    from heteromoe.demo import run_demo

    report = run_demo(system=args.system, policy=args.policy, batch=args.batch, new_tokens=args.new_tokens,
                      seed=args.seed)
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


def _cmd_calibrate(args) -> int:
    from heteromoe.spec import models

    counts = None if args.tokens is None else tuple(int_list(args.tokens, "--tokens"))
    names = [m.strip() for m in args.models.split(",")]
    for name in names:
        spec_arg(models, name, "--models")
    out = check_output(args.out, "--out")

    from heteromoe.calibrate import TOKEN_COUNTS, calibrate

    try:
        result = calibrate(names, args.gpu, out, TOKEN_COUNTS if counts is None else counts)
    except RuntimeError as exc:  # no GPU, no CUDA extension: a condition of the machine, not a bug
        raise UserError(str(exc)) from exc
    for name, table in result["tables"].items():
        per = table["per_expert_s"]
        print(f"{name}: fixed {format_seconds(table['fixed_s'])}, per expert "
              + ", ".join(f"{n} tok {format_seconds(s)}" for n, s in list(per.items())[:: max(1, len(per) // 6)]))
    print(f"wrote {args.out} ({result['device']})")
    return 0


# ---------------------------------------------------------------------------------------------- parser


class _Formatter(argparse.RawDescriptionHelpFormatter):
    """Keeps the descriptions' line breaks; a wider help column."""

    def __init__(self, prog: str) -> None:
        super().__init__(prog, max_help_position=30, width=110)


def build_parser() -> argparse.ArgumentParser:
    from heteromoe.spec import models, systems

    policies = ", ".join(policy_names())
    system_help = f"system preset ({', '.join(systems.names())}) or a path to a system TOML file"
    model_help = f"model preset ({', '.join(models.names())}) or a path to a model TOML file"

    parser = argparse.ArgumentParser(
        prog="heteromoe", formatter_class=_Formatter,
        description="Mixture-of-Experts inference across GPU and HBM-PIM: plan, simulate and run expert layers.",
        epilog="`heteromoe COMMAND --help` describes each command. Errors print as one line (exit status 2); "
               "--debug or HETEROMOE_DEBUG=1 shows the traceback.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log at INFO level (default: warnings only)")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of one line "
                             "(default: off; also HETEROMOE_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add(name: str, help: str, description: str):
        return sub.add_parser(name, help=help, description=description, formatter_class=_Formatter)

    p = add("backends", "list backends, their origin and availability",
            "List the execution backends (built in and plug-ins), where each comes from and whether it runs here,\n"
            "and which fast-path implementation (C++, numba, python) the planners use.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table (default: table)")
    p.set_defaults(func=cmd_backends)

    p = add("presets", "list system and model presets",
            "List the shipped system presets (GPU + PIM + links) and model presets (expert shapes).\n"
            "Every --system / --model option also takes a path to your own TOML file.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table (default: table)")
    p.set_defaults(func=cmd_presets)

    p = add("policies", "list the scheduling policies and their rules",
            "List the policies that split a layer's experts between the GPU and PIM, one line each.")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table (default: table)")
    p.set_defaults(func=cmd_policies)

    p = add("schedule", "plan one MoE layer call from per-expert token counts",
            "Plan one MoE layer call: which experts' tokens run on the GPU and which on PIM, with the predicted\n"
            "times. Prints the plan as JSON (gpu_tokens, pim_tokens per expert, per-GPU times in seconds).\n\n"
            "example: heteromoe schedule --model qwen3-30b-a3b --system b200-hbm3e-pim \\\n"
            "             --counts \"$(python -c 'print([9]*8 + [1]*120)')\"")
    p.add_argument("--counts", required=True, metavar="JSON",
                   help="JSON list of tokens routed to each expert, one entry per expert of the model (required)")
    p.add_argument("--model", required=True, help=model_help + " (required)")
    p.add_argument("--system", required=True, help=system_help + " (required)")
    p.add_argument("--gpus", type=int, default=1, help="GPUs in expert parallelism (default: %(default)s)")
    p.add_argument("--policy", default="sieve", help=f"one of {policies} (default: %(default)s)")
    p.add_argument("--attn-kv-bytes", type=float, default=0.0, metavar="BYTES",
                   help="KV-cache bytes decode attention reads per GPU in this layer (default: %(default)s: none)")
    p.add_argument("--compact", action="store_true", help="print the JSON on one line (default: indented)")
    p.set_defaults(func=_cmd_schedule)

    p = add("pim-time", "emulated PIM time of one GEMV, and the plain-HBM time of the same GEMV",
            "Time one GEMV (tokens x d_in -> d_out) on the system's PIM stacks with the bank-level timing model\n"
            "(or the roofline for Logic-PIM), and the time for the GPU to read the same weights from the same\n"
            "stacks. JSON keys end in their unit (pim_ns, hbm_read_ns, breakdown_ns.mode_ns, ...).")
    p.add_argument("--system", required=True, help=system_help + " (required)")
    p.add_argument("--stacks", type=int, default=None,
                   help="PIM stacks the GEMV is sharded over (default: all stacks of one GPU)")
    p.add_argument("--d-in", type=int, required=True, help="input width of the GEMV (required)")
    p.add_argument("--d-out", type=int, required=True, help="output width of the GEMV (required)")
    p.add_argument("--tokens", type=int, default=1, help="tokens, one GEMV each (default: %(default)s)")
    p.add_argument("--dtype", choices=["bf16", "fp16"], default="bf16",
                   help="weight and activation type, one of %(choices)s (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="print JSON instead of one line (default: one line)")
    p.set_defaults(func=_cmd_pim_time)

    p = add("simulate", "simulate decode steps: step time, throughput/GPU, interactivity",
            "Simulate decode steps of a model on N GPUs for each policy and batch size: step time, throughput per\n"
            "GPU (tokens/s/GPU), interactivity (tokens/s/user = 1/TPOT). Optionally writes the records and the\n"
            "Pareto frontier as JSON and draws the Pareto curves, a Gantt chart of one layer and the expert loads.")
    p.add_argument("--model", required=True, help=model_help + " (required)")
    p.add_argument("--system", required=True, help=system_help + " (required)")
    p.add_argument("--gpus", type=int, default=1, help="GPUs in expert parallelism (default: %(default)s)")
    p.add_argument("--policies", default="gpu-only,no-exp,all-exp,duplex,pimoe,sieve,heteromoe",
                   help=f"comma-separated policies, from {policies} (default: %(default)s)")
    p.add_argument("--batch", default="1,4,16,64,256",
                   help="comma-separated decode batch sizes (default: %(default)s)")
    p.add_argument("--trace", default=None,
                   help="replay a recorded routing trace (a DynaNDE folder, a .jsonl route log, an ExFlow folder) "
                        "instead of the synthetic generator (default: synthetic routing)")
    p.add_argument("--context", type=int, default=2048,
                   help="KV-cache tokens per request (default: %(default)s)")
    p.add_argument("--steps", type=int, default=3, help="decode steps averaged per point (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic routing (default: %(default)s)")
    p.add_argument("--prefill", default="0x0",
                   help="colocated prefill in every step as REQUESTSxTOKENS: that many of the batch's requests are in "
                        "prefill with TOKENS prompt tokens each, e.g. 2x1024 (default: %(default)s, decode only)")
    p.add_argument("--json", default=None, metavar="PATH", help="write the records here (default: not written)")
    p.add_argument("--plot", default=None, metavar="PATH",
                   help="write the Pareto plot here, and PATH-gantt.png, PATH-loads.png beside it "
                        "(default: not drawn)")
    p.add_argument("--quiet", action="store_true", help="no progress bar (default: progress bar on stderr)")
    p.set_defaults(func=_cmd_simulate)

    p = add("demo", "wrap a tiny random Qwen3-MoE model, generate, print the GPU/PIM split",
            "Build a tiny random Qwen3-MoE model (no download), generate greedily with and without heteromoe,\n"
            "check the tokens are identical, and print per layer the experts and tokens on the GPU and on\n"
            "(emulated) PIM with the predicted times.")
    p.add_argument("--system", default="h100-hbm3-pim", help=system_help + " (default: %(default)s)")
    p.add_argument("--policy", default="sieve", help=f"one of {policies} (default: %(default)s)")
    p.add_argument("--batch", type=int, default=4, help="prompts generated together (default: %(default)s)")
    p.add_argument("--new-tokens", type=int, default=8, help="tokens generated per prompt (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of the model's weights and prompts (default: %(default)s)")
    p.add_argument("--json", action="store_true", help="also print the full report as JSON (default: off)")
    p.set_defaults(func=_cmd_demo)

    p = add("calibrate", "(GPU) measure the runtime's expert times; write a GPU cost table (JSON)",
            "On a CUDA GPU: time the runtime's fused expert kernels for each expert shape and token count and\n"
            "write a GPU cost table that the cost model prefers over the roofline for that GPU and shape.")
    p.add_argument("--models", default="qwen3-30b-a3b,mixtral-8x7b",
                   help=f"comma-separated model presets whose expert shapes to measure, from "
                        f"{', '.join(models.names())} (default: %(default)s)")
    p.add_argument("--gpu", default=None,
                   help="the table's GPU key, matched against system presets' GPU names, e.g. h100 "
                        "(default: from the device's name)")
    p.add_argument("--tokens", default=None, help="comma-separated token counts to measure (default: 1..256)")
    p.add_argument("--out", required=True, metavar="PATH", help="write the table here, JSON (required)")
    p.set_defaults(func=_cmd_calibrate)
    return parser


# ---------------------------------------------------------------------------------------------- entry point

#: What `main()` reports as one line: the project's user errors and the checks' ValueErrors (a bad value),
#: a preset name not found (KeyError) and a file that cannot be read or written (OSError).
USER_ERRORS = (UserError, ValueError, KeyError, OSError)


def _one_line(exc: BaseException) -> str:
    message = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(message.split()) or type(exc).__name__


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit status (0, or 2 for a user error reported as one line on stderr)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    debug = "--debug" in argv or os.environ.get("HETEROMOE_DEBUG", "") not in ("", "0")
    command = next((a for a in argv if not a.startswith("-")), "")
    try:
        parser = build_parser()  # lists the policies: loads the planners (and checks HETEROMOE_FASTPATH)
        args = parser.parse_args(argv)
        command = args.command
        logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                            format="%(levelname)s %(name)s: %(message)s")
        return args.func(args)
    except BrokenPipeError:  # the reader left (`heteromoe presets | head`): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except USER_ERRORS as exc:
        if debug:
            raise
        where = f"heteromoe {command}" if command else "heteromoe"
        print(f"{where}: error: {_one_line(exc)}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
