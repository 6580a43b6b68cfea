"""The packages of webhook/ import one way: each only from the packages its docstring allows.

Every package's `__init__.py` docstring ends with a line "May use: webhook.a, webhook.b"
(or "May use: nothing else in webhook."). This test reads those lines, checks that they
order the packages (no two may use each other, directly or through others), and that no
module reaches outside them: imports (inside functions and relative ones too), dotted
names through the `webhook` package, and module paths in strings (importlib, gunicorn's
`python:` settings). The checker is also run on a copy of the tree with each of those
pointing the wrong way, to show that it catches them.
"""

import ast
import re
import shutil
import tomllib
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent / "webhook"
# What the two modules at the top of the tree may import: the CLI for `python -m webhook`,
# the core for the JSON decoding the root package installs in psycopg.
ROOT_MODULES = {"__main__.py": {"cli"}, "__init__.py": {"core"}}
# A module path in a string, such as "webhook.web.app:create_app()".
_PATH_IN_TEXT = re.compile(r"(?<![\w.])webhook\.(\w+)")


def allowed_imports(root: Path) -> dict[str, set[str]]:
    """Each package's "May use:" list, read from its docstring."""
    allowed: dict[str, set[str]] = {}
    for init in sorted(root.glob("*/__init__.py")):
        docstring = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))) or ""
        _, found, rest = docstring.partition("May use:")
        assert found, (
            f"{init.relative_to(root.parent)}: the docstring says nothing of what it may use"
        )
        listed = rest.split("\n\n")[0].replace("\n", " ")
        names = {word.strip(" .,") for word in listed.split()}
        allowed[init.parent.name] = {
            name.removeprefix("webhook.") for name in names if name.startswith("webhook.")
        }
    return allowed


def imported_packages(module: Path, root: Path, packages: set[str]) -> list[tuple[int, str]]:
    """(line, package) for every part of webhook that `module` reaches: by import, by a
    dotted name through `webhook`, or by a module path in a string (docstrings aside)."""
    package_parts = module.relative_to(root.parent).with_suffix("").parts[:-1]
    tree = ast.parse(module.read_text(encoding="utf-8"))
    docstrings = {id(node.value) for node in ast.walk(tree) if isinstance(node, ast.Expr)}
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package_parts[: len(package_parts) - node.level + 1]
                base = ".".join((*anchor, base) if base else anchor)
            targets = (
                [f"{base}.{alias.name}" for alias in node.names] if base == "webhook" else [base]
            )
        elif isinstance(node, ast.Attribute) and ast.unparse(node.value) == "webhook":
            targets = [f"webhook.{node.attr}"]
        elif (
            isinstance(node, ast.Constant)
            and isinstance(node.value, str)
            and id(node) not in docstrings
        ):
            targets = [f"webhook.{m[1]}" for m in _PATH_IN_TEXT.finditer(node.value)]
        for target in targets:
            parts = target.split(".")
            if parts[0] == "webhook" and len(parts) > 1 and parts[1] in packages:
                found.append((node.lineno, parts[1]))
    return found


def violations(root: Path) -> list[str]:
    """Every import that points where its package may not look, and every module that
    lives outside the packages."""
    allowed = allowed_imports(root)
    wrong: list[str] = []
    for module in sorted(root.rglob("*.py")):
        relative = module.relative_to(root)
        if len(relative.parts) == 1:
            if relative.name not in ROOT_MODULES:
                wrong.append(f"{relative}: a module outside the packages")
                continue
            package, may_use = None, ROOT_MODULES[relative.name]
        else:
            package = relative.parts[0]
            may_use = allowed.get(package, set())
        for line, target in imported_packages(module, root, set(allowed)):
            if target != package and target not in may_use:
                wrong.append(f"webhook/{relative}:{line} imports webhook.{target}")
    return wrong


def test_the_packages_form_an_order() -> None:
    allowed = allowed_imports(ROOT)
    assert set(allowed) == {
        "cli", "web", "sync", "pipeline", "rules", "stripe", "database", "core", "fixtures",
    }  # fmt: skip
    unknown = {f"{p} -> {u}" for p, uses in allowed.items() for u in uses if u not in allowed}
    assert not unknown
    try:
        order = list(TopologicalSorter(allowed).static_order())
    except CycleError as exc:
        pytest.fail(f"two packages may use each other: {exc.args[1]}")
    assert order.index("core") < order.index("pipeline") < order.index("web")
    assert [p for p, uses in allowed.items() if "fixtures" in uses] == ["cli"]


def test_every_import_points_down() -> None:
    assert violations(ROOT) == []


def test_an_import_pointing_up_is_caught(tmp_path: Path) -> None:
    """The checker on a copy of the tree: an upward import inside a function (where it is
    easiest to miss), an upward relative import, a dotted name and an importlib string
    reaching up, and one module outside the packages."""
    copy = tmp_path / "webhook"
    shutil.copytree(ROOT, copy, ignore=shutil.ignore_patterns("__pycache__"))
    entitlement = copy / "rules" / "entitlement.py"
    entitlement.write_text(
        entitlement.read_text() + "\n\ndef _upward():\n    from webhook.pipeline import drain\n"
    )
    (copy / "loose.py").write_text("from webhook.core import errors\n")
    relative_upward = copy / "stripe" / "payloads.py"
    relative_upward.write_text(relative_upward.read_text() + "\nfrom ..web import metrics\n")
    ordering = copy / "rules" / "ordering.py"
    ordering.write_text(
        ordering.read_text()
        + "\n\nimport importlib\nimport webhook\n\n"
        + "def _late():\n    importlib.import_module('webhook.sync.runs')\n"
        + "    return webhook.cli\n"
    )

    found = violations(copy)

    assert len(found) == 5, found
    assert any(
        f.startswith("webhook/rules/entitlement.py:") and "webhook.pipeline" in f for f in found
    )
    assert any(f.startswith("webhook/stripe/payloads.py:") and "webhook.web" in f for f in found)
    assert "loose.py: a module outside the packages" in found
    assert any(f.startswith("webhook/rules/ordering.py:") and "webhook.sync" in f for f in found)
    assert any(f.startswith("webhook/rules/ordering.py:") and "webhook.cli" in f for f in found)


def test_the_wheel_carries_every_package_and_the_schema() -> None:
    """pyproject lists the packages (find cannot add webhook.schema): every package of the
    tree, and webhook.schema, mapped onto the repository's schema/ with its SQL files, so
    that an installed copy has the migrations `migrate` applies."""
    config = tomllib.loads((ROOT.parent / "pyproject.toml").read_text(encoding="utf-8"))
    setuptools = config["tool"]["setuptools"]
    in_tree = {
        ".".join(init.parent.relative_to(ROOT.parent).parts) for init in ROOT.rglob("__init__.py")
    }
    assert set(setuptools["packages"]) == {*in_tree, "webhook.schema"}
    assert setuptools["package-dir"] == {"webhook.schema": "schema"}
    assert setuptools["package-data"]["webhook.schema"] == ["*.sql"]
    assert list((ROOT.parent / "schema").glob("*.sql"))
    assert not list((ROOT.parent / "schema").glob("*.py"))  # data only: no module to import
