"""The tests mirror the code: each source module has its unit test module, or says where
it is tested; no test module imports another; every helper says what it is for."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.helpers.project import ROOT

PACKAGE = ROOT / "src" / "posthog_identity"
TESTS = ROOT / "tests"
UNIT = TESTS / "unit"
#: The folders of what crosses modules, beside `unit/` (one mirror of the package).
FOLDERS = {"unit", "scenarios", "servers", "browser", "robustness", "project", "helpers", "sites"}

#: Source modules with no unit module of their own, and the test module that
#: specifies them instead: adapter parts and flag reads that only make sense
#: through an adapter, entry points, re-exports.
TESTED_THROUGH = {
    "__init__.py": "tests/unit/test_lazy.py",
    "__main__.py": "tests/unit/test_cli.py",
    "asgi_proxy.py": "tests/scenarios/test_proxy.py",
    "asgi_scope.py": "tests/unit/test_asgi.py",
    "asgi_send.py": "tests/unit/test_asgi.py",
    "demo.py": "tests/servers/test_demo.py",
    "flags.py": "tests/scenarios/test_flags.py",
    "parsers.py": "tests/unit/test_settings.py",
    "proxy_replies.py": "tests/unit/test_proxy.py",
    "wsgi_body.py": "tests/unit/test_wsgi.py",
    "wsgi_proxy.py": "tests/scenarios/test_proxy.py",
    "integrations/__init__.py": "tests/unit/integrations/test_flask.py",
    "integrations/fastapi.py": "tests/unit/integrations/test_starlette.py",
    "testing/__init__.py": "tests/unit/testing/test_plugin.py",
    "testing/fixture.py": "tests/unit/testing/test_plugin.py",
}


def source_modules() -> list[str]:
    return sorted(str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py"))


def unit_module(source: str) -> Path:
    path = Path(source)
    return UNIT / path.parent / f"test_{path.name}"


def test_every_source_module_has_its_unit_module_or_names_where_it_is_tested() -> None:
    untested = [
        source
        for source in source_modules()
        if not unit_module(source).exists() and source not in TESTED_THROUGH
    ]

    assert untested == []


def test_every_module_named_as_testing_another_exists_and_the_list_has_no_stale_entry() -> None:
    modules = source_modules()

    assert [source for source in TESTED_THROUGH if source not in modules] == []
    assert [source for source in TESTED_THROUGH if unit_module(source).exists()] == []
    assert [test for test in TESTED_THROUGH.values() if not (ROOT / test).exists()] == []


def test_every_unit_module_mirrors_a_source_module() -> None:
    modules = set(source_modules())
    orphans = [
        str(path.relative_to(UNIT))
        for path in UNIT.rglob("test_*.py")
        if str(path.relative_to(UNIT).with_name(path.name[len("test_") :])) not in modules
    ]

    assert orphans == []


def test_tests_live_in_the_folders_of_their_kind() -> None:
    top = {path.name for path in TESTS.iterdir() if not path.name.startswith((".", "__"))}

    assert top - {"conftest.py"} == FOLDERS


def test_no_test_module_imports_another() -> None:
    importing = [
        f"{path.relative_to(ROOT)} imports {node.module}"
        for path in TESTS.rglob("*.py")
        if "node_modules" not in path.parts
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom)
        and node.module is not None
        and node.module.startswith("tests.")
        and (node.module.rsplit(".", 1)[-1].startswith("test_") or node.module.endswith("conftest"))
    ]

    assert importing == []


def test_every_helper_and_site_says_at_its_top_what_it_is_for() -> None:
    undocumented = [
        str(path.relative_to(ROOT))
        for folder in ("helpers", "sites")
        for path in sorted((TESTS / folder).glob("*.py"))
        if not ast.get_docstring(ast.parse(path.read_text(encoding="utf-8")))
    ]

    assert undocumented == []


def test_the_helpers_index_lists_every_helper_module() -> None:
    index = ast.get_docstring(ast.parse((TESTS / "helpers" / "__init__.py").read_text("utf-8")))
    modules = sorted(path.stem for path in (TESTS / "helpers").glob("*.py"))

    assert index is not None
    assert [name for name in modules if name != "__init__" and f"`{name}`" not in index] == []
