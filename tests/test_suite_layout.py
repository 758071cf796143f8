"""The test suite's own layout: code shared between test modules lives in tests/helpers/ (or
as fixtures in conftest.py), so no module imports another test module or conftest."""

from __future__ import annotations

import ast
from pathlib import Path

TESTS = Path(__file__).resolve().parent


def imported_modules(source: str, package: str) -> set[str]:
    """Absolute names of the modules a file of `package` imports (relative ones resolved)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}".rstrip(".")
            names |= {base} | {f"{base}.{a.name}" for a in node.names}
    return names


def forbidden(name: str) -> bool:
    parts = name.split(".")
    return parts[0] == "tests" and len(parts) > 1 and (
        parts[1].startswith("test_") or parts[1] == "conftest")


def test_no_test_module_imports_another_or_conftest() -> None:
    offenders = {}
    for path in sorted(TESTS.rglob("*.py")):
        package = ".".join(path.relative_to(TESTS.parent).parent.parts)
        found = imported_modules(path.read_text(encoding="utf-8"), package)
        offenders[str(path.relative_to(TESTS))] = sorted(filter(forbidden, found))
    assert not {k: v for k, v in offenders.items() if v}, (
        "move shared code into tests/helpers/ (fixtures into tests/conftest.py)")


def test_the_check_sees_each_kind_of_import() -> None:
    """The scan catches `import tests.test_x`, `from tests.test_x import f`, `from tests import
    test_x`, `from ..test_x import f` (in tests.helpers) and conftest; helpers pass."""
    lines = {"import tests.test_charlm": True, "from tests.test_report import sweep": True,
             "from tests import test_report": True, "from tests.conftest import x": True,
             "from ..test_report import sweep": True, "from tests.helpers.photos import a": False,
             "from tests import helpers": False, "from . import photos": False}
    for line, bad in lines.items():
        assert any(map(forbidden, imported_modules(line, "tests.helpers"))) is bad, line
