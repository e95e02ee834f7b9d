"""Compile the engine's hot modules to C with mypyc: the same typed sources, run about twice as fast
(docs/performance.md has the figures).

    JOURNEY_NATIVE=0 python tools/build_native.py [DIR]      (`make native`; DIR defaults to <venv>/native)

Writes the extension modules into DIR and, last, a manifest naming the Python they were built for and
each compiled source's size and modification time. At import the package (journey_engine/native.py)
puts DIR first on its path only when that manifest still matches the sources, as Python's own `.pyc`
files are checked: an edited source never runs as a stale compiled copy, it runs as Python.
"""

from __future__ import annotations

import json
import os
import sys
from importlib.machinery import EXTENSION_SUFFIXES
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as a script from anywhere: the package is the one beside this file

from journey_engine import native  # noqa: E402

# what the event and timer paths run through; the rest (loading, validation, graphs) runs once
MODULES = ("batch", "clock", "codec", "engine/__init__", "engine/base", "engine/feedback", "engine/journeys",
           "engine/messages", "engine/plan", "engine/schedule", "engine/values", "engine/versions", "events", "facts",
           "memory", "metrics", "policies", "profile", "ruleanalysis", "rulecompile", "rules", "runtime", "segments",
           "selection", "stats", "trace")


def manifest() -> dict[str, object]:
    """What the package checks at import: the interpreter, the shared library, each compiled source's stamp."""
    return {"python": sys.implementation.cache_tag or "", "library": native.LIBRARY + EXTENSION_SUFFIXES[0],
            "sources": {m: native.stamp(native.PACKAGE / f"{m}.py") for m in MODULES}}


def build(root: Path) -> None:
    """Compile MODULES into `root`; the manifest is written last, so a failed build is never used."""
    from mypyc.build import mypycify
    from setuptools import Distribution

    root.mkdir(parents=True, exist_ok=True)
    target = root / native.MANIFEST
    target.unlink(missing_ok=True)
    stamped = manifest()  # before compiling: a source edited during the build does not match it
    cwd = os.getcwd()
    os.chdir(native.PACKAGE.parent)  # mypy reads pyproject.toml's settings from the project's root
    try:
        extensions = mypycify([f"journey_engine/{m}.py" for m in MODULES], group_name=native.GROUP,
                              target_dir=str(root / "build"))
        dist = Distribution({"name": "journey-native", "ext_modules": extensions})
        command = dist.get_command_obj("build_ext")
        command.build_lib = str(root)
        command.build_temp = str(root / "build")
        command.parallel = os.cpu_count() or 1
        dist.run_command("build_ext")
    finally:
        os.chdir(cwd)
    target.write_text(json.dumps(stamped))


if __name__ == "__main__":
    build(Path(sys.argv[1]) if len(sys.argv) > 1 else native.directory())
