"""Helpers shared by the spec dataclasses: TOML loading, strict construction, field checks."""
from __future__ import annotations

import dataclasses
import tomllib
from pathlib import Path


def load_toml(path) -> dict:
    path = Path(path)
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise FileNotFoundError(f"spec file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"spec file {path} is not valid TOML: {exc}") from None


def build_dataclass(cls, data: dict, where: str):
    """Build `cls(**data)`, naming unknown and missing keys instead of a bare TypeError."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ValueError(f"[{where}] unknown key(s) {unknown}; valid keys: {sorted(names)}")
    required = {f.name for f in dataclasses.fields(cls)
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}
    missing = sorted(required - set(data))
    if missing:
        raise ValueError(f"[{where}] missing required key(s) {missing}")
    return cls(**data)


def require_positive(obj, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise ValueError(f"{type(obj).__name__}.{name} must be a positive number, got {value!r}")


def require_in(obj, name: str, low: float, high: float) -> None:
    value = getattr(obj, name)
    if not low < value <= high:
        raise ValueError(f"{type(obj).__name__}.{name} must be in ({low}, {high}], got {value!r}")
