"""Preset registries: `heteromoe.systems.get("b200-hbm3e-pim")`, `heteromoe.models.get("qwen3-30b-a3b")`.

Presets are TOML files shipped in `spec/presets/<kind>/`; `get()` also accepts a path to a user's TOML
file, or an already-built spec (returned as is).
"""
from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Generic, TypeVar

from heteromoe.spec.hardware import SystemSpec
from heteromoe.spec.model import MoEModelSpec

T = TypeVar("T")


class UnknownPresetError(KeyError):
    """An unknown preset name; the message lists the known ones (KeyError would quote it)."""

    def __str__(self) -> str:
        return str(self.args[0])

__all__ = ["PresetRegistry", "UnknownPresetError", "models", "systems"]


class PresetRegistry(Generic[T]):
    """Name -> spec, loaded lazily from the package's TOML files."""

    def __init__(self, kind: str, spec_cls: type[T]) -> None:
        self.kind = kind
        self.spec_cls = spec_cls
        self._cache: dict[str, T] = {}

    def _dir(self):
        return resources.files("heteromoe.spec") / "presets" / self.kind

    def names(self) -> list[str]:
        return sorted(p.name[:-5] for p in self._dir().iterdir() if p.name.endswith(".toml"))

    def get(self, name_or_path: str | Path | T) -> T:
        """A preset by name, a spec from a TOML path, or the spec itself."""
        if isinstance(name_or_path, self.spec_cls):
            return name_or_path
        if not isinstance(name_or_path, (str, Path)):
            raise TypeError(f"expected a {self.kind[:-1]} preset name, a TOML path or a {self.spec_cls.__name__}, "
                            f"got {type(name_or_path).__name__}")
        key = str(name_or_path)
        if key in self._cache:
            return self._cache[key]
        if key.endswith(".toml") or Path(key).is_file():
            spec = self.spec_cls.from_toml(key)
        else:
            res = self._dir() / f"{key}.toml"
            if not res.is_file():
                raise UnknownPresetError(f"unknown {self.kind[:-1]} preset {key!r}; known presets: {', '.join(self.names())} "
                               f"(or pass a path to a .toml file)")
            with resources.as_file(res) as path:
                spec = self.spec_cls.from_toml(path)
        self._cache[key] = spec
        return spec

    def __contains__(self, name: str) -> bool:
        return name in self.names()


systems: PresetRegistry[SystemSpec] = PresetRegistry("systems", SystemSpec)
models: PresetRegistry[MoEModelSpec] = PresetRegistry("models", MoEModelSpec)
