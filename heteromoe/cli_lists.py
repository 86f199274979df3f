"""The listing commands of the command line: `heteromoe backends`, `heteromoe presets`, `heteromoe policies`."""
from __future__ import annotations

import json

__all__ = ["cmd_backends", "cmd_policies", "cmd_presets"]


def cmd_backends(args) -> int:
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
    ext = "loaded" if _ext.HAS_EXT else f"missing: {_ext.ext_load_error}"
    print(f"fast path: {_ext.impl.name} (C++ extension {ext})")
    return 0


def cmd_presets(args) -> int:
    from heteromoe.spec import models, systems

    out = {"systems": {}, "models": {}}
    for name in systems.names():
        s = systems.get(name)
        out["systems"][name] = {"gpu": s.gpu.name if s.gpu else None, "pim": s.pim.kind,
                                "stacks_per_gpu": s.pim.stacks_per_gpu,
                                "pim_bw_multiplier": round(s.pim.bw_multiplier, 3),
                                "max_gpus": s.max_gpus, "description": s.description}
    for name in models.names():
        m = models.get(name)
        out["models"][name] = {"d": m.hidden_size, "f": m.moe_intermediate_size, "E": m.num_experts, "k": m.top_k,
                               "layers": m.num_layers}
    if args.json:
        print(json.dumps(out, indent=2))
        return 0
    print("systems (--system; or a path to your own TOML file):")
    for name, s in out["systems"].items():
        gpu = f"gpu={s['gpu']}, up to {s['max_gpus']} GPUs" if s["gpu"] else "no GPU (host-attached PIM)"
        print(f"  {name:<18} {gpu}, {s['stacks_per_gpu']} {s['pim']}-PIM stacks per GPU, X={s['pim_bw_multiplier']}")
    print("models (--model):")
    for name, m in out["models"].items():
        print(f"  {name:<20} d={m['d']} f={m['f']} E={m['E']} k={m['k']} layers={m['layers']}")
    return 0


def cmd_policies(args) -> int:
    from heteromoe.sched.factory import BASELINES, POLICIES

    rows = [{"name": name, "rule": cls.summary, "attention_on_pim": cls.attention_on_pim,
             "pim_layout": cls.pim_layout, "baseline": name in BASELINES} for name, cls in POLICIES.items()]
    if args.json:
        print(json.dumps({"policies": rows}, indent=2))
        return 0
    width = max(len(r["name"]) for r in rows)
    for r in rows:
        print(f"{r['name']:<{width}}  {r['rule']}")
    return 0
