"""Build step for the optional native kernels (``native/`` -> ``engine/kernels/_grove_native*.so``).

Everything else about the package lives in ``pyproject.toml``. The extension is a plain shared library with a C
ABI (no Python C API), loaded with ctypes by ``engine/kernels/native.py``. It is ``optional``: with no C compiler,
or any build error, ``pip install`` still succeeds and the numba kernels take over. It is compiled without
``-march=native``: the AVX-512 / AVX2 code carries per-function ``target`` attributes and is chosen at run time.
"""

from __future__ import annotations

import glob
import os

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

UNIX_FLAGS = ["-O3", "-std=c11", "-fvisibility=hidden", "-fno-strict-aliasing"]
MSVC_FLAGS = ["/O2"]


class OptionalBuildExt(build_ext):
    """Compile with flags for the compiler at hand; never fail the install (numba is the fallback)."""

    def build_extension(self, ext):
        flags = MSVC_FLAGS if self.compiler.compiler_type == "msvc" else UNIX_FLAGS
        ext.extra_compile_args = list(flags)
        try:
            super().build_extension(ext)
        except Exception as exc:  # noqa: BLE001 - any failure only means "no native kernels"
            self.warn(f"the native kernels were not built ({exc}); Grove will use its numba kernels")

    def get_export_symbols(self, ext):
        return []  # a ctypes library, not a Python module: there is no PyInit_ symbol to export


if os.environ.get("GROVE_NO_NATIVE"):
    ext_modules = []
else:
    ext_modules = [
        Extension(
            "engine.kernels._grove_native",
            sources=sorted(glob.glob(os.path.join("native", "src", "*.c"))),
            include_dirs=[os.path.join("native", "include")],
            depends=sorted(glob.glob(os.path.join("native", "src", "*.h")) + ["native/include/grove_kernels.h"]),
            libraries=[] if os.name == "nt" else ["m"],
            optional=True,
        )
    ]

setup(ext_modules=ext_modules, cmdclass={"build_ext": OptionalBuildExt})
