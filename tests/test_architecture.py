"""The layout rules of the package, checked on every test run (docs: README, "Where things are")."""

from __future__ import annotations

import ast

from tests.layers import REPO, lint_imports, package_modules

MAX_MODULE_LINES = 350
MAX_PLAIN_MODULES = 6


def test_import_linter_contract_holds():
    result = lint_imports()
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "BROKEN" not in result.stdout and "KEPT" in result.stdout


def private_imports(source: str):
    """`from sftmerge.x import _name` statements of one module's source."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("sftmerge"):
            found += [f"{node.module}.{a.name}" for a in node.names
                      if a.name.startswith("_") and not a.name.startswith("__")]
    return found


def test_private_import_check_sees_one():
    assert private_imports("from sftmerge.io.layout import _NUMBERED, RunLayout\n") == ["sftmerge.io.layout._NUMBERED"]


def test_no_private_name_imported_from_another_module():
    offences = {name: found for name, path in package_modules() if (found := private_imports(path.read_text()))}
    assert not offences, offences


def test_modules_stay_short():
    long = {name: n for name, path in package_modules()
            if (n := len(path.read_text().splitlines())) > MAX_MODULE_LINES}
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"


def test_package_root_holds_few_plain_modules():
    plain = sorted(p.name for p in (REPO / "sftmerge").glob("*.py") if p.name != "__init__.py")
    assert len(list(package_modules())) > 100  # the links to eval/, train/, plugins/ are followed
    assert len(plain) <= MAX_PLAIN_MODULES, plain
