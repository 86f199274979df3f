"""The command line's argument checks and number formats: each bad value is one `ArgumentError` line naming the
option, raised before the command's slow work starts."""
from __future__ import annotations

import math
import os
from pathlib import Path

from heteromoe.errors import UserError

__all__ = ["ArgumentError", "check_gpus", "check_output", "check_policies", "format_seconds", "int_list",
           "policy_names", "spec_arg"]


class ArgumentError(UserError):
    """A bad command-line value; the message names the option."""


def format_seconds(seconds: float) -> str:
    """`seconds` with three significant digits in the unit that fits: 0.00213 -> '2.13 ms'."""
    if not math.isfinite(seconds):
        return f"{seconds} s"
    rounded = float(f"{seconds:.3g}")
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6), ("ns", 1e-9)):
        if abs(rounded) >= scale or unit == "ns":
            break
    value = rounded / scale
    decimals = 0 if value == 0 else max(0, 2 - math.floor(math.log10(abs(value)) + 1e-9))
    return f"{value:.{decimals}f} {unit}"


def int_list(text: str, name: str) -> list[int]:
    """'1,4,16' -> [1, 4, 16]; an empty entry, a non-integer or a value below 1 is an error naming it."""
    parts = [v.strip() for v in text.split(",")]
    if any(not v for v in parts):
        raise ArgumentError(f"{name} must be a comma-separated list of positive integers without empty entries, "
                            f"got {text!r}")
    try:
        values = [int(v) for v in parts]
    except ValueError:
        raise ArgumentError(f"{name} must be a comma-separated list of integers, got {text!r}") from None
    if min(values) < 1:
        raise ArgumentError(f"{name} must list positive integers, got {text!r}")
    return values


def check_output(path: str, option: str) -> Path:
    """An output file the command will write: its folder must exist and be writable, and it must not be a folder.

    Checked before the work, so a typo in a path does not cost a whole sweep."""
    out = Path(path)
    folder = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise ArgumentError(f"{option} {path!r} is a folder; give a file name")
    if not folder.is_dir():
        raise ArgumentError(f"{option} {path!r}: folder {str(folder)!r} does not exist; create it first")
    if not os.access(folder, os.W_OK) or (out.exists() and not os.access(out, os.W_OK)):
        raise ArgumentError(f"{option} {path!r} cannot be written (permission denied)")
    return out


def spec_arg(registry, value: str, option: str):
    """A model or system preset (or TOML path), the error naming the option."""
    try:
        return registry.get(value)
    except (KeyError, ValueError, OSError) as exc:
        raise ArgumentError(f"{option}: {exc.args[0] if exc.args else exc}") from None


def policy_names() -> list[str]:
    from heteromoe.sched.factory import POLICIES

    return list(POLICIES)


def check_policies(names: list[str], option: str) -> None:
    known = policy_names()
    unknown = [p for p in names if p not in known]
    if unknown:
        raise ArgumentError(f"{option}: unknown {unknown}; known: {', '.join(known)} (see `heteromoe policies`)")


def check_gpus(system, gpus: int) -> None:
    try:
        system.check_gpus(gpus)
    except ValueError as exc:
        raise ArgumentError(f"--gpus: {exc}") from None
