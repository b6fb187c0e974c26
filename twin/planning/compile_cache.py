"""Compiled CasADi functions, cached on disk under the hash of their content.

The real-time-iteration planner may compile its CasADi linearisation with the system C
compiler (`RTIPlanner(compile=True)`); the weights are constants inside the generated code,
so a new model gets new code, and a model already seen loads its library at once. Without a
compiler, or when compiling fails, CasADi's virtual machine runs the same function with the
same numbers.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import casadi as ca

CACHE_DIR_ENV = "TWIN_CASADI_CACHE"
COMPILE_FLAGS = ("-O2", "-shared", "-fPIC")
COMPILE_TIMEOUT_S = 120.0


def casadi_cache_dir() -> Path:
    """Where compiled planner code lives (`TWIN_CASADI_CACHE`, else the user's cache)."""
    configured = os.environ.get(CACHE_DIR_ENV)
    return Path(configured) if configured else Path.home() / ".cache" / "plant-twin" / "casadi"


def find_compiler() -> str | None:
    """The C compiler to use (`CC`, else gcc, else cc), or None when there is none."""
    for candidate in (os.environ.get("CC"), "gcc", "cc"):
        if candidate and shutil.which(candidate):
            return shutil.which(candidate)
    return None


def compiled_function(fn: ca.Function) -> tuple[ca.Function, bool]:
    """`fn` as compiled C, built once and cached on disk under the hash of its content (the
    weights are constants inside it, so a new model gets new code); `(fn, False)` when no
    compiler is present or compiling fails: CasADi's virtual machine gives the same numbers."""
    compiler = find_compiler()
    if compiler is None:
        return fn, False
    content = "\n".join([ca.__version__, " ".join(COMPILE_FLAGS), fn.serialize()])
    key = hashlib.sha256(content.encode()).hexdigest()[:32]
    library = casadi_cache_dir() / f"{fn.name()}_{key}.so"
    try:
        if not library.is_file():
            _compile(fn, compiler, library)
        return ca.external(fn.name(), str(library)), True
    except (OSError, RuntimeError, subprocess.SubprocessError):
        return fn, False


def _compile(fn: ca.Function, compiler: str, library: Path) -> None:
    library.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=library.parent) as build:
        source = f"{fn.name()}.c"
        generator = ca.CodeGenerator(source, {"with_header": False})
        generator.add(fn)
        generator.generate(build + os.sep)
        target = Path(build) / library.name
        subprocess.run(
            [compiler, *COMPILE_FLAGS, "-o", str(target), str(Path(build) / source)],
            check=True,
            capture_output=True,
            timeout=COMPILE_TIMEOUT_S,
        )
        os.replace(target, library)  # atomic: a concurrent builder never sees half a file
