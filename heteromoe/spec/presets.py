"""Preset registries: `heteromoe.systems.get("b200-hbm3e-pim")`, `heteromoe.models.get("qwen3-30b-a3b")`.

Presets are TOML files shipped in `spec/presets/<kind>/`; `get()` also accepts a path to a user's TOML
file (a string ending in `.toml` or holding a `/`, a `Path`, or an existing file's name), or an already-built
spec (returned as is).
"""
from __future__ import annotations

import os
import stat
from importlib import resources
from pathlib import Path
from typing import Generic, TypeVar

from heteromoe.errors import UserError
from heteromoe.spec.hardware import SystemSpec
from heteromoe.spec.model import MoEModelSpec

T = TypeVar("T")


class UnknownPresetError(UserError, KeyError):
    """An unknown preset name; the message lists the known ones (KeyError would quote it)."""

    def __str__(self) -> str:
        return str(self.args[0])


class PresetFileError(UserError, FileNotFoundError):
    """A spec path that does not exist or is not a file."""

    def __str__(self) -> str:
        return str(self.args[0])


__all__ = ["PresetFileError", "PresetRegistry", "UnknownPresetError", "models", "systems"]


def _looks_like_path(key: str) -> bool:
    return key.endswith(".toml") or "/" in key or (os.sep != "/" and os.sep in key)


class PresetRegistry(Generic[T]):
    """Name -> spec, loaded lazily from the package's TOML files.

    Parsed specs are cached: a shipped preset by its name (the package's files do not change while it runs),
    a user's file by its resolved path, modification time and size, so an edited file is parsed again and the
    caller never gets a stale spec. Equal inputs give the same spec object, which lets callers key their own
    caches (cost models) by the spec's identity.
    """

    def __init__(self, kind: str, spec_cls: type[T]) -> None:
        self.kind = kind
        self.spec_cls = spec_cls
        self._by_name: dict[str, T] = {}
        self._by_file: dict[tuple[str, int, int], T] = {}
        self._names: list[str] | None = None

    def _dir(self):
        return resources.files("heteromoe.spec") / "presets" / self.kind

    def names(self) -> list[str]:
        if self._names is None:
            self._names = sorted(p.name[:-5] for p in self._dir().iterdir() if p.name.endswith(".toml"))
        return list(self._names)

    def get(self, name_or_path: str | Path | T) -> T:
        """A preset by name, a spec from a TOML path, or the spec itself."""
        if isinstance(name_or_path, self.spec_cls):
            return name_or_path
        if isinstance(name_or_path, str):
            hit = self._by_name.get(name_or_path)
            if hit is not None:
                return hit
        elif not isinstance(name_or_path, Path):
            raise TypeError(f"expected a {self.kind[:-1]} preset name, a TOML path or a {self.spec_cls.__name__}, "
                            f"got {type(name_or_path).__name__}")
        key = str(name_or_path)
        if isinstance(name_or_path, Path) or _looks_like_path(key) or (key not in self.names() and Path(key).is_file()):
            return self._from_file(Path(key))
        if key not in self.names():
            raise UnknownPresetError(f"unknown {self.kind[:-1]} preset {key!r}; known presets: "
                                     f"{', '.join(self.names())} (or pass a path to a .toml file)")
        with resources.as_file(self._dir() / f"{key}.toml") as path:
            spec = self.spec_cls.from_toml(path)
        self._by_name[key] = spec
        return spec

    def _from_file(self, path: Path) -> T:
        try:
            st = path.stat()
        except OSError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode):
            what = "does not exist" if st is None else "is not a file"
            raise PresetFileError(f"{self.kind[:-1]} spec file {str(path)!r} {what}; pass an existing .toml file "
                                  f"or a preset name ({', '.join(self.names())})")
        key = (str(path.resolve()), st.st_mtime_ns, st.st_size)
        spec = self._by_file.get(key)
        if spec is None:
            spec = self.spec_cls.from_toml(path)
            self._by_file = {k: v for k, v in self._by_file.items() if k[0] != key[0]}  # drop the file's old versions
            self._by_file[key] = spec
        return spec

    def __contains__(self, name: str) -> bool:
        return name in self.names()


systems: PresetRegistry[SystemSpec] = PresetRegistry("systems", SystemSpec)
models: PresetRegistry[MoEModelSpec] = PresetRegistry("models", MoEModelSpec)
