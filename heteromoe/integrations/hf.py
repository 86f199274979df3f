"""`heteromoe.wrap()`: run a Hugging Face transformers MoE model through heteromoe.

Registers a heteromoe experts implementation with transformers' `ExpertsInterface` and selects it on the
model (`model.set_experts_implementation`). Routing, shared experts and scaling stay in the model; each
experts call becomes loads -> plan -> execution on the backends. Families whose experts bypass the
interface (DBRX, Llama4, GPT-OSS loaded as native MXFP4) are refused with the class named: nothing runs
silently unwrapped.
"""
from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass

import numpy as np
import torch

from heteromoe.cost.ema import EmaPimCost
from heteromoe.cost.model import CostModel, default_pim_cost
from heteromoe.device import Backend, BackendUnavailable, registry
from heteromoe.errors import UserError
from heteromoe.runtime.executor import MoEExecutor
from heteromoe.runtime.layer import ExpertLayer
from heteromoe.runtime.options import FusedOptions
from heteromoe.sched.factory import get_policy
from heteromoe.sched.placement import Placement, as_placement
from heteromoe.sched.replicas import ReplicaPlanner
from heteromoe.spec.hardware import SystemSpec
from heteromoe.spec.model import MoEModelSpec
from heteromoe.spec.presets import models, systems

logger = logging.getLogger(__name__)

__all__ = ["FusedOptions", "HeteroMoERuntime", "UnsupportedModelError", "find_expert_layers", "wrap"]

_ids = itertools.count()
_EXPERT_COUNT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
_TOP_K_KEYS = ("num_experts_per_tok", "moe_top_k", "top_k")


class UnsupportedModelError(ValueError):
    """The model cannot be wrapped; the message names the class and why."""


def _is_interface_experts(module: torch.nn.Module) -> bool:
    """Set up by transformers' `@use_experts_implementation` (structure, not source text)."""
    return all(hasattr(module, a) for a in ("has_gate", "is_transposed", "down_proj")) and hasattr(module, "config")


def _bypasses_interface(module: torch.nn.Module) -> bool:
    """An experts container that transformers' interface will not dispatch."""
    if _is_interface_experts(module):
        return False
    name = type(module).__name__
    fused = [p for n, p in module.named_parameters(recurse=False) if n in ("gate_up_proj", "down_proj", "up_proj")]
    return name.endswith("Experts") or any(p.dim() >= 3 for p in fused)


def find_expert_layers(model: torch.nn.Module) -> list[ExpertLayer]:
    """Every MoE experts module of `model`, in module order; raise UnsupportedModelError where unsupported."""
    layers: list[ExpertLayer] = []
    for name, module in model.named_modules():
        if _is_interface_experts(module):
            if getattr(module, "_is_expert_parallel", False):
                raise UnsupportedModelError(f"{type(module).__name__} at {name} runs transformers' own expert "
                                            "parallelism; load the model without tp_plan/ep to wrap it")
            layers.append(ExpertLayer.from_module(name, module))
        elif _bypasses_interface(module):
            raise UnsupportedModelError(
                f"{type(model).__name__}: its experts module {type(module).__name__} (at {name}) bypasses "
                "transformers' ExpertsInterface, so heteromoe cannot run it (DBRX, Llama4 and GPT-OSS loaded as "
                "native MXFP4 are such families; load GPT-OSS dequantized to bf16 to wrap it)")
    if not layers:
        routed = next((getattr(model.config, k) for k in _EXPERT_COUNT_KEYS
                       if getattr(getattr(model, "config", None), k, None)), None)
        detail = (f"its config routes to {routed} experts but no experts module uses transformers' "
                  "ExpertsInterface") if routed else "it has no MoE layers"
        raise UnsupportedModelError(f"cannot wrap {type(model).__name__}: {detail}")
    return layers


def _config_value(module: torch.nn.Module, keys) -> int | None:
    config = getattr(module, "config", None)
    for key in keys:
        value = getattr(config, key, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def _model_spec_for(layer: ExpertLayer, given: str | MoEModelSpec | None) -> MoEModelSpec:
    """The spec used for timing: the user's preset (checked against the module) or one read off the module."""
    top_k = _config_value(layer.module, _TOP_K_KEYS) or 1
    if given is not None:
        spec = models.get(given)
        if spec.num_experts != layer.num_experts:
            raise ValueError(f"model preset {spec.name!r} has {spec.num_experts} experts but layer {layer.name} of the "
                             f"wrapped model has {layer.num_experts}; pass a matching preset or model_spec=None")
        return spec
    elem = torch.empty((), dtype=layer.dtype).element_size()
    n_layers = _config_value(layer.module, ("num_hidden_layers",)) or 1
    return MoEModelSpec(name=f"{type(layer.module).__name__}", hidden_size=layer.hidden_size,
                        moe_intermediate_size=layer.intermediate_size, num_experts=layer.num_experts,
                        top_k=min(top_k, layer.num_experts), num_layers=n_layers, num_moe_layers=n_layers,
                        bytes_per_weight=float(elem), bytes_per_activation=float(elem))


def _resolve_backend(name: str | Backend | None, side: str, layers: list[ExpertLayer]) -> Backend:
    backend = registry.default(side) if name is None else (name if isinstance(name, Backend) else registry.get(name))
    for layer in layers:
        ok, reason = backend.supports(layer)
        if not ok:
            if name is None:
                raise BackendUnavailable(f"default {side} backend {backend.name!r} cannot run {layer.name}: {reason}")
            raise BackendUnavailable(f"backend {backend.name!r} cannot run {layer.name}: {reason}; "
                                     f"alternatives: {registry.available_names()}")
    return backend


@dataclass(eq=False)
class _LayerBinding:
    layer: ExpertLayer
    cost: CostModel
    placement: Placement | ReplicaPlanner


class HeteroMoERuntime:
    """A wrapped model: `model` is the same object, now dispatching its experts through heteromoe."""

    def __init__(self, model, bindings: dict[int, _LayerBinding], executor: MoEExecutor, impl_name: str,
                 previous_impl, system: SystemSpec, record_routing: bool = False) -> None:
        self.model = model
        self.executor = executor
        self.system = system
        self._bindings = bindings
        self._impl_name = impl_name
        self._previous_impl = previous_impl
        self._active = True
        self._layer_index = {key: i for i, key in enumerate(bindings)}
        self._trace: list[tuple[int, np.ndarray]] = []  # (layer index, top_k_index [T, k]) per call
        self._trace_pairs = 0
        self.trace_limit_pairs = 4_000_000
        # recording copies every call's routing to the host: a wait per layer call, so only when asked
        self.record_routing = record_routing

    @property
    def layers(self) -> list[ExpertLayer]:
        return [b.layer for b in self._bindings.values()]

    def __call__(self, module, hidden_states, top_k_index, top_k_weights):
        """The experts function transformers calls: `(module, [T, d], [T, k], [T, k]) -> [T, d]`."""
        binding = self._bindings.get(id(module))
        if binding is None:
            raise RuntimeError(f"heteromoe implementation {self._impl_name!r} called for an experts module "
                               f"({type(module).__name__}) it did not wrap")
        shape = hidden_states.shape
        hidden = hidden_states.reshape(-1, shape[-1])
        if self.record_routing and self._trace_pairs < self.trace_limit_pairs:  # capture for save_trace()
            ids = top_k_index.detach().reshape(hidden.shape[0], -1).to("cpu").numpy().astype(np.int64)
            self._trace.append((self._layer_index[id(module)], ids))
            self._trace_pairs += ids.size
        out = self.executor.run(binding.layer, binding.cost, binding.placement, hidden,
                                top_k_index.reshape(hidden.shape[0], -1), top_k_weights.reshape(hidden.shape[0], -1))
        return out.reshape(shape)

    def report(self) -> dict:
        """JSON-serializable per-layer sums: GPU/PIM split and predicted times (see README)."""
        self.executor.flush()  # plans made on the device are settled lazily
        layers = [self.executor.stats[b.layer.name].to_dict() if b.layer.name in self.executor.stats
                  else {"name": b.layer.name, "calls": 0} for b in self._bindings.values()]
        return {
            "rank": self.executor.rank,
            "system": self.system.name,
            "policy": self.executor.policy.name,
            "num_gpus": self.executor.num_gpus,
            "backends": {"gpu": self.executor.gpu_backend.name, "pim": self.executor.pim_backend.name,
                         "fallback": self.executor.fallback_backend.name},
            "layers": layers,
        }

    def save_trace(self, path) -> int:
        """Write the routing seen so far (every MoE layer's top_k_index, per call) as a trace file.

        The format is the JSON-lines schema of the shared vLLM route logs (a meta line, then one "route"
        line per token and layer), so `heteromoe.routing.load_trace` and `heteromoe simulate --trace` read
        it. At most `trace_limit_pairs` routed pairs are captured. Returns the number of route lines.
        Needs `wrap(..., record_routing=True)` (or `runtime.record_routing = True` before the calls).
        """
        import json

        if not self.record_routing and not self._trace:
            raise RuntimeError("no routing was recorded: wrap(..., record_routing=True) to record it (off by "
                               "default: recording copies each layer call's routing to the host, a wait per call)")
        layers = [b.layer for b in self._bindings.values()]
        meta = {"type": "meta", "source": "heteromoe", "model_id": type(self.model).__name__,
                "num_experts": layers[0].num_experts, "top_k": int(self._trace[0][1].shape[1]) if self._trace else 0,
                "layers_logged": list(range(len(layers))), "layer_names": [layer.name for layer in layers]}
        lines = 0
        with open(path, "w") as fh:
            fh.write(json.dumps(meta) + "\n")
            counters = [0] * len(layers)
            for layer, ids in self._trace:
                for row in ids.tolist():
                    fh.write(json.dumps({"type": "route", "layer": layer, "token_idx": counters[layer],
                                         "topk_ids": row}) + "\n")
                    counters[layer] += 1
                    lines += 1
        return lines

    def reset_report(self) -> None:
        self.executor.flush()  # calls made before the reset are settled (and then forgotten) now
        self.executor.stats.clear()

    def unwrap(self):
        """Restore the previous experts implementation; returns the model."""
        if not self._active:
            return self.model
        from transformers.integrations.moe import ExpertsInterface

        self.model.set_experts_implementation(self._previous_impl)
        ExpertsInterface._global_mapping.pop(self._impl_name, None)
        self._active = False
        return self.model


def wrap(model, *, system: str | SystemSpec = "h100-hbm3-pim", policy="sieve",
         model_spec: str | MoEModelSpec | None = None, gpus: int = 1, placement=None,
         replicas_per_gpu: int = 0, replan_every: int = 64, learn_pim_costs: bool = False, process_group=None,
         gpu_backend: str | Backend | None = None, pim_backend: str | Backend | None = None,
         fallback_backend: str | Backend = "torch", fused: bool | FusedOptions | None = None,
         record_routing: bool = False, gemv_max_tokens: int | None = None, plan_ahead: bool | None = None,
         plan_on_device: bool | None = None) -> HeteroMoERuntime:
    """Wrap a transformers MoE model so every experts call runs loads -> plan -> experts.

    The options by role: what is emulated and planned (`system`, `policy`, `model_spec`, `gpus`,
    `placement`, `replicas_per_gpu`, `replan_every`, `learn_pim_costs`), the dispatch (`process_group`),
    the experts runner (`gpu_backend`, `pim_backend`, `fallback_backend`, `fused`) and its plan source
    (`fused=FusedOptions(plan_ahead=..., plan_on_device=...)`); see docs/runtime.md.

    Args:
        model: a transformers `PreTrainedModel` whose experts use the ExpertsInterface.
        system: system preset name, TOML path or SystemSpec (the emulated hardware).
        policy: a Policy or one of the registered names (`heteromoe policies` lists them): `gpu-only` (every
            expert on the GPU, no PIM), `no-exp` (decode attention on PIM, experts on the GPU), `all-exp`
            (every expert on PIM), `sieve` (hottest experts to the GPU while the max of comm/GPU/PIM time
            falls), `pimoe` (expert-parallel PIM layout, the busiest channel's hottest expert to the GPU),
            `duplex` (all on the GPU, coldest experts to PIM while the max falls), `heteromoe` (best prefix
            of Sieve's order on the GPU, one expert split, replica routing), `exact` (the CP-SAT optimum).
        model_spec: preset used for timing (its expert count must match); default: read off the model.
        gpus: GPUs the plan is made for (experts placed in contiguous blocks, or by `placement`: [E] home
            GPUs or a Placement). Without `process_group` every pair runs in this process (local dispatch).
        replicas_per_gpu: extra expert slots per GPU for replicas of hot experts, chosen per layer by the
            slow loop (`sched.replicas.ReplicaPlanner`) every `replan_every` calls from moving-average
            loads; the `heteromoe` policy routes tokens to them.
        process_group: run expert-parallel across this torch.distributed group (NCCL or gloo; use
            `torch.distributed.group.WORLD` for all ranks): each rank runs its own share of the batch and
            the experts the placement gives it; `gpus` defaults to the group's size.
        learn_pim_costs: keep, per layer, Sieve's EMA table of PIM times by token count (`cost.ema`),
            fed by what the PIM backend reports (`Backend.reported_times_s`); the policy plans with it.
        gpu_backend / pim_backend: backend names; default: DEFAULT_PRIORITY of `heteromoe.device`.
        fallback_backend: runs a slice whose backend failed mid-batch.
        fused: the fused kernel path (`runtime.fused`, the "fused" experts runner, standing in for the built-in
            torch / pim-emulator backends on one process): a FusedOptions, or its `enabled` alone: None
            (default) on for CUDA calls, True also on CPU (float32, C++/numba kernels), False off.
        gemv_max_tokens / plan_ahead / plan_on_device: shorthands for FusedOptions(tuning=KernelTuning(
            gemv_max_tokens=...), plan_ahead=..., plan_on_device=...) (not together with fused=FusedOptions(...)).
        record_routing: keep every layer call's routing for `runtime.save_trace()` (copies it to the host
            on each call, which makes the call wait for the router: off by default).
    Returns:
        HeteroMoERuntime (`.model`, `.report()`, `.unwrap()`).
    """
    if not hasattr(model, "set_experts_implementation"):
        raise UnsupportedModelError(f"cannot wrap {type(model).__name__}: not a transformers PreTrainedModel with "
                                    "set_experts_implementation (transformers >= 5.17 is required)")
    for name, value, low in (("replicas_per_gpu", replicas_per_gpu, 0), ("replan_every", replan_every, 1)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise UserError(f"{name} must be an integer >= {low}, got {value!r}"
                            + (" (0: no replicas of hot experts)" if name == "replicas_per_gpu" else ""))
    layers = find_expert_layers(model)
    if process_group is not None:
        import torch.distributed as dist

        if not dist.is_initialized():
            raise RuntimeError("process_group= needs torch.distributed initialised (dist.init_process_group)")
        world = dist.get_world_size(process_group)
        if gpus not in (1, world):
            raise ValueError(f"gpus={gpus} but process_group has {world} ranks; leave gpus out")
        gpus = world
    system_spec = systems.get(system)
    system_spec.require_gpu()
    system_spec.check_gpus(gpus)
    bindings: dict[int, _LayerBinding] = {}
    for layer in layers:
        spec = _model_spec_for(layer, model_spec)
        slots = as_placement(placement, layer.num_experts, gpus)
        if replicas_per_gpu:
            slots = ReplicaPlanner(slots.home_gpu, gpus, replicas_per_gpu, replan_every)
        pim_cost = EmaPimCost(default_pim_cost(system_spec, spec)) if learn_pim_costs else None
        bindings[id(layer.module)] = _LayerBinding(layer, CostModel(system_spec, spec, pim_model=pim_cost), slots)

    dispatch = None
    if process_group is not None:
        from heteromoe.runtime.distributed import AllToAllDispatch

        dispatch = AllToAllDispatch(process_group, gpus)
    options = FusedOptions.of(fused, gemv_max_tokens=gemv_max_tokens, plan_ahead=plan_ahead,
                              plan_on_device=plan_on_device)
    fused_kw = {}
    if options.enabled is not False and process_group is None:
        from heteromoe.runtime.fused import FusedLayerPath

        fused_kw = dict(fused=FusedLayerPath(tuning=options.tuning), fused_on_cpu=bool(options.enabled),
                        plan_ahead=options.plan_ahead, plan_on_device=options.plan_on_device)
    executor = MoEExecutor(get_policy(policy), _resolve_backend(gpu_backend, "gpu", layers),
                           _resolve_backend(pim_backend, "pim", layers),
                           _resolve_backend(fallback_backend, "gpu", layers), gpus, dispatch=dispatch, **fused_kw)
    from transformers.integrations.moe import ExpertsInterface

    impl_name = f"heteromoe_{next(_ids)}"
    previous = (model.get_experts_implementation() if hasattr(model, "get_experts_implementation")
                else model.config._experts_implementation)
    runtime = HeteroMoERuntime(model, bindings, executor, impl_name, previous, system_spec, record_routing=record_routing)
    ExpertsInterface.register(impl_name, runtime)
    try:
        model.set_experts_implementation(impl_name)
        missed = [b.layer.name for b in bindings.values()
                  if getattr(b.layer.module.config, "_experts_implementation", None) != impl_name]
        if missed:
            raise UnsupportedModelError(f"{type(model).__name__}: set_experts_implementation did not reach "
                                        f"{missed[:3]}; the model would run partly unwrapped")
    except Exception:
        model.set_experts_implementation(previous)
        ExpertsInterface._global_mapping.pop(impl_name, None)
        raise
    logger.info("wrapped %s: %d MoE layers, policy %s on %s x%d (gpu=%s, pim=%s)", type(model).__name__, len(layers),
                executor.policy.name, system_spec.name, gpus, executor.gpu_backend.name, executor.pim_backend.name)
    return runtime
