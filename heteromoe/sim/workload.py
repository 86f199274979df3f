"""Where a simulated step's routing comes from: the calibrated synthetic generator, or a recorded trace."""
from __future__ import annotations

import numpy as np

from heteromoe.routing.synth import BimodalRouting
from heteromoe.routing.traces import RoutingTrace, load_trace
from heteromoe.spec.model import MoEModelSpec

__all__ = ["SyntheticWorkload", "TraceWorkload", "workload_for"]


class SyntheticWorkload:
    """Decode steps from `BimodalRouting.for_model` (skew calibrated per model, correlated across steps)."""

    def __init__(self, model: MoEModelSpec, seed: int = 0) -> None:
        self.model = model
        self.seed = seed

    def steps(self, batch: int, count: int) -> np.ndarray:
        """[count, moe_layers, batch, k] routing of `count` consecutive decode steps."""
        gen = BimodalRouting.for_model(self.model, seed=self.seed + 7919 * batch)
        return gen.decode(batch, count, self.model.num_moe_layers)


class TraceWorkload:
    """Decode steps replayed from a recorded trace.

    A trace of one layer feeds every MoE layer with successive windows; a trace of several layers must
    have exactly the model's MoE layers. Its expert count and top-k must be the model's.
    """

    def __init__(self, trace: RoutingTrace | str, model: MoEModelSpec) -> None:
        self.trace = load_trace(trace) if not isinstance(trace, RoutingTrace) else trace
        t = self.trace
        if t.num_experts != model.num_experts:
            raise ValueError(f"trace {t.source} routes to {t.num_experts} experts but model {model.name!r} has "
                             f"{model.num_experts}; pass a model spec that matches the trace")
        if t.top_k != model.top_k:
            raise ValueError(f"trace {t.source} has top-{t.top_k} routing but model {model.name!r} uses top-{model.top_k}")
        if t.num_layers not in (1, model.num_moe_layers):
            raise ValueError(f"trace {t.source} has {t.num_layers} MoE layers; model {model.name!r} has "
                             f"{model.num_moe_layers} (a one-layer trace is replayed on every layer)")
        self.model = model

    def steps(self, batch: int, count: int) -> np.ndarray:
        t, layers = self.trace, self.model.num_moe_layers
        if batch > t.num_tokens:
            raise ValueError(f"trace {t.source} has {t.num_tokens} tokens, fewer than a batch of {batch}")
        windows = t.num_tokens // batch
        out = np.empty((count, layers, batch, t.top_k), dtype=np.int64)
        for s in range(count):
            for layer in range(layers):
                src = 0 if t.num_layers == 1 else layer
                w = (s * layers + layer) % windows if t.num_layers == 1 else s % windows
                out[s, layer] = t.top_k_index[src, w * batch:(w + 1) * batch]
        return out


def workload_for(model: MoEModelSpec, trace=None, seed: int = 0):
    return SyntheticWorkload(model, seed) if trace is None else TraceWorkload(trace, model)
