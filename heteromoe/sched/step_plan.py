"""The step plan: where each dense operation of a decode step runs, as data the simulator honours.

A `StepPlan` says how many sub-batches the step runs (1, or 2 interleaved as NeuPIMs / Sieve §3.4 do) and,
per layer, a `LayerPlacement`: where the input projections (QKV, or a Gated DeltaNet layer's), the output
projection with the router, and the shared experts run (the SMs or PIM; whole, they are GEMVs over weights
every token needs), and how many decode requests of each (sub-batch, GPU) run their attention on the SMs
(the rest on PIM: attention splits by requests, each request's KV cache being read by one side). The routed
experts are planned per layer as before (`sched.plan.Plan`).

`StepPlan.validate` checks that every operation of every token runs exactly once: each operation has one
place, and the attention split of each (sub-batch, GPU) is a count between 0 and its decode requests (the
rest run on PIM). Dependencies are the simulator's: it issues each placed operation after its inputs
(`sim.graph` never starts an operation before them).

`DenseCosts` is what a planner reads: per sub-batch and GPU, the seconds of each dense operation on either
side, and `choose_layer` picks the placement that minimises a lane-load estimate of the layer (see its
docstring), given the routed experts' GPU / PIM / link times.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

__all__ = ["PLACES", "DenseCosts", "LayerEstimate", "LayerPlacement", "StepPlan", "StepPlanError",
           "choose_layer", "estimate_layer"]

PLACES = ("gpu", "pim")


class StepPlanError(ValueError):
    """A step plan that would run some operation's tokens zero times or more than once."""


@dataclass(frozen=True, eq=False)
class LayerPlacement:
    """Where one layer's dense operations run, for every sub-batch.

    Attributes:
        proj, out_router, shared: "gpu" or "pim".
        attn_gpu_requests: [S, G] decode requests whose attention runs on the SMs (None: all on the
            policy's default side, PIM for the PIM policies).
    """

    proj: str = "gpu"
    out_router: str = "gpu"
    shared: str = "gpu"
    attn_gpu_requests: np.ndarray | None = None

    @property
    def is_default(self) -> bool:
        return self.proj == self.out_router == self.shared == "gpu" and (
            self.attn_gpu_requests is None or not np.any(self.attn_gpu_requests))


@dataclass(frozen=True, eq=False)
class StepPlan:
    """One decode step's sub-batches and per-layer placements (`layers[i]` for layer i)."""

    sub_batches: int
    layers: tuple[LayerPlacement, ...] = field(default_factory=tuple)
    info: dict = field(default_factory=dict)

    def layer(self, i: int) -> LayerPlacement:
        return self.layers[i] if self.layers else _DEFAULT

    def validate(self, decode: np.ndarray, num_layers: int) -> None:
        """Raise StepPlanError unless the plan places every operation of every token once.

        Args:
            decode: [S, G] decode requests of each sub-batch on each GPU.
            num_layers: layers of the model (a plan with layers names each of them).
        """
        if self.sub_batches not in (1, 2):
            raise StepPlanError(f"sub_batches must be 1 or 2, got {self.sub_batches}")
        if decode.shape[0] != self.sub_batches:
            raise StepPlanError(f"the requests are split into {decode.shape[0]} sub-batches, the plan has "
                                f"{self.sub_batches}")
        if self.layers and len(self.layers) != num_layers:
            raise StepPlanError(f"the plan places {len(self.layers)} layers, the model has {num_layers}")
        for i, lp in enumerate(self.layers):
            for name in ("proj", "out_router", "shared"):
                if getattr(lp, name) not in PLACES:
                    raise StepPlanError(f"layer {i}: {name} = {getattr(lp, name)!r}; must be one of {PLACES}")
            a = lp.attn_gpu_requests
            if a is None:
                continue
            if a.shape != decode.shape:
                raise StepPlanError(f"layer {i}: attn_gpu_requests has shape {a.shape}, the sub-batches "
                                    f"{decode.shape}")
            if (a < 0).any() or (a > decode).any():
                s, g = np.argwhere((a < 0) | (a > decode))[0]
                raise StepPlanError(f"layer {i}: {int(a[s, g])} requests' attention on the SMs of GPU {g} in "
                                    f"sub-batch {s}, which holds {int(decode[s, g])} decode requests")


_DEFAULT = LayerPlacement()


@dataclass(frozen=True, eq=False)
class DenseCosts:
    """[S, G] seconds of one layer's dense operations, on the SMs (`*_gpu`) and on PIM (`*_pim`).

    `attn_gpu` / `attn_pim`: decode attention of all of the (sub-batch, GPU)'s decode requests on that side
    (a share of the requests costs that share); `core_gpu`: SM work that stays there (prefill attention,
    Gated DeltaNet state). PIM entries are inf where the system cannot run them there."""

    proj_gpu: np.ndarray
    proj_pim: np.ndarray
    out_gpu: np.ndarray
    out_pim: np.ndarray
    shared_gpu: np.ndarray
    shared_pim: np.ndarray
    attn_gpu: np.ndarray
    attn_pim: np.ndarray
    core_gpu: np.ndarray
    decode: np.ndarray  # [S, G] decode requests
    launch_s: float = 0.0
    sync_s: float = 0.0  # the AllGather of routing counts between the router and the expert window
    _cache: dict = field(default_factory=dict, repr=False)


@dataclass(frozen=True)
class LayerEstimate:
    """A placement and its estimated layer time."""

    time_s: float
    placement: LayerPlacement
    gpu_other_s: np.ndarray  # [S, G] SM seconds besides the routed experts (what the expert rule sees)
    pim_fixed_s: np.ndarray  # [S, G] PIM seconds besides the routed experts


#: request shares tried for the attention split (the planner rounds them to whole requests)
ATTN_SHARES = np.linspace(0.0, 1.0, 17)


def _combos(has_shared: bool, dense_on_pim: bool) -> list[tuple[str, str, str]]:
    places = PLACES if dense_on_pim else ("gpu",)
    return list(itertools.product(places, places, places if has_shared else ("gpu",)))


def estimate_layer(c: DenseCosts, proj: str, out: str, shared: str, share: np.ndarray, e_gpu: np.ndarray,
                   e_pim: np.ndarray, e_comm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Estimated layer seconds for each attention share in `share` [A] (the requests' fraction on the SMs,
    rounded to whole requests per sub-batch and GPU; the SM part pays one launch), with the projections,
    output projection + router and shared experts on `proj`, `out`, `shared` ("gpu" / "pim").

    Per sub-batch s and GPU the chain is projections -> attention (its SM and PIM parts side by side) ->
    prefill / state core -> output projection + router -> AllGather of counts (`sync_s`) -> the expert
    window max(comm, SM part, PIM part),
    with the routed experts' times `e_gpu`, `e_pim`, `e_comm` [S, G]. With one sub-batch the layer is its
    chain. With two, one sub-batch's dense work runs while the other's experts do, so the layer takes the
    longest of: each lane's total over both sub-batches (SMs, PIM, link) and each sub-batch's own chain.
    Returns ([A] seconds, [A, S, G] SM seconds besides experts, [A, S, G] PIM seconds besides experts)."""
    t, other, fixed = _estimate(c, [(proj, out, shared)], share, e_gpu, e_pim, e_comm)
    return t[0], other[0], fixed[0]


def _dense_part(c: DenseCosts, combos, share):
    """What `_estimate` needs of the dense operations alone (it does not depend on the experts); kept on
    `c` (its costs do not change) for the next call with the same placements and shares."""
    key = (tuple(combos), share.tobytes())
    cached = c._cache.get(key)
    if cached is not None:
        return cached
    pick = np.array([[p == "pim" for p in combo] for combo in combos])[:, :, None, None, None]  # [P, 3, 1, 1, 1]
    gpu3 = np.stack([c.proj_gpu, c.out_gpu, c.shared_gpu])[None, :, None]  # [1, 3, 1, S, G]
    pim3 = np.stack([c.proj_pim, c.out_pim, c.shared_pim])[None, :, None]
    on_gpu = np.where(pick, 0.0, gpu3)  # [P, 3, 1, S, G]
    on_pim = np.where(pick, pim3, 0.0)
    dec = c.decode.astype(np.float64)
    a = np.divide(np.rint(share[:, None, None] * dec), dec, out=np.zeros((share.size,) + dec.shape),
                  where=dec > 0)[None]  # [1, A, S, G]
    att_g = np.where(a > 0, (c.attn_gpu - c.launch_s) * a + c.launch_s, 0.0)
    att_p = c.attn_pim * (1.0 - a)
    pre_g = on_gpu[:, 0] + on_gpu[:, 1] + att_g + c.core_gpu  # [P, A, S, G]: SM work before the window
    pre_p = on_pim[:, 0] + on_pim[:, 1] + att_p
    chain = (on_gpu[:, 0] + on_pim[:, 0] + np.maximum(att_g, att_p) + c.core_gpu + on_gpu[:, 1] + on_pim[:, 1]
             + c.sync_s)
    sg, sp = on_gpu[:, 2], on_pim[:, 2]
    out = (pre_g, pre_p, chain, sg, sp, (pre_g + sg).sum(axis=2), (pre_p + sp).sum(axis=2))
    c._cache[key] = out
    return out


def _estimate(c: DenseCosts, combos, share, e_gpu, e_pim, e_comm):
    """`estimate_layer` for every placement of `combos` at once: ([P, A], [P, A, S, G], [P, A, S, G])."""
    pre_g, pre_p, chain, sg, sp, gpu_sum, pim_sum = _dense_part(c, combos, share)
    chain = chain + np.maximum(np.maximum(e_comm, e_gpu + sg), e_pim + sp)
    if c.decode.shape[0] == 1:
        t = chain.max(axis=(2, 3))
    else:
        gpu_lane = (gpu_sum + e_gpu.sum(axis=0)).max(axis=2)
        pim_lane = (pim_sum + e_pim.sum(axis=0)).max(axis=2)
        t = np.maximum(np.maximum(gpu_lane, pim_lane), np.maximum(e_comm.sum(axis=0).max(), chain.max(axis=(2, 3))))
    shape = chain.shape
    return t, np.broadcast_to(pre_g + sg, shape), np.broadcast_to(pre_p + sp, shape)


def choose_layer(c: DenseCosts, e_gpu: np.ndarray, e_pim: np.ndarray, e_comm: np.ndarray, *,
                 dense_on_pim: bool = True, attention_split: bool = True) -> LayerEstimate:
    """The placement of one layer's dense operations with the least estimated time (`estimate_layer`):
    every combination of SMs / PIM for the projections, output projection + router and shared experts, and
    17 request shares of attention on the SMs (0, 1/16, ..., 1). Ties keep the default (all on the SMs,
    attention on PIM), which comes first."""
    combos = _combos(bool(np.any(c.shared_gpu > 0)), dense_on_pim)
    shares = ATTN_SHARES if attention_split and np.any(c.attn_pim > 0) else ATTN_SHARES[:1]
    t, other, fixed = _estimate(c, combos, shares, e_gpu, e_pim, e_comm)
    p, i = divmod(int(np.argmin(t)), t.shape[1])
    proj, out, shared = combos[p]
    share = float(shares[i])
    attn = np.rint(share * c.decode).astype(np.int64) if share > 0 else None
    return LayerEstimate(time_s=float(t[p, i]), placement=LayerPlacement(proj, out, shared, attn),
                         gpu_other_s=other[p, i], pim_fixed_s=fixed[p, i])
