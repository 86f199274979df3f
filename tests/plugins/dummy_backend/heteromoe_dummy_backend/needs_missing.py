"""A backend module whose dependency is not installed: importing it fails."""
from __future__ import annotations

import heteromoe_dependency_not_installed  # noqa: F401

from heteromoe.device import Backend


class MissingDependencyBackend(Backend):
    name = "dummy-import-broken"
    kind = "pim"

    def run_experts(self, layer, hidden, top_k_weights, work):
        raise NotImplementedError
