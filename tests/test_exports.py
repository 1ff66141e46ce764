"""Each package's ``__init__`` is its contract: no module reaches into another package's
private (``_name``) modules or names.

As Trio's own ``test_exports`` does, the rule is checked on the source: every module under
``src/guardrefresh`` is parsed with :mod:`ast`, and every import in it (top level, in
functions, under ``TYPE_CHECKING``; relative or absolute) is resolved to the module it
names. A ``_private`` module or name may be imported only from inside the package that
holds it (``guardrefresh.server._host`` by the other modules of ``guardrefresh.server``);
everyone else imports what the package exports.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import guardrefresh

PACKAGE_ROOT = Path(guardrefresh.__file__).parent
ROOT_NAME = "guardrefresh"


def module_name(path: Path, root: Path = PACKAGE_ROOT, root_name: str = ROOT_NAME) -> str:
    """``guardrefresh.server._host`` for ``.../guardrefresh/server/_host.py``;
    a package's ``__init__.py`` is the package itself."""
    parts = [root_name, *path.relative_to(root).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


def _imported(tree: ast.AST, module: str, is_package: bool) -> Iterator[tuple[int, str]]:
    """(line, dotted name) of everything a module imports: modules, and for
    ``from X import y`` also ``X.y`` (a submodule or a name of X)."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                if node.level > 1:
                    base_parts = base_parts[: -(node.level - 1)]
                base = ".".join(base_parts)
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            yield node.lineno, source
            for alias in node.names:
                if alias.name != "*":
                    yield node.lineno, f"{source}.{alias.name}"


def private_imports(source: str, module: str, *, is_package: bool = False) -> list[str]:
    """The imports in ``source`` (the text of ``module``) that break the rule, as
    ``"line N: dotted.name"``."""
    tree = ast.parse(source)
    importer_package = module if is_package else module.rpartition(".")[0]
    problems: list[str] = []
    for line, name in _imported(tree, module, is_package):
        parts = name.split(".")
        if parts[0] != ROOT_NAME:
            continue  # third-party internals are server/_dependency_internals.py's business
        for i, part in enumerate(parts):
            if not _is_private(part):
                continue
            private = ".".join(parts[: i + 1])
            owner = ".".join(parts[:i])
            inside = module == private or module.startswith(private + ".")
            problem = f"line {line}: {private}"
            if importer_package != owner and not inside and problem not in problems:
                problems.append(problem)
            break
    return problems


def _modules() -> list[Path]:
    return sorted(PACKAGE_ROOT.rglob("*.py"))


def test_there_are_modules_to_check() -> None:
    names = {module_name(path) for path in _modules()}
    assert {"guardrefresh.app._service", "guardrefresh.server", "guardrefresh.cli._warm"} <= names


@pytest.mark.parametrize("path", _modules(), ids=lambda p: module_name(p))
def test_no_module_imports_another_packages_private_module(path: Path) -> None:
    problems = private_imports(
        path.read_text(encoding="utf-8"), module_name(path), is_package=path.name == "__init__.py"
    )
    assert not problems, (
        f"{module_name(path)} imports private parts of other packages; export them from "
        f"that package's __init__ and import them from there: {problems}"
    )


# The checker itself: it must see every form of import, and allow what is allowed.


@pytest.mark.parametrize(
    "source",
    [
        "from ..server._auth import AdminAuth",
        "from guardrefresh.server._auth import AdminAuth",
        "import guardrefresh.server._auth",
        "import guardrefresh.server._auth as auth",
        "from ..server import _auth",
        "from .. import _version",
        "from .._version import __version__",
        "def f():\n    from ..model._json import rule_json_text\n",
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from ..storage._segment import Segment\n",
        "from ..storage._segment import FORMAT_VERSION",
    ],
)
def test_the_checker_sees_a_private_import_in_any_form(source: str) -> None:
    assert private_imports(source, "guardrefresh.app._service")


@pytest.mark.parametrize(
    "source",
    [
        "from ._limits import raise_fd_limit",  # the package's own private module
        "from . import _trim",
        "import guardrefresh.app._trim",
        "from ..server import AdminAuth, GrpcHost",
        "from .. import __version__",
        "from guardrefresh.proto import rule_installation",
        "import asyncio\nfrom h2.connection import H2Connection",  # not ours
    ],
)
def test_the_checker_allows_the_package_contract_and_its_own_modules(source: str) -> None:
    assert private_imports(source, "guardrefresh.app._service") == []


def test_a_package_init_may_import_its_own_private_modules() -> None:
    source = "from ._host import GrpcHost\nfrom ..refresh._stats import RefreshStats\n"
    assert private_imports(source, "guardrefresh.server", is_package=True) == [
        "line 2: guardrefresh.refresh._stats"
    ]


def test_module_names_follow_the_package_layout(tmp_path: Path) -> None:
    root = tmp_path / "pkg"
    assert module_name(root / "a" / "_b.py", root, "pkg") == "pkg.a._b"
    assert module_name(root / "a" / "__init__.py", root, "pkg") == "pkg.a"
