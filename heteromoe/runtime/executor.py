"""runtime: executes plans for real tensors, one MoE layer call at a time, as three roles composed once.

    routing (top_k_index) -> loads -> plan (plan source) -> dispatch -> experts (runner) -> combine

- dispatch / combine (`runtime.dispatch`, `runtime.distributed`): every pair here, or all-to-all over a
  process group;
- experts runner (`runtime.runners`, `runtime.fused_runner`): the registered backends, with output checks
  and a fallback backend, or the fused kernels standing in for the built-in backends;
- plan source (`runtime.plan_sources`): the host (from the call's counts), ahead (from the previous
  call's), or the device (inside the routing kernel).

`runtime.roles.choose_roles` picks them when the executor is built; `MoEExecutor.run` is the same for
every combination. A layer the chosen runner does not accept (device, dtype, layout: asked once per
layer, device and dtype), or whose call on it fails, runs on the backends runner with host plans: no
token is lost.

The combine follows transformers' own implementations: each pair's weighted output is kept in the
promoted dtype of hidden states and routing weights, then summed over the k slots of each token and
cast back, so wrapped and unwrapped models agree to rounding. A backend that raises mid-batch, or whose
output fails `check_backend_output` (form, dtype, device, non-finite values from finite inputs), is logged
and its slice re-runs on the fallback backend. The fused kernels run only the built-in backends' own
computation (no plug-in code) and are not checked per call: a check would cost a host sync per call there;
they are tested against the backends runner instead.
"""
from __future__ import annotations

import logging
from typing import final

import torch

from heteromoe.cost.model import CostModel
from heteromoe.device import Backend
from heteromoe.runtime.call import LayerCall
from heteromoe.runtime.checks import BackendOutputError, check_backend_output, check_inputs
from heteromoe.runtime.dispatch import Dispatch, LocalDispatch
from heteromoe.runtime.layer import ExpertLayer
from heteromoe.runtime.plan_sources import PlanSource
from heteromoe.runtime.report import LayerStats, Records
from heteromoe.runtime.roles import Roles, choose_roles
from heteromoe.runtime.runners import RUNNERS, BackendsRunner, ExpertsRunner
from heteromoe.runtime.split import split_work, token_origins
from heteromoe.sched.plan import Plan, PlanError

logger = logging.getLogger(__name__)

__all__ = ["BackendOutputError", "MoEExecutor", "check_backend_output", "check_inputs", "split_work",
           "token_origins"]


@final
class MoEExecutor:
    """Runs layer calls through its roles and keeps per-layer statistics.

    Args:
        policy: the policy the plans come from.
        gpu_backend / pim_backend / fallback_backend: the registered backends of the two sides, and the
            one a failing slice re-runs on.
        num_gpus: GPUs the plans are made for (with `dispatch`: its group's size).
        fused: a FusedLayerPath: the fused kernels as the experts runner where they can stand in for the
            backends (None: the backends runner only).
        fused_on_cpu: CPU calls take the fused runner too (float32 C++ / numba twins).
        plan_ahead / plan_on_device: the plan source for the fused runner (see `runtime.plan_sources`).
        dispatch: the dispatch role (default: LocalDispatch(num_gpus)).
        runner: an experts runner to use instead of the fused one (it must answer `supports`).
    """

    def __init__(self, policy, gpu_backend: Backend, pim_backend: Backend, fallback_backend: Backend,
                 num_gpus: int = 1, *, fused=None, fused_on_cpu: bool = False, plan_ahead: bool = False,
                 plan_on_device: bool = False, dispatch: Dispatch | None = None,
                 runner: ExpertsRunner | None = None) -> None:
        self.policy = policy
        dispatch = dispatch if dispatch is not None else LocalDispatch(num_gpus)
        if dispatch.num_gpus != num_gpus:
            raise ValueError(f"gpus={num_gpus} but the dispatch runs over {dispatch.num_gpus}")
        generic = BackendsRunner(gpu_backend, pim_backend, fallback_backend)
        if runner is None and fused is not None:
            import heteromoe.runtime.fused_runner  # noqa: F401 - registers the "fused" runner

            runner = RUNNERS["fused"](gpu_backend, pim_backend, fallback_backend, path=fused, on_cpu=fused_on_cpu)
        self.roles: Roles = choose_roles(policy, dispatch, generic, runner, plan_ahead, plan_on_device)
        self.records = Records()
        #: per layer, why its calls run on the backends runner with host plans rather than the chosen runner
        self.generic_reasons: dict[str, str] = {}
        self._accepted: set = set()

    # -- one layer call ------------------------------------------------------------------------------
    def run(self, layer: ExpertLayer, cost: CostModel, placement, hidden: torch.Tensor,
            top_k_index: torch.Tensor, top_k_weights: torch.Tensor) -> torch.Tensor:
        """One MoE layer call.

        Args:
            layer: the experts.
            cost: the layer's cost model.
            placement: a Placement, or a ReplicaPlanner that observes the loads and returns one.
            hidden: [T, d]; top_k_index: [T, k]; top_k_weights: [T, k].
        Returns:
            [T, d] combined expert output in `hidden.dtype`.
        """
        check_inputs(layer, hidden, top_k_index, top_k_weights)
        call = LayerCall(layer, cost, placement, hidden, top_k_index, top_k_weights)
        roles = self.roles
        if roles.runner is not roles.generic and self._accepts(call):
            plans = roles.plans if roles.plans.accepts(call) else roles.host_plans
            try:
                return self._compose(call, plans, roles.runner)
            except (ValueError, PlanError):
                raise  # bad input: the caller's error, not the runner's
            except Exception as exc:  # noqa: BLE001 - a failing runner: the backends runner, no token lost
                if hidden.is_cuda and torch.cuda.is_current_stream_capturing():
                    raise  # the backends cannot run in a CUDA graph either; the capture fails, not the layer
                self.generic_reasons[layer.name] = f"{roles.runner.name} path failed: {type(exc).__name__}: {exc}"
                self.records.layer(layer.name).fallbacks += 1
                logger.warning("layer %s: %s path failed (%s: %s); re-running the call on the backends",
                               layer.name, roles.runner.name, type(exc).__name__, exc)
        return self._compose(call, roles.host_plans, roles.generic)

    def _compose(self, call: LayerCall, plans: PlanSource, runner: ExpertsRunner) -> torch.Tensor:
        planned = plans.plan(call, self.roles.dispatch, self.records, runner)
        out = runner.run(call, planned, self.roles.dispatch, self.records)
        plans.done(call, planned, self.records, runner)
        return out

    def _accepts(self, call: LayerCall) -> bool:
        """Whether the chosen runner takes this layer's calls on this device and dtype (asked once each;
        a layer it refused or failed on stays with the backends runner)."""
        name = call.layer.name
        if name in self.generic_reasons:
            return False
        hidden = call.hidden
        key = (name, hidden.get_device(), hidden.dtype)  # get_device(): an int, quicker to hash
        if key in self._accepted:  # this runs on every call
            return True
        reason = self.roles.runner.accepts(call)
        if reason is not None:
            self.generic_reasons[name] = reason
            logger.info("layer %s: backends runner (%s)", name, reason)
            return False
        self._accepted.add(key)
        return True

    # -- statistics ----------------------------------------------------------------------------------
    def flush(self) -> None:
        """Record every plan not recorded yet (plans made on the device are settled in bulk)."""
        self.roles.plans.flush(self.records, self.roles.runner)

    stats = property(lambda self: self.records.stats, doc="dict[str, LayerStats]: per-layer sums over calls")
    last_plans = property(lambda self: self.records.last_plans, doc="dict[str, Plan]: each layer's last plan")

    # -- what the roles are --------------------------------------------------------------------------
    num_gpus = property(lambda self: self.roles.dispatch.num_gpus, doc="GPUs the plans are made for")
    rank = property(lambda self: self.roles.dispatch.rank, doc="this process's rank in the dispatch's group")
    gpu_backend = property(lambda self: self.roles.generic.gpu, doc="the GPU side's backend")
    pim_backend = property(lambda self: self.roles.generic.pim, doc="the PIM side's backend")
    fallback_backend = property(lambda self: self.roles.generic.fallback, doc="what a failing slice re-runs on")
    fused = property(lambda self: getattr(self.roles.runner, "path", None),
                     doc="the fused kernels (FusedLayerPath) where they are the runner, else None")
