"""Facade over the compiled fast path (`heteromoe._C`) and its fallbacks.

Priority: the C++ extension, then numba, then plain numpy. `HAS_EXT` says whether `_C` loaded and
`ext_load_error` keeps why not (xformers' `_cpp_lib.py` pattern). Set `HETEROMOE_DEBUG_EXT=1` to log
the full import error, or `HETEROMOE_FASTPATH=c|numba|python` to force one implementation.

This facade reads both settings once, at import, for the whole package: `FASTPATH` names the chosen
implementation, and the CPU kernels (`heteromoe.kernels.cpu_kernels`) follow it as the planners do, so
the two can never disagree; `DEBUG_EXT` is what `heteromoe.kernels` reads for `heteromoe._cuda` too.
"""
from __future__ import annotations

import logging
import os
from types import SimpleNamespace

from heteromoe import _fallback
from heteromoe.errors import UserError

logger = logging.getLogger(__name__)

__all__ = [
    "DEBUG_EXT",
    "FASTPATH",
    "FastPathError",
    "HAS_EXT",
    "IMPLEMENTATIONS",
    "counting_sort",
    "ext_load_error",
    "heteromoe_plan",
    "impl",
    "route_to_replicas",
    "sieve_plan",
]

#: HETEROMOE_DEBUG_EXT=1: log the extensions' full import errors (read once).
DEBUG_EXT = os.environ.get("HETEROMOE_DEBUG_EXT") == "1"

try:
    from heteromoe import _C  # type: ignore[attr-defined]

    HAS_EXT = True
    ext_load_error: str | None = None
    _c_impl = SimpleNamespace(name="c", counting_sort=_C.counting_sort, sieve_plan=_C.sieve_plan,
                              heteromoe_plan=_C.heteromoe_plan, route_to_replicas=_C.route_to_replicas)
except ImportError as exc:
    HAS_EXT = False
    ext_load_error = repr(exc)
    _c_impl = None
    if DEBUG_EXT:
        logger.warning("heteromoe._C failed to import: %s", ext_load_error)
    else:
        logger.info("heteromoe._C not available (set HETEROMOE_DEBUG_EXT=1 for details); using fallbacks")

#: Every implementation that can run here, by name, in priority order.
IMPLEMENTATIONS = {
    name: mod
    for name, mod in (("c", _c_impl), ("numba", _fallback.numba_impl), ("python", _fallback.python_impl))
    if mod is not None
}


class FastPathError(UserError, ImportError):
    """`HETEROMOE_FASTPATH` names an implementation that is unknown or cannot run here."""


def _choose():
    forced = os.environ.get("HETEROMOE_FASTPATH")
    if forced:
        if forced not in IMPLEMENTATIONS:
            known = ("c", "numba", "python")
            why = (f"not available here ({ext_load_error if forced == 'c' else 'numba is not installed'})"
                   if forced in known else "unknown")
            raise FastPathError(f"HETEROMOE_FASTPATH={forced!r} is {why}; set it to one of "
                                f"{', '.join(IMPLEMENTATIONS)} or unset it")
        return IMPLEMENTATIONS[forced]
    return next(iter(IMPLEMENTATIONS.values()))


impl = _choose()
#: The fast-path implementation of the planners and the CPU kernels ("c", "numba" or "python"), chosen once.
FASTPATH: str = impl.name
counting_sort = impl.counting_sort
sieve_plan = impl.sieve_plan
heteromoe_plan = impl.heteromoe_plan
route_to_replicas = impl.route_to_replicas
