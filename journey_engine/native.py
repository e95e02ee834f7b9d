"""Loads the engine's hot modules compiled with mypyc (tools/build_native.py, `make native`), when they
were built from these very sources for this interpreter; otherwise the package runs as Python.

`use()`, called first thing when the package is imported, reads the build's manifest and compares each
compiled source's size and modification time with the file's (as Python checks its own `.pyc`): no
source is read or hashed. When they match, it loads the build's shared library and puts the build's
folder first on the package's path; `sys.path` is left alone. `JOURNEY_NATIVE=0` forces Python;
`JOURNEY_NATIVE_DIR` points elsewhere than `<sys.prefix>/native`. This module itself is never compiled.
"""

from __future__ import annotations

import json
import os
import sys
from importlib.util import module_from_spec, spec_from_file_location
from pathlib import Path
from typing import Any

GROUP = "journey_native"  # the shared library mypyc builds beside the package: journey_native__mypyc
LIBRARY = GROUP + "__mypyc"
PACKAGE = Path(__file__).resolve().parent
MANIFEST = "manifest.json"


def directory() -> Path:
    return Path(os.environ.get("JOURNEY_NATIVE_DIR") or Path(sys.prefix, "native"))


def stamp(source: Path | str) -> list[int]:
    """What identifies a source file without reading it: its size and modification time."""
    status = os.stat(source)
    return [status.st_size, status.st_mtime_ns]


def matches(built: Any) -> bool:
    """Whether a build's manifest is of these sources, unchanged, and of the running interpreter."""
    if not isinstance(built, dict) or built.get("python") != sys.implementation.cache_tag:
        return False
    sources = built.get("sources")
    folder = str(PACKAGE)
    return isinstance(sources, dict) and bool(sources) and all(
        stamp(f"{folder}/{module}.py") == expected for module, expected in sources.items())


def use(package_path: list[str]) -> bool:
    """Put the compiled modules first on `package_path` when they match the sources; True if they do."""
    if os.environ.get("JOURNEY_NATIVE", "1") == "0":
        return False
    root = directory()
    try:
        built = json.loads((root / MANIFEST).read_text())
        if not matches(built):
            return False
    except (OSError, ValueError):
        return False
    if LIBRARY not in sys.modules:  # the compiled modules import it by its top-level name
        spec = spec_from_file_location(LIBRARY, root / built["library"])
        if spec is None or spec.loader is None:
            return False
        library = module_from_spec(spec)
        spec.loader.exec_module(library)
        sys.modules[LIBRARY] = library
    package_path.insert(0, str(root / "journey_engine"))
    return True


def fields(kind: Any) -> tuple[str, ...]:
    """The attribute names of a plain-data class or its instance (`__slots__` in Python, compiled: the
    names mypyc keeps in `__mypyc_attrs__`)."""
    names: Any = getattr(kind, "__mypyc_attrs__", None) or getattr(kind, "__slots__", ())
    return tuple(names)


def active() -> bool:
    """Whether the engine running now is the compiled one."""
    from . import engine

    return not engine.__file__.endswith(".py") if engine.__file__ else False
