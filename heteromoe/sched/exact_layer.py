"""The yardstick of `heteromoe`'s per-layer decision: the optimum of the same layer estimate over a wider
decision, with the routed experts split by CP-SAT.

For one layer and ONE sub-batch, `sched.step_plan.estimate_layer` is, per GPU g, a chain
`dense_g(placement, a_g) + max(T_comm_g, T_GPU_g + shared_gpu_g, T_PIM_g + shared_pim_g)` (a_g: decode
requests of GPU g whose attention runs on the SMs), and the layer takes the longest GPU. The placement of
the projections, output projection + router and shared experts is one for all GPUs; given it, the chains of
the GPUs share nothing, so the optimum is, per placement, the max over GPUs of
`min over a_g of dense_g + min over expert splits of the window`, and the best placement.

`exact_layer` searches: every SM / PIM placement of the three dense operations, every request count
a_g = 0..decode_g on each GPU independently (`choose_layer` tries 17 shares common to all GPUs), and per GPU
the expert split by `sched.exact`'s CP-SAT model with that placement's shared-expert time as fixed GPU / PIM
time, hinted with the `heteromoe` fast path's split on the same inputs (the better of the two, evaluated in
floats, is kept, so the yardstick is never above a plan the policy could make). Its answer is an optimum
where every solve ends OPTIMAL on a one-token grid (`ExactLayer.proved`). Two sub-batches couple the GPUs
and sub-batches through lane sums; they are not covered.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from heteromoe.sched.exact import build_model, solve
from heteromoe.sched.policy import PlacementContext
from heteromoe.sched.step_plan import DenseCosts, _combos, _dense_part

__all__ = ["ExactLayer", "exact_layer", "layer_time", "policy_layer_time"]


@dataclass(frozen=True)
class ExactLayer:
    """The yardstick's answer for one layer.

    Attributes:
        time_s: the least estimated layer time found.
        placement: (proj, out_router, shared) of it.
        attn_gpu_requests: [G] decode requests of each GPU with attention on the SMs.
        gpu_tokens: [P] tokens of each slot on the SMs.
        statuses: CP-SAT status names of every (placement, GPU) solve, counted.
        proved: every solve ended OPTIMAL on a one-token grid (the answer is the optimum of the estimate).
    """

    time_s: float
    placement: tuple[str, str, str]
    attn_gpu_requests: np.ndarray
    gpu_tokens: np.ndarray
    statuses: dict = field(default_factory=dict)
    proved: bool = True


def _window(ctx: PlacementContext, gpu_tokens: np.ndarray, sg: np.ndarray, sp: np.ndarray) -> np.ndarray:
    """[G] expert window of the estimate: max(T_comm, T_GPU + shared on the SMs, T_PIM + shared on PIM)."""
    t_gpu, t_pim = ctx.evaluate(gpu_tokens, ctx.slot_counts)
    return np.maximum(ctx.comm_s, np.maximum(t_gpu + sg, t_pim + sp))


def _plain_context(counts: np.ndarray, placement, cost) -> PlacementContext:
    """The layer's context with no fixed work (the estimate adds the dense work itself)."""
    from heteromoe.sched.policies.sieve import SievePolicy

    ctx = SievePolicy().context(np.asarray(counts, dtype=np.int64), placement, cost)
    zero = np.zeros(placement.num_gpus)
    return PlacementContext(counts=ctx.counts, placement=ctx.placement, slot_counts=ctx.slot_counts, cost=cost,
                            comm_s=ctx.comm_s, gpu_fixed_s=zero, pim_fixed_s=zero)


def _with_fixed(ctx: PlacementContext, sg: np.ndarray, sp: np.ndarray) -> PlacementContext:
    return PlacementContext(counts=ctx.counts, placement=ctx.placement, slot_counts=ctx.slot_counts, cost=ctx.cost,
                            comm_s=ctx.comm_s, gpu_fixed_s=np.asarray(sg, dtype=np.float64),
                            pim_fixed_s=np.asarray(sp, dtype=np.float64))


def _check(c: DenseCosts) -> None:
    if c.decode.shape[0] != 1:
        raise ValueError(f"exact_layer covers one sub-batch; the costs have {c.decode.shape[0]} (pass the "
                         "one-sub-batch candidate)")


def _all_counts_shares(decode: np.ndarray) -> np.ndarray:
    """Shares whose per-GPU rounding (`rint(share * decode_g)`) reaches every count 0..decode_g on every GPU."""
    shares = {0.0, 1.0}
    for d in np.unique(decode[decode > 0]):
        shares.update(np.arange(int(d) + 1) / int(d))
    return np.array(sorted(shares))


def layer_time(c: DenseCosts, combo: tuple[str, str, str], attn_gpu_requests: np.ndarray, counts: np.ndarray,
               placement, cost, gpu_tokens: np.ndarray) -> float:
    """`estimate_layer`'s time of one sub-batch with `attn_gpu_requests [G]` requests' attention on the SMs
    (any count per GPU) and the routed experts split as `gpu_tokens [P]`."""
    _check(c)
    ctx = _plain_context(counts, placement, cost)
    shares = _all_counts_shares(c.decode[0])
    _, _, chain, sg, sp, _, _ = _dense_part(c, [combo], shares)
    dec = c.decode[0]
    a = np.asarray(attn_gpu_requests, dtype=np.int64)
    if a.shape != dec.shape or (a < 0).any() or (a > dec).any():
        raise ValueError(f"attn_gpu_requests {a.tolist()} must lie between 0 and the decode requests {dec.tolist()}")
    rounded = np.rint(shares[:, None] * dec[None, :]).astype(np.int64)  # [A, G]
    idx = np.argmax(rounded == a[None, :], axis=0)
    g = np.arange(dec.size)
    dense = chain[0, idx, 0, g]
    return float((dense + _window(ctx, gpu_tokens, sg[0, 0], sp[0, 0])).max())


def policy_layer_time(c: DenseCosts, counts: np.ndarray, placement, cost, rule: str = "heteromoe",
                      e_plain: tuple | None = None) -> tuple[float, tuple, np.ndarray, np.ndarray]:
    """A policy's decision for one layer of one sub-batch, timed by the estimate:
    "heteromoe": `choose_layer` on the expert times planned without other work (as `HeteromoePolicy.step_plan`
    does), then the experts re-planned by its fast path with the chosen placement's shared-expert time as
    fixed work (as the simulator does); "sieve": everything dense on the SMs, attention on PIM, Sieve's split.
    Returns (seconds, placement, [G] attention requests on the SMs, [P] GPU tokens)."""
    from heteromoe.sched.step_plan import choose_layer

    _check(c)
    ctx = _plain_context(counts, placement, cost)
    G = placement.num_gpus
    if rule == "sieve":
        combo, attn = ("gpu", "gpu", "gpu"), np.zeros(G, dtype=np.int64)
    else:
        tokens, t_gpu, t_pim = ctx.fast_path("heteromoe")
        est = choose_layer(c, t_gpu[None], t_pim[None], ctx.comm_s[None])
        lp = est.placement
        combo = (lp.proj, lp.out_router, lp.shared)
        attn = np.zeros(G, dtype=np.int64) if lp.attn_gpu_requests is None else lp.attn_gpu_requests[0]
    _, _, _, sg, sp, _, _ = _dense_part(c, [combo], np.zeros(1))
    tokens, _, _ = _with_fixed(ctx, sg[0, 0], sp[0, 0]).fast_path(rule)
    return layer_time(c, combo, attn, counts, placement, cost, tokens), combo, attn, tokens


def exact_layer(c: DenseCosts, counts: np.ndarray, placement, cost, *, time_limit_s: float = 2.0,
                num_workers: int = 2, dense_on_pim: bool = True) -> ExactLayer:
    """The least `estimate_layer` time of one layer of one sub-batch over every dense placement, every
    per-GPU attention request count and the CP-SAT optimum of the expert split (see the module docstring).

    Args:
        c: the layer's `DenseCosts` with one sub-batch ([1, G] arrays).
        counts: [E] tokens per routed expert; placement: `Placement` of the slots; cost: the expert cost
            model with no other work (what `HeteromoePolicy.step_plan` receives).
        time_limit_s: CP-SAT time per (placement, GPU) solve.
    """
    _check(c)
    if not time_limit_s > 0:
        raise ValueError(f"time_limit_s must be > 0, got {time_limit_s}")
    ctx = _plain_context(counts, placement, cost)
    G = placement.num_gpus
    combos = _combos(bool(np.any(c.shared_gpu > 0)), dense_on_pim)
    shares = _all_counts_shares(c.decode[0]) if np.any(c.attn_pim > 0) else np.zeros(1)
    _, _, chain, sg, sp, _, _ = _dense_part(c, combos, shares)  # chain [P, A, 1, G]; sg, sp [P, 1, 1, G]
    rounded = np.rint(shares[:, None] * c.decode[0][None, :]).astype(np.int64)  # [A, G]
    statuses: dict[str, int] = {}
    proved = True
    best = None
    for p, combo in enumerate(combos):
        a_idx = np.argmin(chain[p, :, 0, :], axis=0)  # [G]: per GPU its best request count (ties: fewest)
        dense = chain[p, a_idx, 0, np.arange(G)]
        fixed = _with_fixed(ctx, sg[p, 0, 0], sp[p, 0, 0])
        hint, _, _ = fixed.fast_path("heteromoe")
        tokens = hint.copy()
        window = _window(ctx, tokens, sg[p, 0, 0], sp[p, 0, 0])
        for g in range(G):
            experts = np.flatnonzero((ctx.slot_gpu == g) & (ctx.slot_counts > 0))
            if experts.size == 0:
                continue
            model = build_model(ctx.slot_counts, experts, cost.gpu.read_s_per_expert, cost.gpu_flop_s,
                                cost.pim_time_s, float(ctx.comm_s[g]), float(sg[p, 0, 0, g]), cost.gpu.launch_s,
                                float(sp[p, 0, 0, g]), hint=hint[experts])
            result = solve(model, time_limit_s, num_workers)
            statuses[result.status] = statuses.get(result.status, 0) + 1
            proved &= result.status == "OPTIMAL" and model.granularity == 1
            if result.gpu_tokens is None:
                continue
            candidate = tokens.copy()
            candidate[experts] = result.gpu_tokens
            w = _window(ctx, candidate, sg[p, 0, 0], sp[p, 0, 0])
            if w[g] < window[g]:
                tokens, window = candidate, w
        t = float((dense + window).max())
        if best is None or t < best.time_s:
            best = ExactLayer(t, combo, rounded[a_idx, np.arange(G)], tokens)
    return ExactLayer(best.time_s, best.placement, best.attn_gpu_requests, best.gpu_tokens, statuses, proved)
