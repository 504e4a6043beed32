"""The layout guard (DESIGN §1): `milter` is pymilter's C module, and the core stays pure.

A `milter/__init__.py` in the repo would shadow pymilter's extension whenever the repo root is on
sys.path, and `import Milter` would then die with `NameError: P_NR_CONN` (FIELD-NOTES).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import casethread

REPO = Path(__file__).resolve().parents[1]
CORE = REPO / "milter" / "casethread" / "core"
# Third-party names the core must never import (DESIGN §1); the stdlib check below is stricter.
FORBIDDEN = frozenset({"Milter", "milter", "lmdb", "yaml"})


def test_milter_is_pymilters_c_extension() -> None:
    import Milter
    import milter

    path = Path(milter.__file__ or "")
    assert path.suffix == ".so", path
    assert "site-packages" in path.parts, path
    assert callable(milter.setconn)
    assert "site-packages" in Path(Milter.__file__ or "").parts
    # Milter wraps this very module (a shadowing package kills `import Milter` instead).
    assert Milter.milter is milter


def test_repo_has_no_milter_package() -> None:
    assert (REPO / "milter" / "casethread" / "__init__.py").is_file()
    assert not (REPO / "milter" / "__init__.py").exists()
    assert not (REPO / "milter.py").exists()
    # The package under test is the repo's source, not a stale copy elsewhere.
    assert Path(casethread.__file__ or "").resolve().parent == REPO / "milter" / "casethread"


def _core_files() -> list[Path]:
    files = sorted(CORE.glob("*.py"))
    names = {f.name for f in files}
    # A vacuous walk (wrong directory) must not pass.
    assert {"__init__.py", "settings.py", "message.py", "edits.py"} <= names, names
    return files


def _imports(path: Path) -> list[tuple[int, str, int]]:
    """(line, module, relative level) for every import statement in the file."""
    found: list[tuple[int, str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            found.extend((node.lineno, alias.name, 0) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            found.append((node.lineno, node.module or "", node.level))
    return found


def test_core_sources_import_only_the_stdlib_and_the_core() -> None:
    allowed = set(sys.stdlib_module_names) | {"__future__"}
    problems = []
    for path in _core_files():
        for line, module, level in _imports(path):
            where = f"{path.relative_to(REPO)}:{line}"
            top = module.split(".")[0]
            if level == 0 and top in FORBIDDEN:
                problems.append(f"{where}: imports {module}")
            elif level == 0 and top not in allowed:
                problems.append(f"{where}: imports non-stdlib {module}")
            elif level > 1:
                # `from ..index import x` climbs out of the core.
                problems.append(f"{where}: relative import leaves the core ({'.' * level}{module})")
    assert problems == []


def test_importing_the_core_loads_no_third_party_module(tmp_path: Path) -> None:
    modules = [f"casethread.core.{p.stem}" for p in _core_files() if p.stem != "__init__"]
    script = (
        "import importlib, json, sys\n"
        f"for name in {modules!r}:\n"
        "    importlib.import_module(name)\n"
        f"bad = sorted(n for n in sys.modules if n.split('.')[0] in {sorted(FORBIDDEN)!r})\n"
        "print(json.dumps({'bad': bad, 'loaded': sorted(sys.modules)}))\n"
    )
    # -I: no cwd, PYTHONPATH or user site on sys.path; cwd elsewhere than the repo root.
    proc = subprocess.run(
        [sys.executable, "-I", "-c", script],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["bad"] == []
    assert set(modules) <= set(result["loaded"])
