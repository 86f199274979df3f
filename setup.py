"""Build heteromoe, with its optional C++ extension `heteromoe._C`.

The extension is a speed-up, never a requirement: when no compiler is available, or the build fails,
setup runs again without it (MarkupSafe's pattern) and `heteromoe` uses its numba / numpy fallbacks,
which give identical results. CUDA sources (`csrc/*.cu`) are compiled only when nvcc is found, or
`HETEROMOE_FORCE_CUDA=1` is set; this release ships none yet (see the GPU-execution issue).
"""
from __future__ import annotations

import glob
import os
import shutil
import sys

from setuptools import find_packages, setup
from setuptools.command.build_ext import build_ext

try:
    from pybind11.setup_helpers import Pybind11Extension
except ImportError:  # pybind11 missing: build the pure-Python package only
    Pybind11Extension = None


class BuildFailed(Exception):
    """The optional extension could not be built."""


class OptionalBuildExt(build_ext):
    """build_ext that turns any compiler error into BuildFailed, so setup can retry without it."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any failure means: no extension
            raise BuildFailed(str(exc)) from exc

    def build_extension(self, ext) -> None:
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            raise BuildFailed(str(exc)) from exc


def cuda_available() -> bool:
    return bool(shutil.which("nvcc") or os.environ.get("CUDA_HOME")) or os.environ.get("HETEROMOE_FORCE_CUDA") == "1"


def extensions() -> list:
    if Pybind11Extension is None or os.environ.get("HETEROMOE_NO_EXT") == "1":
        return []
    sources = sorted(glob.glob("csrc/*.cpp"))
    if cuda_available() and sorted(glob.glob("csrc/*.cu")):
        print("heteromoe: nvcc found; CUDA sources are built by the GPU-execution issue's build step", file=sys.stderr)
    return [
        Pybind11Extension(
            "heteromoe._C",
            sources,
            cxx_std=17,
            extra_compile_args=["-O3"],
        )
    ]


PACKAGES = find_packages(include=["heteromoe", "heteromoe.*"]) + ["heteromoe_backends"]
SETUP_KW = dict(
    packages=PACKAGES,
    package_dir={"heteromoe_backends": "backends"},
    package_data={"heteromoe": ["spec/presets/*/*.toml"]},
    include_package_data=True,
)


def main() -> None:
    ext = extensions()
    try:
        setup(ext_modules=ext, cmdclass={"build_ext": OptionalBuildExt}, **SETUP_KW)
    except BuildFailed as exc:
        print(f"heteromoe: building the C++ extension failed ({exc}); installing without it "
              "(numba/numpy fallbacks are used; set HETEROMOE_DEBUG_EXT=1 at import to see why)", file=sys.stderr)
        setup(ext_modules=[], **SETUP_KW)


main()
