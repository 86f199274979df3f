"""Shared fixtures: every fast-path test runs over each implementation (C++, numba, numpy)."""
from __future__ import annotations

import pytest

from heteromoe import _ext

ALL_FASTPATHS = ["c", "numba", "python"]


@pytest.fixture(params=ALL_FASTPATHS)
def fastpath(request):
    """One implementation of the fast path; skipped with the reason where it is not built here."""
    if request.param not in _ext.IMPLEMENTATIONS:
        reason = _ext.ext_load_error if request.param == "c" else "numba failed to import"
        pytest.skip(f"fast path {request.param!r} unavailable: {reason}")
    return _ext.IMPLEMENTATIONS[request.param]
