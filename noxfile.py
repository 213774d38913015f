"""Developer tasks; `nox` alone runs what a contributor needs before a commit."""

from __future__ import annotations

import os

import nox

PYTHONS = ["3.10", "3.11", "3.12", "3.13"]
FRAMEWORKS = [
    "flask>=3",
    "flask-login>=0.6.3",
    "django>=4.2",
    "fastapi>=0.110",
    "starlette>=0.37",
]
TEST_DEPS = [
    "pytest>=8",
    "coverage[toml]>=7.10",
    "hypothesis>=6.100",
    # real servers and frameworks the integration tests run under
    "uvicorn>=0.30",
    "gunicorn>=27",  # --no-control-socket
    "hypercorn>=0.16",
    "waitress>=3",
    "httpx>=0.27",
    "html5lib>=1.1",  # a real HTML5 parser checks where the snippet lands
    *FRAMEWORKS,
]
DOCS_DEPS = ["mkdocs>=1.6", "mkdocs-material>=9.5"]

nox.options.sessions = ["lint", "typecheck", "tests", "coverage"]
nox.options.reuse_existing_virtualenvs = True
# Outside CI a missing interpreter is skipped; in CI it is an error.
nox.options.error_on_missing_interpreters = bool(os.environ.get("CI"))


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Run the test suite under coverage (branch); `coverage` combines the results."""
    session.install("-e", ".", *TEST_DEPS)
    session.run(
        "coverage",
        "run",
        "-m",
        "pytest",
        *session.posargs,
        env={"COVERAGE_FILE": f".coverage.{session.python}"},
    )


@nox.session(python="3.11")
def coverage(session: nox.Session) -> None:
    """Combine the test sessions' data; fail below 95% branch coverage of src/."""
    session.install("coverage[toml]>=7.10")
    session.run("coverage", "combine", success_codes=[0, 1])
    session.run("coverage", "report", "--fail-under=95")


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    session.run("ruff", "check", "src", "tests", "examples", "noxfile.py")
    session.run("ruff", "format", "--check", "src", "tests", "examples", "noxfile.py")


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".", "mypy>=1.10", *FRAMEWORKS)
    session.run("mypy", "--strict", "src")


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    """Build the documentation site; any warning fails the build."""
    session.install(*DOCS_DEPS)
    session.run(
        "mkdocs", "build", "--strict", "--site-dir", "site", env={"NO_MKDOCS_2_WARNING": "1"}
    )


@nox.session(python="3.11")
def demo(session: nox.Session) -> None:
    """Run the demo site (arguments after `--` go to `posthog-identity demo`)."""
    session.install(".")
    session.run("posthog-identity", "demo", *session.posargs)
