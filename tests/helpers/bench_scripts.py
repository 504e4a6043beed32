"""A script of bench/ loaded as a module for tests, as its own directory's modules see it."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "bench"


def load_bench_script(filename: str) -> ModuleType:
    """bench/`filename` under the name `bench_<stem>`; bench/ is on sys.path while it loads
    (the scripts import their siblings, `messages`, as a script run from there does)."""
    name = f"bench_{Path(filename).stem}"
    spec = importlib.util.spec_from_file_location(name, BENCH / filename)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up
    sys.path.insert(0, str(BENCH))
    try:
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(BENCH))
    return module
