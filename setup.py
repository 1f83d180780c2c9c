"""Build the optional C accelerators in ``shmserve/_native/``.

Each ``shmserve/_native/<name>.c`` becomes the extension module
``shmserve._native._<name>``. Every one is optional: when a compiler is missing
or a build fails, the install goes on and `shmserve._native.load` gives the
pure-Python code path instead (``SHMSERVE_PURE_PYTHON=1`` forces that path).
Project metadata lives in pyproject.toml; this file only lists the extensions.
"""
from pathlib import Path

from setuptools import Extension, setup

_NATIVE = Path("shmserve") / "_native"
_HEADERS = [str(header) for header in sorted(_NATIVE.glob("*.h"))]

setup(
    ext_modules=[
        Extension(
            f"shmserve._native._{source.stem}",
            [str(source)],
            depends=_HEADERS,  # an edited header rebuilds the extensions that include it
            extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra", "-Werror=implicit-function-declaration"],
            optional=True,
        )
        for source in sorted(_NATIVE.glob("*.c"))
    ],
)
