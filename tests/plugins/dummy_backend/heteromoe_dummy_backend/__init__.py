"""A third-party heteromoe backend: exact expert outputs, counting the pairs it ran."""
from __future__ import annotations

from heteromoe.device import Backend
from heteromoe.runtime.layer import expert_forward


def probe() -> str | None:
    return "heteromoe_dummy_backend.DummyBackend"


def broken_probe() -> str | None:
    raise RuntimeError("this plugin is broken on purpose")


def absent_probe() -> str | None:
    import logging

    logging.getLogger(__name__).info("dummy-absent: needs hardware this machine lacks; remedy: none")
    return None


class DummyBackend(Backend):
    name = "dummy"
    kind = "pim"
    pairs_run = 0

    def run_experts(self, layer, hidden, top_k_weights, work):
        type(self).pairs_run += work.num_pairs
        return self._run_per_expert(layer, hidden, top_k_weights, work, lambda e, x: expert_forward(layer, e, x))


def import_broken_probe() -> str | None:
    """The probe loads, the backend's class does not: its module needs a package that is not installed."""
    return "heteromoe_dummy_backend.needs_missing.MissingDependencyBackend"
