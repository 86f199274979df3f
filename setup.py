"""Build heteromoe, with its optional C++ extension `heteromoe._C`.

The extension is a speed-up, never a requirement: when no compiler is available, or the build fails,
setup runs again without it (MarkupSafe's pattern) and `heteromoe` uses its numba / numpy fallbacks,
which give identical results. CUDA sources (`csrc/cuda/*.cu`) become a second, independent extension `heteromoe._cuda`, compiled by
nvcc when it is found (`HETEROMOE_NO_CUDA=1` skips it; `HETEROMOE_CUDA_ARCHS="80;90"` picks the targets). It
takes raw device pointers and a stream, so it needs no torch at build time; a failed CUDA build only drops
`_cuda` (the runtime then uses torch ops on the GPU), never the C++ extension.
"""
from __future__ import annotations

import glob
import os
import shutil
import subprocess
import sys
import sysconfig

from setuptools import Extension, find_packages, setup
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
        # CUDA first and on its own: a failed nvcc build drops only `_cuda` (removed from the list, so the
        # copy into the source tree of an editable install does not look for it)
        for ext in [e for e in self.extensions if isinstance(e, NvccExtension)]:
            inplace, self.inplace = self.inplace, 0  # into build_lib, as setuptools' run() builds the others
            try:
                self._build_cuda(ext)
            except Exception as exc:  # noqa: BLE001 - CUDA is optional on its own
                print(f"heteromoe: building the CUDA extension failed ({exc}); continuing without heteromoe._cuda",
                      file=sys.stderr)
                self.extensions.remove(ext)
            finally:
                self.inplace = inplace
        try:
            super().run()
        except Exception as exc:  # noqa: BLE001 - any failure means: no extension
            raise BuildFailed(str(exc)) from exc

    def build_extension(self, ext) -> None:
        if isinstance(ext, NvccExtension):
            return  # built by run()
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001
            raise BuildFailed(str(exc)) from exc

    def _build_cuda(self, ext: "NvccExtension") -> None:
        """One nvcc call: sources -> the extension's shared object (static cudart, pybind11 headers)."""
        import pybind11

        target = self.get_ext_fullpath(ext.name)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        archs = os.environ.get("HETEROMOE_CUDA_ARCHS", "80;90").split(";")
        gencode = []
        for arch in archs:
            gencode += ["-gencode", f"arch=compute_{arch},code=sm_{arch}"]
        gencode += ["-gencode", f"arch=compute_{archs[-1]},code=compute_{archs[-1]}"]  # PTX for newer GPUs
        cmd = [ext.nvcc, "-O3", "-std=c++17", "-shared", "-Xcompiler", "-fPIC", "-Xcompiler", "-fvisibility=hidden",
               *gencode, f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}",
               *ext.sources, "-o", target]
        print("heteromoe: " + " ".join(cmd), file=sys.stderr)
        subprocess.run(cmd, check=True)


class NvccExtension(Extension):
    """A pybind11 module compiled and linked by nvcc alone (see OptionalBuildExt._build_cuda)."""

    def __init__(self, name: str, sources: list[str], nvcc: str) -> None:
        super().__init__(name, sources)
        self.nvcc = nvcc


def find_nvcc() -> str | None:
    if os.environ.get("HETEROMOE_NO_CUDA") == "1":
        return None
    found = shutil.which("nvcc")
    if found is None and os.environ.get("CUDA_HOME"):
        candidate = os.path.join(os.environ["CUDA_HOME"], "bin", "nvcc")
        found = candidate if os.path.exists(candidate) else None
    return found


def extensions() -> list:
    if Pybind11Extension is None or os.environ.get("HETEROMOE_NO_EXT") == "1":
        return []
    sources = sorted(glob.glob("csrc/*.cpp"))
    exts = [
        Pybind11Extension(
            "heteromoe._C",
            sources,
            cxx_std=17,
            extra_compile_args=["-O3"],
        )
    ]
    nvcc = find_nvcc()
    cuda_sources = sorted(glob.glob("csrc/cuda/*.cu"))
    if nvcc and cuda_sources:
        exts.append(NvccExtension("heteromoe._cuda", cuda_sources, nvcc))
    else:
        print("heteromoe: no nvcc found; heteromoe._cuda is not built", file=sys.stderr)
    return exts


PACKAGES = find_packages(include=["heteromoe", "heteromoe.*"]) + ["heteromoe_backends"]
SETUP_KW = dict(
    packages=PACKAGES,
    package_dir={"heteromoe_backends": "backends"},
    package_data={"heteromoe": ["spec/presets/*/*.toml", "spec/presets/*/*.json"]},
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
