"""heteromoe: Mixture-of-Experts inference across GPU and HBM-PIM.

The pipeline, named once (every module uses these stage names):

    routing -> loads -> plan -> (runtime | sim)

- routing: the router's `top_k_index [T, k]` of one MoE layer call;
- loads: tokens per expert and the expert-contiguous order of pairs (`heteromoe.routing`);
- plan: a policy's split of each expert's tokens between the GPU's SMs and its PIM stacks, with
  predicted times from the shared cost models (`heteromoe.sched`, `heteromoe.cost`);
- runtime: executes the plan on backends for real tensors (`heteromoe.runtime`, `heteromoe.wrap`);
- sim: times whole decode steps from plans (`heteromoe.sim`).
"""
import importlib

__version__ = "0.1.0"

# Names are imported on first use (PEP 562), so `heteromoe --help` and the CLI's argument checks run before
# numpy, the fast path and the cost models load, and an error while loading them reaches the CLI's one-line
# error report instead of failing the import of the command itself.
_EXPORTS = {
    "MoEModelSpec": "heteromoe.spec",
    "Plan": "heteromoe.sched",
    "PlanError": "heteromoe.sched",
    "Scheduler": "heteromoe.sched",
    "SystemSpec": "heteromoe.spec",
    "UserError": "heteromoe.errors",
    "models": "heteromoe.spec",
    "schedule": "heteromoe.sched",
    "systems": "heteromoe.spec",
}


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
    try:  # a subpackage (`heteromoe.sched`, `heteromoe.sim`, ...) after a plain `import heteromoe`
        return importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name != f"{__name__}.{name}":
            raise
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


def wrap(model, **kwargs):
    """Wrap a transformers MoE model; see `heteromoe.integrations.hf.wrap`."""
    from heteromoe.integrations.hf import wrap as _wrap

    return _wrap(model, **kwargs)


__all__ = [
    "MoEModelSpec",
    "Plan",
    "PlanError",
    "Scheduler",
    "SystemSpec",
    "UserError",
    "__version__",
    "models",
    "schedule",
    "systems",
    "wrap",
]
