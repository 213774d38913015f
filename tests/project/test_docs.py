"""The README and docs/ say what the code does: their commands, snippets and
option lists are checked against the package itself."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from posthog_identity import ConfigurationError
from tests.helpers.project import ROOT

README = (ROOT / "README.md").read_text(encoding="utf-8")
CLI_MD = (ROOT / "docs" / "cli.md").read_text(encoding="utf-8")


def code_blocks(text: str, language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", text, flags=re.DOTALL)


def test_no_source_or_doc_cites_a_design_file_the_repository_lacks() -> None:
    assert not (ROOT / "DESIGN.md").exists()
    citing = [
        str(path.relative_to(ROOT))
        for folder in ("src", "docs", "examples")
        for path in sorted((ROOT / folder).rglob("*"))
        if path.suffix in (".py", ".md") and "DESIGN.md" in path.read_text(encoding="utf-8")
    ]
    assert citing == []
    assert "DESIGN.md" not in README


def test_the_readme_shows_the_clone_free_demo_and_keeps_both_nox_commands() -> None:
    consoles = [block.strip() for block in code_blocks(README, "console")]

    assert "python3 -m pip install posthog-identity\nposthog-identity demo" in consoles
    assert "python3 -m pip install nox && nox -s demo" in consoles
    assert "python3 -m pip install nox && nox" in consoles


def test_the_readme_fastapi_snippet_refuses_a_bad_configuration_at_import(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("POSTHOG_IDENTITY_SECRET", raising=False)
    [snippet] = [block for block in code_blocks(README, "python") if "FastAPI()" in block]

    with pytest.raises(ConfigurationError, match="POSTHOG_IDENTITY_SECRET"):
        exec(compile(snippet, "README.md", "exec"), {})


def help_text(*command: str) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "posthog_identity", *command, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return done.stdout


@pytest.mark.parametrize("command", [(), ("demo",), ("sink",), ("check",)], ids=repr)
def test_cli_md_documents_every_option_of_every_command(command: tuple[str, ...]) -> None:
    options = set(re.findall(r"(?<![\w-])--[a-z][a-z-]*", help_text(*command))) - {"--help"}

    def documented(option: str) -> bool:
        return re.search(rf"(?<![\w-]){re.escape(option)}(?![\w-])", CLI_MD) is not None

    assert sorted(option for option in options if not documented(option)) == []


def test_cli_md_lists_every_exit_code_the_help_lists() -> None:
    codes = re.findall(r"^  (\d)  ", help_text(), flags=re.MULTILINE)

    assert codes
    assert [code for code in codes if f"\n| {code} |" not in CLI_MD] == []


def test_every_test_the_docs_cite_exists_where_they_say() -> None:
    cited = {
        (path, name)
        for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
        for path, name in re.findall(r"(tests/[\w/]+\.py)::(\w+)", page.read_text(encoding="utf-8"))
    }
    missing = [
        f"{path}::{name}"
        for path, name in sorted(cited)
        if not (ROOT / path).exists()
        or not re.search(
            rf"^(?:async )?def {name}\(", (ROOT / path).read_text(encoding="utf-8"), re.M
        )
    ]

    assert cited
    assert missing == []


@pytest.mark.parametrize("example", ["test_flask_analytics.py", "test_fastapi_analytics.py"])
def test_testing_md_shows_each_example_module_inline_as_it_runs_in_ci(example: str) -> None:
    # Inline, not an include: GitHub shows the raw markdown, where an include is one line.
    testing_md = (ROOT / "docs" / "testing.md").read_text(encoding="utf-8")
    source = (ROOT / "examples" / "testing" / example).read_text(encoding="utf-8")
    assert f"examples/testing/{example}" in testing_md
    assert source in code_blocks(testing_md, "python")
    assert "--8<--" not in testing_md
