"""What a release is made of: one version, the licence, the changelog, the project's
metadata, and the workflow that publishes what `nox -s package` checked."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import posthog_identity
from tests.helpers.project import ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # Python 3.10: tomli, which coverage[toml] installs
    import tomli as tomllib

PYPROJECT: dict[str, Any] = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]
CHANGELOG = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
WORKFLOW = (ROOT / ".github" / "workflows" / "release.yml").read_text(encoding="utf-8")
VERSION_FILE = "src/posthog_identity/__init__.py"
#: A version's heading: `## [1.2.0] - 2026-12-24`, or `unreleased` until it is cut.
VERSION_HEADING = re.compile(r"^## \[(\d+\.\d+\.\d+)\] - (\d{4}-\d\d-\d\d|unreleased)$")


def test_the_version_is_written_once_in_the_package_and_the_build_reads_it_there() -> None:
    assert "version" not in PROJECT
    assert "version" in PROJECT["dynamic"]
    assert PYPROJECT["tool"]["hatch"]["version"]["path"] == VERSION_FILE
    written = re.findall(r'^__version__ = "(.+)"$', (ROOT / VERSION_FILE).read_text("utf-8"), re.M)
    assert written == [posthog_identity.__version__]
    assert importlib.metadata.version("posthog-identity") == posthog_identity.__version__


def test_the_licence_is_the_mit_licence_the_readme_names_and_both_artifacts_ship_it() -> None:
    licence = (ROOT / "LICENSE").read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")

    assert licence.startswith("MIT License\n")
    assert "The posthog-identity authors" in licence
    assert PROJECT["license"] == "MIT"
    assert PROJECT["license-files"] == ["LICENSE"]
    assert "\n## License\n\nMIT\n" in readme


def test_the_project_urls_point_into_the_repository_the_docs_site_names() -> None:
    mkdocs = (ROOT / "mkdocs.yml").read_text(encoding="utf-8")
    [repository] = re.findall(r"^repo_url: (\S+)$", mkdocs, flags=re.M)
    urls = PROJECT["urls"]

    assert sorted(urls) == ["Changelog", "Documentation", "Issues", "Source"]
    assert [url for url in urls.values() if not url.startswith(repository)] == []
    assert urls["Changelog"].endswith("/CHANGELOG.md")


@pytest.mark.parametrize(
    "classifier",
    [
        "Framework :: Django",
        "Framework :: Flask",
        "Framework :: FastAPI",
        *(f"Programming Language :: Python :: 3.{minor}" for minor in range(10, 14)),
        "Typing :: Typed",
    ],
)
def test_the_classifiers_name_the_frameworks_pythons_and_types(classifier: str) -> None:
    assert classifier in PROJECT["classifiers"]


def test_the_changelog_keeps_an_unreleased_section_above_the_versions_newest_first() -> None:
    headings = re.findall(r"^## .*$", CHANGELOG, flags=re.M)
    versions = [match.group(1) for h in headings[1:] if (match := VERSION_HEADING.match(h))]

    assert headings[0] == "## [Unreleased]"
    assert len(versions) == len(headings) - 1, headings
    assert versions[0] == posthog_identity.__version__
    assert versions == sorted(versions, key=lambda v: [int(part) for part in v.split(".")])[::-1]


def test_every_changelog_section_links_to_its_changes() -> None:
    named = re.findall(r"^## \[([^\]]+)\]", CHANGELOG, flags=re.M)
    linked = re.findall(r"^\[([^\]]+)\]: https://", CHANGELOG, flags=re.M)

    assert linked == named


def test_the_readme_test_command_runs_the_package_session() -> None:
    tree = ast.parse((ROOT / "noxfile.py").read_text(encoding="utf-8"))
    [sessions] = [
        ast.literal_eval(node.value)
        for node in ast.walk(tree)
        if isinstance(node, ast.Assign)
        and [ast.unparse(target) for target in node.targets] == ["nox.options.sessions"]
    ]

    assert "package" in sessions


def test_the_release_page_is_in_the_site_navigation() -> None:
    assert re.search(r"^  - [^:]+: release\.md$", (ROOT / "mkdocs.yml").read_text("utf-8"), re.M)


def workflow_jobs() -> dict[str, str]:
    """Each job of the release workflow, by name, as text (the jobs sit two spaces in)."""
    jobs = WORKFLOW.split("\njobs:\n", 1)[1]
    parts = re.split(r"^  ([\w-]+):\n", jobs, flags=re.M)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def step_script(name: str) -> str:
    """The `run: |` block of the workflow step called `name`."""
    match = re.search(
        rf"^(\s*)- name: {re.escape(name)}\n\1  run: \|\n((?:\1    .*\n|\n)+)", WORKFLOW, re.M
    )
    assert match is not None, name
    return textwrap.dedent(match.group(2))


def test_the_release_builds_with_the_package_session_and_publishes_that_dist() -> None:
    jobs = workflow_jobs()

    assert sorted(jobs) == ["build", "publish"]
    assert "nox -s package" in jobs["build"]
    assert re.search(r"upload-artifact@v\d+\n\s+with:\n\s+name: dist\n\s+path: dist/", WORKFLOW)
    assert re.search(r"download-artifact@v\d+\n\s+with:\n\s+name: dist\n\s+path: dist/", WORKFLOW)
    assert "uses: pypa/gh-action-pypi-publish@release/v1" in jobs["publish"]
    assert "needs: build" in jobs["publish"]


def test_only_the_publish_job_in_the_pypi_environment_may_ask_for_an_oidc_token() -> None:
    jobs = workflow_jobs()

    assert re.search(r"^    environment:\n      name: pypi$", jobs["publish"], re.M)
    assert re.search(r"^      id-token: write\b", jobs["publish"], re.M)
    assert WORKFLOW.count("id-token") == 1
    assert re.search(r"^permissions:\n  contents: read$", WORKFLOW, re.M)


@pytest.mark.skipif(shutil.which("bash") is None, reason="the workflow's steps run in bash")
@pytest.mark.parametrize(
    ("tag", "heading", "accepted"),
    [
        ("v{version}", "## [{version}] - 2026-12-24", True),
        ("v{version}", "## [{version}] - unreleased", False),
        ("v9.9.9", "## [{version}] - 2026-12-24", False),
        ("{version}", "## [{version}] - 2026-12-24", False),
    ],
    ids=["tag and dated section", "undated section", "another version's tag", "tag without v"],
)
def test_the_release_refuses_a_tag_or_changelog_that_does_not_name_the_version(
    tmp_path: Path, tag: str, heading: str, accepted: bool
) -> None:
    version = posthog_identity.__version__
    (tmp_path / VERSION_FILE).parent.mkdir(parents=True)
    shutil.copy(ROOT / VERSION_FILE, tmp_path / VERSION_FILE)
    changelog = f"## [Unreleased]\n\n{heading.format(version=version)}\n"
    (tmp_path / "CHANGELOG.md").write_text(changelog, encoding="utf-8")

    script = step_script("The tag is the package's version, dated in CHANGELOG.md")

    done = subprocess.run(
        ["bash", "-eo", "pipefail", "-c", script],  # as GitHub runs a `run:` step
        cwd=tmp_path,
        env={"GITHUB_REF_NAME": tag.format(version=version), "PATH": os.environ["PATH"]},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )

    assert (done.returncode == 0) is accepted, done.stdout + done.stderr
