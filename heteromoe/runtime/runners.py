"""The experts runner role: what computes the experts of a planned layer call.

`BackendsRunner` runs the plan's two slices on the registered backends (`heteromoe.device`: built-in or
plug-in), checks each output as untrusted input and re-runs a failing slice on the fallback backend;
`runtime.fused_runner.FusedRunner` runs the whole call on the fused kernels, in place of the built-in
backends. Runners are registered by name (`RUNNERS`) like backends, and each answers what it can run
with a reason: `supports(...)` once when the executor is built, `accepts(call)` per layer and device.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from functools import partial
from typing import ClassVar

import torch

from heteromoe.cost.ema import EmaPimCost
from heteromoe.device import Backend
from heteromoe.runtime.call import CallPlan, LayerCall
from heteromoe.runtime.checks import BackendOutputError, check_backend_output
from heteromoe.runtime.dispatch import GPU_SIDE, Dispatch
from heteromoe.runtime.report import LayerStats, Records
from heteromoe.runtime.work import WorkSlice

logger = logging.getLogger(__name__)

__all__ = ["RUNNERS", "BackendsRunner", "ExpertsRunner", "register_runner"]


class ExpertsRunner(ABC):
    """Computes one planned layer call's experts and returns the combined [T, d] output.

    Class attributes:
        name: registry name.
        needs_host_plan: it reads `CallPlan.plan` (a host Plan for this call's counts); False: it reads
            `CallPlan.kernel` (the plan as the fused kernels take it).
        leaves_counts: after a call, `last_counts` holds the call's [E] tokens per expert (on its device).
    """

    name: ClassVar[str] = ""
    needs_host_plan: ClassVar[bool] = True
    leaves_counts: ClassVar[bool] = False

    def supports(self, dispatch: Dispatch, policy) -> tuple[bool, str]:
        """Whether it can run the calls of an executor with this dispatch and policy, with the reason."""
        return True, ""

    def accepts(self, call: LayerCall) -> str | None:
        """Why it cannot run this call's layer on this device and dtype (None: it can). Asked once per
        layer, device and dtype."""
        return None

    @abstractmethod
    def run(self, call: LayerCall, planned: CallPlan, dispatch: Dispatch, records: Records) -> torch.Tensor:
        """[T, d] the call's combined expert output in hidden's dtype."""

    @property
    def last_counts(self) -> torch.Tensor | None:
        """[E] int32: the last call's tokens per expert where the runner leaves them (`leaves_counts`)."""
        return None



class BackendsRunner(ExpertsRunner):
    """The plan's GPU slice on `gpu`, its PIM slice on `pim`, a failing slice again on `fallback`."""

    name = "backends"
    needs_host_plan = True

    def __init__(self, gpu: Backend, pim: Backend, fallback: Backend) -> None:
        self.gpu, self.pim, self.fallback = gpu, pim, fallback

    def run(self, call: LayerCall, planned: CallPlan, dispatch: Dispatch, records: Records) -> torch.Tensor:
        return dispatch.run(call, planned.plan, partial(self.run_side, call, records.layer(call.layer.name)))

    def run_side(self, call: LayerCall, stats: LayerStats, side: int, hidden: torch.Tensor,
                 top_k_weights: torch.Tensor, work: WorkSlice) -> torch.Tensor:
        """One side's [P, d] weighted outputs; what the PIM really took feeds a learned cost table."""
        backend = self.gpu if side == GPU_SIDE else self.pim
        out, ran_on = self.run_with_fallback(backend, call.layer, hidden, top_k_weights, work, stats)
        learned = call.cost.pim
        if backend is self.pim and ran_on is backend and isinstance(learned, EmaPimCost):
            measured = backend.reported_times_s(work)
            if measured is not None:  # Sieve's learned table: what the PIM really took
                learned.observe(work.tokens_per_expert, measured)
        return out

    def run_with_fallback(self, backend: Backend, layer, hidden: torch.Tensor, top_k_weights: torch.Tensor,
                          work: WorkSlice, stats: LayerStats) -> tuple[torch.Tensor, Backend]:
        """The slice's outputs and the backend that produced them.

        A backend is a plug-in, possibly driving real hardware: its output is checked like any untrusted
        input (`check_backend_output`). An exception or a failed check is logged naming the backend and the
        layer, counted in the layer's `fallbacks`, and the slice re-runs on the fallback backend. The
        fallback's own output is checked for its form only: it is the reference (where the layer's inputs
        or weights make non-finite values, it makes them as the unwrapped model does).
        """
        out_dtype = torch.promote_types(hidden.dtype, top_k_weights.dtype)
        try:
            out = backend.run_experts(layer, hidden, top_k_weights, work)
            problem = check_backend_output(out, work, hidden, top_k_weights, out_dtype,
                                           finite=backend is not self.fallback)
            if problem is None:
                return out, backend
            failure = f"returned {problem}"
        except Exception as exc:
            if backend is self.fallback:
                raise
            failure = f"raised {type(exc).__name__}: {exc}"
        if backend is self.fallback:
            raise BackendOutputError(f"layer {layer.name}: fallback backend {backend.name!r} {failure}")
        stats.fallbacks += 1
        logger.warning("layer %s: backend %r %s on %d pairs; re-running them on %r",
                       layer.name, backend.name, failure, work.num_pairs, self.fallback.name)
        out = self.fallback.run_experts(layer, hidden, top_k_weights, work)
        problem = check_backend_output(out, work, hidden, top_k_weights, out_dtype, finite=False)
        if problem is not None:
            raise BackendOutputError(f"layer {layer.name}: fallback backend {self.fallback.name!r} "
                                     f"returned {problem}")
        return out, self.fallback


#: Experts runners by name: factories taking the resolved (gpu, pim, fallback) backends and keywords.
RUNNERS: dict[str, Callable[..., ExpertsRunner]] = {}


def register_runner(name: str, factory: Callable[..., ExpertsRunner]) -> None:
    """Register (or replace) the runner `name`; re-entrant."""
    RUNNERS[name] = factory


register_runner("backends", lambda gpu, pim, fallback, **_: BackendsRunner(gpu, pim, fallback))
