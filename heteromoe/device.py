"""The Backend API and its registry.

A backend runs one side of a plan: given an ExpertLayer, the hidden states `[T, d]`, the routing
weights `[T, k]` and a WorkSlice (expert-contiguous pairs), it returns the weighted expert outputs
`[P, d]` of those pairs; the runtime combines them. Layout facts come from the ExpertLayer as data.

Backends are found through the entry-point group `heteromoe.backends`; the built-ins in `backends/`
are declared there in our own pyproject exactly as a third party would. Each entry point is a *probe*:
a function returning the backend class's qualified name, or None (logging why) when it cannot run
here; nothing heavy is imported until a backend is chosen. `HETEROMOE_BACKENDS=a,b` limits which
entry points load. An explicitly requested backend that cannot run raises, naming the condition and
the alternatives; defaults walk `DEFAULT_PRIORITY` and log their pick.
"""
from __future__ import annotations

import importlib
import logging
import os
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from importlib import metadata
from typing import ClassVar

import numpy as np
import torch

from heteromoe.errors import UserError
from heteromoe.runtime.layer import ExpertLayer
from heteromoe.runtime.work import WorkSlice

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_PRIORITY",
    "ENTRY_POINT_GROUP",
    "Backend",
    "BackendEntry",
    "BackendRegistry",
    "BackendUnavailable",
    "UnknownBackendError",
    "get_backend",
    "registry",
]

ENTRY_POINT_GROUP = "heteromoe.backends"
#: Default backend per side of the plan, in priority order.
DEFAULT_PRIORITY: dict[str, list[str]] = {"gpu": ["torch", "numba-cpu"], "pim": ["pim-emulator"]}


class BackendUnavailable(UserError, RuntimeError):
    """A requested backend cannot run here; the message says why and what to use instead (one line)."""


class UnknownBackendError(UserError, KeyError):
    """A backend name no plug-in declares; the message lists the known ones. A ValueError (the project's
    UserError) and, for older callers, a KeyError, printed unquoted."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class Backend(ABC):
    """One execution target behind the device API.

    Class attributes:
        name: registry name.
        kind: "gpu", "pim" or "cpu".
        dtypes: tensor dtypes it computes in.
    """

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "cpu"
    dtypes: ClassVar[tuple[torch.dtype, ...]] = (torch.float32, torch.float64, torch.bfloat16, torch.float16)

    @classmethod
    def is_available(cls, raise_error: bool = False) -> bool:
        """Whether it can run on this machine; with raise_error, a BackendUnavailable naming the remedy."""
        return True

    def supports(self, layer: ExpertLayer) -> tuple[bool, str]:
        """Whether it can run `layer` (dtype, device, layout), with the reason when not."""
        if layer.dtype not in self.dtypes:
            return False, f"{self.name} computes in {[str(d) for d in self.dtypes]}, layer {layer.name} is {layer.dtype}"
        return True, ""

    @abstractmethod
    def run_experts(self, layer: ExpertLayer, hidden: torch.Tensor, top_k_weights: torch.Tensor,
                    work: WorkSlice) -> torch.Tensor:
        """Weighted outputs of the slice's pairs.

        Args:
            layer: the experts (weights and layout).
            hidden: [T, d] hidden states.
            top_k_weights: [T, k] routing weights.
            work: the pairs to run, expert-contiguous.
        Returns:
            [P, d] `expert(hidden[token]) * weight` per pair, in `work.pair_index` order, in the dtype
            of `hidden.dtype` promoted with `top_k_weights.dtype` (as transformers' implementations do).
        """

    def reported_times_s(self, work: WorkSlice) -> np.ndarray | None:
        """Measured seconds of each expert of `work` in its last run ([G], `work.experts` order), or None.

        A real PIM backend reports these and the runtime feeds them to the layer's learned cost table
        (`wrap(..., learn_pim_costs=True)`); emulated backends have nothing measured to report.
        """
        return None

    def estimate_time(self, cost, tokens: np.ndarray) -> float:
        """Predicted seconds for `tokens [E]` tokens per expert on this backend, from the cost model."""
        if self.kind == "pim":
            return float(cost.pim.times_s(tokens).sum())
        return float(cost.gpu.time_s(tokens))

    # shared by backends that compute one expert at a time
    def _run_per_expert(self, layer: ExpertLayer, hidden: torch.Tensor, top_k_weights: torch.Tensor,
                        work: WorkSlice, fn: Callable[[int, torch.Tensor], torch.Tensor]) -> torch.Tensor:
        out_dtype = torch.promote_types(hidden.dtype, top_k_weights.dtype)
        out = torch.empty(work.num_pairs, hidden.shape[-1], dtype=out_dtype, device=hidden.device)  # (P, d)
        tokens = work.token_index(hidden.device)
        weights = work.pair_weights(top_k_weights)
        for i, expert in enumerate(work.experts.tolist()):
            lo, hi = int(work.offsets[i]), int(work.offsets[i + 1])
            y = fn(expert, hidden[tokens[lo:hi]])  # (n, d)
            out[lo:hi] = y * weights[lo:hi, None]
        return out


@dataclass
class BackendEntry:
    """What the registry knows of one backend."""

    name: str
    origin: str
    target: str | None  # qualified class name, None when the probe said it cannot run here
    reason: str = ""
    factory: Callable[[], Backend] | None = None


class _CollectLogs(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def _entry_points():
    """The installed entry points of our group (a seam for tests)."""
    return metadata.entry_points(group=ENTRY_POINT_GROUP)


def _import_qualname(qualname: str):
    module, _, attr = qualname.rpartition(".")
    return getattr(importlib.import_module(module), attr)


class BackendRegistry:
    """name -> backend, from entry points (loaded once per process) and `register()` calls."""

    def __init__(self) -> None:
        self._entries: dict[str, BackendEntry] = {}
        self._instances: dict[str, Backend] = {}
        self._plugins_loaded = False

    # -- registration ------------------------------------------------------------------------------
    def register(self, name: str, factory: Callable[[], Backend] | type[Backend], origin: str = "registered in code") -> None:
        """Register (or replace) a backend; re-entrant."""
        self._entries[name] = BackendEntry(name=name, origin=origin, target=getattr(factory, "__qualname__", repr(factory)),
                                           factory=factory)
        self._instances.pop(name, None)

    def load_plugins(self, force: bool = False) -> None:
        """Load the `heteromoe.backends` entry points once per process (`force` reloads)."""
        if self._plugins_loaded and not force:
            return
        allowed = os.environ.get("HETEROMOE_BACKENDS")
        allowed_set = {a.strip() for a in allowed.split(",") if a.strip()} if allowed else None
        points = list(_entry_points())
        if allowed_set is not None:
            declared = {ep.name for ep in points} | set(self._entries)
            unknown = sorted(allowed_set - declared)
            if unknown:
                raise UnknownBackendError(
                    f"HETEROMOE_BACKENDS={allowed} names unknown backend(s) {', '.join(map(repr, unknown))}; known "
                    f"backends: {', '.join(sorted(declared))}")
        self._plugins_loaded = True
        for ep in points:
            if allowed_set is not None and ep.name not in allowed_set:
                logger.info("backend plugin %s skipped: not in HETEROMOE_BACKENDS=%s", ep.name, allowed)
                continue
            dist = getattr(ep, "dist", None)
            origin = f"entry point {ep.value}" + (f" ({dist.name} {dist.version})" if dist is not None else "")
            logger.info("backend plugin %s -> %s", ep.name, ep.value)
            collector = _CollectLogs()
            plugin_logger = logging.getLogger(ep.module)
            saved = plugin_logger.level, plugin_logger.propagate
            plugin_logger.setLevel(logging.DEBUG)  # catch the probe's reason, whatever the user's log level
            plugin_logger.propagate = False
            plugin_logger.addHandler(collector)
            try:
                target = ep.load()()
            except Exception as exc:
                logger.exception("backend plugin %s (%s) failed to load", ep.name, ep.value)
                self._entries[ep.name] = BackendEntry(ep.name, origin, None, reason=f"probe failed: {exc!r}")
                continue
            finally:
                plugin_logger.removeHandler(collector)
                plugin_logger.setLevel(saved[0])
                plugin_logger.propagate = saved[1]
                for message in collector.messages:
                    logger.info("backend plugin %s: %s", ep.name, message)
            reason = "; ".join(collector.messages) if target is None else ""
            self._entries[ep.name] = BackendEntry(ep.name, origin, target, reason=reason or
                                                  ("" if target else "probe returned None"))
            self._instances.pop(ep.name, None)

    # -- lookup --------------------------------------------------------------------------------------
    def names(self) -> list[str]:
        self.load_plugins()
        return sorted(self._entries)

    def entries(self) -> list[BackendEntry]:
        self.load_plugins()
        return [self._entries[n] for n in sorted(self._entries)]

    def backend_class(self, name: str):
        entry = self._entry(name)
        if entry.factory is not None:
            return entry.factory
        if entry.target is None:
            raise BackendUnavailable(f"backend {name!r} cannot run here: {entry.reason}; "
                                     f"available: {self.available_names(check=True)}")
        try:
            return _import_qualname(entry.target)
        except Exception as exc:  # noqa: BLE001 - the plug-in's own import (a missing dependency): name it
            reason = f"importing its class {entry.target} failed ({type(exc).__name__}: {exc})"
            entry.target, entry.reason = None, reason
            raise BackendUnavailable(f"backend {name!r} ({entry.origin}) cannot run here: {entry.reason}; "
                                     f"available: {self.available_names(check=True)}") from None

    def _entry(self, name: str) -> BackendEntry:
        self.load_plugins()
        if name not in self._entries:
            raise UnknownBackendError(
                f"unknown backend {name!r}; known backends: {', '.join(self.names())} "
                f"(install a plugin that declares it under the '{ENTRY_POINT_GROUP}' entry points)")
        return self._entries[name]

    def availability(self, name: str) -> tuple[bool, str]:
        """(available, reason) without raising."""
        try:
            cls = self.backend_class(name)
            if isinstance(cls, type) and issubclass(cls, Backend):
                cls.is_available(raise_error=True)
            return True, ""
        except Exception as exc:  # noqa: BLE001
            return False, str(exc)

    def available_names(self, check: bool = False) -> list[str]:
        """Backends whose probe found them runnable; with `check` (error messages), only those whose class
        also imports and says it is available (this imports each one's module)."""
        self.load_plugins()
        names = [n for n in sorted(self._entries) if self._entries[n].target is not None]
        return [n for n in names if self.availability(n)[0]] if check else names

    def get(self, name: str) -> Backend:
        """The backend instance; raises BackendUnavailable / UnknownBackendError naming the problem and the
        alternatives."""
        if name in self._instances:
            return self._instances[name]
        cls = self.backend_class(name)
        if isinstance(cls, type) and issubclass(cls, Backend):
            try:
                cls.is_available(raise_error=True)
            except BackendUnavailable as exc:
                others = [n for n in self.available_names(check=True) if n != name]
                raise BackendUnavailable(f"backend {name!r} was requested but cannot run: {exc}; alternatives: {others}") from None
        instance = cls()
        if not isinstance(instance, Backend):
            raise TypeError(f"backend {name!r} factory returned {type(instance).__name__}, not a heteromoe.device.Backend")
        self._instances[name] = instance
        return instance

    def default(self, side: str) -> Backend:
        """The first available backend of DEFAULT_PRIORITY[side]; logs the pick."""
        tried = []
        for name in DEFAULT_PRIORITY[side]:
            ok, reason = self.availability(name) if name in self.names() else (False, "not installed")
            if ok:
                logger.info("default %s backend: %s", side, name)
                return self.get(name)
            tried.append(f"{name}: {reason}")
        raise BackendUnavailable(f"no {side} backend can run here ({'; '.join(tried)})")

    def __contains__(self, name: str) -> bool:
        return name in self.names()


registry = BackendRegistry()


def get_backend(name: str) -> Backend:
    """Shortcut for `registry.get(name)`."""
    return registry.get(name)
