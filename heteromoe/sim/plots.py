"""Pictures of a simulation (matplotlib, Agg): Pareto curves, a layer's Gantt chart, an expert load histogram."""
from __future__ import annotations

import numpy as np

from heteromoe.sim.sweep import pareto_frontier
from heteromoe.sim.timeline import LANES, Timeline

__all__ = ["plot_gantt", "plot_load_histogram", "plot_pareto", "policy_styles"]

LANE_COLORS = {"qkv": "#4c72b0", "attention": "#8172b2", "o_proj+router": "#64b5cd", "allgather_counts": "#999999",
               "dispatch+combine": "#dd8452", "shared_experts": "#937860", "experts_gpu": "#55a868", "experts_pim": "#c44e52"}


#: Marker and line style per policy, all pairs distinct, so a curve lying on another (`heteromoe` on `sieve`
#: where their plans agree) still shows: the later one is drawn dashed/dotted with hollow markers over it.
POLICY_STYLES = {
    "gpu-only": ("s", "-"), "no-exp": ("v", "--"), "all-exp": ("^", "-."), "duplex": ("D", ":"),
    "pimoe": ("P", "-"), "sieve": ("o", "-"), "exact": ("X", ":"), "heteromoe": ("*", "--"),
}
_SPARE_MARKERS = ("h", "p", "<", ">", "d", "8", "H", "1", "2", "3", "4")
_SPARE_LINES = ("-", "--", "-.", ":")


def policy_styles(policies) -> dict[str, dict]:
    """Matplotlib style (marker, linestyle, marker size, fill) of each policy; pairs never repeat."""
    styles, used = {}, set()
    spare = ((m, ls) for m in _SPARE_MARKERS for ls in _SPARE_LINES)
    for i, policy in enumerate(policies):
        pair = POLICY_STYLES.get(policy)
        while pair is None or pair in used:
            pair = next(spare)
        used.add(pair)
        styles[policy] = {"marker": pair[0], "linestyle": pair[1], "markersize": 7 if pair[0] == "*" else 5,
                          "markerfacecolor": "none" if i % 2 else None, "zorder": 2 + i}
    return styles


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_pareto(records: list[dict], path, title: str = "") -> dict[str, dict]:
    """Interactivity (tokens/s/user) against throughput per GPU (tokens/s/GPU), one frontier per policy.

    Each policy has its own marker and line style (`policy_styles`); returns the styles used."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 5))
    order = list(dict.fromkeys(r["policy"] for r in records))
    styles = policy_styles(order)
    frontiers = pareto_frontier(records)
    for policy in order:
        points, style = frontiers[policy], styles[policy]
        every = sorted((r for r in records if r["policy"] == policy), key=lambda r: r["batch"])
        line, = ax.plot([r["throughput_per_gpu"] for r in points], [r["interactivity"] for r in points],
                        label=policy, **{k: v for k, v in style.items() if v is not None})
        ax.plot([r["throughput_per_gpu"] for r in every], [r["interactivity"] for r in every], linestyle="none",
                marker=style["marker"], color=line.get_color(), alpha=0.35, markersize=3, zorder=style["zorder"])
    ax.set_xscale("log")
    ax.set_xlabel("throughput per GPU (tokens/s/GPU)")
    ax.set_ylabel("interactivity (tokens/s/user = 1/TPOT)")
    ax.set_title(title or "decode Pareto frontier")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return styles


def plot_gantt(timeline: Timeline, layer: int, path, title: str = "") -> None:
    """One layer on each GPU: a row per (GPU, lane), spans coloured by phase."""
    plt = _pyplot()
    spans = timeline.layer(layer)
    if not spans:
        raise ValueError(f"the timeline has no spans for layer {layer}")
    gpus = sorted({s.gpu for s in spans})
    t0 = min(s.start_s for s in spans)
    fig, ax = plt.subplots(figsize=(11, 1.0 + 0.45 * len(gpus) * len(LANES)))
    rows = [(g, lane) for g in gpus for lane in LANES]
    seen = set()
    for i, (g, lane) in enumerate(rows):
        for s in (s for s in spans if s.gpu == g and s.lane == lane):
            label = s.name if s.name not in seen else None
            seen.add(s.name)
            ax.barh(i, (s.end_s - s.start_s) * 1e6, left=(s.start_s - t0) * 1e6, color=LANE_COLORS.get(s.name, "#333333"),
                    edgecolor="black", linewidth=0.3, label=label)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([f"GPU{g} {lane}" for g, lane in rows], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("time within the layer (us)")
    ax.set_title(title or f"layer {layer}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_load_histogram(counts: np.ndarray, path, title: str = "") -> None:
    """How many experts got n tokens, for one layer call: the bimodality, visible."""
    plt = _pyplot()
    counts = np.asarray(counts)
    active = counts[counts > 0]
    fig, ax = plt.subplots(figsize=(7, 4))
    bins = np.arange(1, active.max() + 2) - 0.5 if active.size else [0.5, 1.5]
    ax.hist(active, bins=bins, color="#4c72b0", edgecolor="black", linewidth=0.3)
    ax.set_xlabel("tokens routed to the expert")
    ax.set_ylabel("experts")
    ax.set_title(title or f"expert loads: {active.size} of {counts.size} experts active, "
                          f"{int((counts == 1).sum())} with exactly one token")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
