"""Plan quality: every policy's predicted layer makespan relative to `exact` (OR-Tools CP-SAT).

Run:  python bench/quality.py --json bench/results/quality-b200.json [--shared ../shared]
Loads: synthetic bimodal routing (`heteromoe.routing.BimodalRouting`) for Qwen3-30B-A3B on 1, 4 and 8 GPUs
and Qwen3.5-397B-A17B on 8 GPUs, and the real routing traces under `<shared>/traces` (default: the folder
`shared` beside the repository) replayed on experts of Qwen3-30B-A3B's shape (d 2048, f 768) with each
trace's own expert count and top-k; batch 1-256 decode tokens; decode attention over a 2048-token context
per sequence (data-parallel: batch / G sequences per GPU). The inputs are checked first: a real trace that is
missing or unreadable is skipped with its reason (printed and in the JSON's `skipped_traces`), and the run
goes on with the rest.
Replicas: on a correlated synthetic decode trace, the slow loop (`ReplicaPlanner`, 2 extra slots per GPU)
sees the first 32 steps; the next steps are planned by `heteromoe` with those replicas
("heteromoe+replicas"). `exact` is the optimum over the home placement (no replicas), so a ratio below 1
there is a real gain over what any home-placement plan can do.
This is a quality benchmark (predicted times), not a timing one: it prints a table and writes JSON.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

import heteromoe
from heteromoe.routing import BimodalRouting, load_trace
from heteromoe.sched.placement import contiguous_placement
from heteromoe.sched.policies.exact import ExactPolicy
from heteromoe.sched.replicas import ReplicaPlanner

POLICIES = ["gpu-only", "no-exp", "all-exp", "duplex", "pimoe", "sieve", "heteromoe", "heteromoe+replicas"]
WARMUP_STEPS = 32
BATCHES = [1, 4, 16, 64, 256]
TRACES = ["DynaNDE-Simulator", "cerebras-assesment2", "vllm-expert-profiler", "vllm_moe_routelogging_patch",
          "ExperimentsForMoE"]


def kv_bytes_per_token(spec) -> float:
    heads = spec.num_kv_heads or 1
    head_dim = spec.head_dim or 128
    return 2.0 * heads * head_dim * spec.bytes_per_activation


def run_case(counts, spec, system, gpus, batch, context, exact_limit_s, replicas=None):
    attn = batch * context * kv_bytes_per_token(spec) / gpus
    kw = dict(model=spec, system=system, gpus=gpus, attn_kv_bytes=attn)
    exact = heteromoe.schedule(counts, policy=ExactPolicy(time_limit_s=exact_limit_s), **kw)
    row = {"exact_s": exact.predicted_time_s, "exact_gap": exact.info["max_gap"],
           "exact_statuses": exact.info["statuses"]}
    for policy in POLICIES[:-1]:
        row[policy] = heteromoe.schedule(counts, policy=policy, **kw).predicted_time_s / exact.predicted_time_s
    with_replicas = heteromoe.schedule(counts, policy="heteromoe", placement=replicas, **kw) if replicas else None
    row[POLICIES[-1]] = (with_replicas.predicted_time_s / exact.predicted_time_s) if replicas else row["heteromoe"]
    return row


def replica_cases(model: str, gpus: int, batches, samples: int):
    """Correlated decode steps; the slow loop learns replicas on the first WARMUP_STEPS of them."""
    spec = heteromoe.models.get(model)
    for batch in batches:
        gen = BimodalRouting.for_model(spec, seed=7 * gpus + batch)
        steps = gen.decode(batch, WARMUP_STEPS + samples, 1)[:, 0]  # (steps, batch, k)
        counts = [np.bincount(s.reshape(-1), minlength=spec.num_experts) for s in steps]
        planner = ReplicaPlanner(contiguous_placement(spec.num_experts, gpus), gpus, slots_per_gpu=2,
                                 replan_every=WARMUP_STEPS, ema_alpha=0.1, time_limit_s=5.0)
        for c in counts[:WARMUP_STEPS]:
            placement = planner.observe(c)
        for c in counts[WARMUP_STEPS:]:
            yield "synthetic-replicas", spec, gpus, batch, c, placement


def load_traces(shared: Path, names=TRACES) -> tuple[dict, dict]:
    """({name: RoutingTrace} of the traces that load, {name: why not} of the others)."""
    loaded, skipped = {}, {}
    folder = shared / "traces"
    for name in names:
        path = folder / name
        if not path.exists():
            skipped[name] = f"{path} does not exist"
            continue
        try:
            loaded[name] = load_trace(path)
        except (ValueError, OSError) as exc:
            skipped[name] = f"{path}: {' '.join(str(exc).split())}"
    return loaded, skipped


def cases(traces: dict, samples: int, quick: bool):
    gpu_counts = [1, 4] if quick else [1, 4, 8]
    batches = [1, 16, 256] if quick else BATCHES
    yield from replica_cases("qwen3-30b-a3b", 4, batches, samples)
    if not quick:
        yield from replica_cases("qwen3.5-397b-a17b", 8, batches, samples)
    qwen = heteromoe.models.get("qwen3-30b-a3b")
    for gpus in gpu_counts:
        for batch in batches:
            gen = BimodalRouting.for_model(qwen, seed=1000 * gpus + batch)
            for counts in gen.counts(batch, samples):
                yield "synthetic", qwen, gpus, batch, counts, None
    if not quick:
        big = heteromoe.models.get("qwen3.5-397b-a17b")
        for batch in batches:
            gen = BimodalRouting.for_model(big, seed=batch)
            for counts in gen.counts(batch, max(1, samples // 2)):
                yield "synthetic", big, 8, batch, counts, None
    for name, trace in traces.items():
        spec = dataclasses.replace(qwen, name=f"{name}-on-qwen3-shape", num_experts=trace.num_experts,
                                   top_k=trace.top_k)
        for gpus in gpu_counts:
            for batch in batches:
                for i, ids in enumerate(trace.batches(batch)):
                    if i >= samples:
                        break
                    counts = np.bincount(ids.reshape(-1), minlength=trace.num_experts)
                    yield f"trace:{name}", spec, gpus, batch, counts, None


def summarize(rows):
    table = {}
    for row in rows:
        key = (row["source"].split(":")[0], row["model"].split("-on-")[0] if "-on-" not in row["model"] else "traces",
               row["gpus"])
        table.setdefault(key, []).append(row)
    out = []
    for (source, model, gpus), group in sorted(table.items()):
        entry = {"source": source, "model": model, "gpus": gpus, "cases": len(group)}
        for policy in POLICIES:
            ratios = np.array([r[policy] for r in group])
            entry[policy] = {"mean": float(ratios.mean()), "max": float(ratios.max())}
        entry["heteromoe_worse_than_sieve"] = int(sum(r["heteromoe"] > r["sieve"] * (1 + 1e-12) for r in group))
        entry["replicas_worse_than_sieve"] = int(sum(r["heteromoe+replicas"] > r["sieve"] * (1 + 1e-12) for r in group))
        proved = [r["exact_gap"] for r in group if r["exact_gap"] is not None]
        entry["max_exact_gap"] = float(max(proved)) if proved else None  # over the cases with a proved gap
        entry["exact_statuses"] = {s: sum(r["exact_statuses"].get(s, 0) for r in group)
                                   for s in sorted({s for r in group for s in r["exact_statuses"]})}
        out.append(entry)
    return out


def check_args(parser, args) -> None:
    """Every input, before the minutes of work."""
    try:
        heteromoe.systems.get(args.system).require_gpu()
    except (KeyError, ValueError, OSError) as exc:
        parser.error(f"--system: {exc.args[0] if exc.args else exc}")
    for name, low in (("samples", 1), ("context", 0)):
        if getattr(args, name) < low:
            parser.error(f"--{name} must be >= {low}, got {getattr(args, name)}")
    if not args.exact_limit_s > 0:
        parser.error(f"--exact-limit-s must be > 0, got {args.exact_limit_s}")
    if args.json:
        out = Path(args.json)
        if out.is_dir() or not out.parent.is_dir():
            parser.error(f"--json {args.json!r}: " + ("is a folder" if out.is_dir() else
                                                      f"folder {str(out.parent)!r} does not exist"))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", default="b200-hbm3e-pim", help="system preset or TOML path (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=6, help="layer calls per case (default: %(default)s)")
    parser.add_argument("--context", type=int, default=2048, help="KV-cache tokens per sequence (default: %(default)s)")
    parser.add_argument("--exact-limit-s", type=float, default=5.0,
                        help="CP-SAT time limit per GPU and call (default: %(default)s)")
    parser.add_argument("--shared", default=str(Path(__file__).resolve().parents[1].parent / "shared"),
                        help="folder holding traces/ with the real routing logs (default: %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="a small subset: 1 and 4 GPUs, batch 1/16/256, one real trace (default: off)")
    parser.add_argument("--json", default=None, help="write the rows and summary here (default: not written)")
    args = parser.parse_args(argv)
    check_args(parser, args)

    start = time.time()
    traces, skipped = load_traces(Path(args.shared), TRACES[:1] if args.quick else TRACES)
    for name, why in skipped.items():
        print(f"skipped real trace {name}: {why}")
    rows = []
    for source, spec, gpus, batch, counts, replicas in cases(traces, args.samples, args.quick):
        row = run_case(counts, spec, args.system, gpus, batch, args.context, args.exact_limit_s, replicas)
        rows.append({"source": source, "model": spec.name, "gpus": gpus, "batch": batch, **row})
    summary = summarize(rows)
    header = f"{'source':<18} {'model':<18} {'G':>2} {'n':>4} " + " ".join(f"{p:>14}" for p in POLICIES)
    print(f"policy makespan / exact, mean (max); system {args.system}")
    print(header)
    for e in summary:
        cells = " ".join(f"{e[p]['mean']:>6.3f} ({e[p]['max']:>5.2f})" for p in POLICIES)
        print(f"{e['source']:<18} {e['model']:<18} {e['gpus']:>2} {e['cases']:>4} {cells}")
    worse = sum(e["heteromoe_worse_than_sieve"] + e["replicas_worse_than_sieve"] for e in summary)
    gaps = [e["max_exact_gap"] for e in summary if e["max_exact_gap"] is not None]
    statuses = {s: sum(e["exact_statuses"].get(s, 0) for e in summary)
                for s in sorted({s for e in summary for s in e["exact_statuses"]})}
    print(f"heteromoe (with or without replicas) worse than sieve in {worse} of {len(rows)} cases; exact's GPU "
          f"solves: {statuses}; max proved exact gap {max(gaps) if gaps else float('nan'):.2e}; "
          f"{time.time() - start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "command": "python " + " ".join([sys.argv[0], *(argv if argv is not None else sys.argv[1:])]),
            "machine": {"platform": platform.platform(), "processor": platform.processor(),
                        "python": platform.python_version()},
            "system": args.system, "context": args.context, "traces": sorted(traces), "skipped_traces": skipped,
            "summary": summary, "rows": [
                {k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in r.items()} for r in rows],
        }, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
