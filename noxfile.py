# /// script
# dependencies = ["nox>=2025.2.9", "uv>=0.5"]
# ///
"""Developer tasks; `nox` alone runs what a contributor needs before a commit."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import zipfile
from pathlib import Path

import nox
from nox.command import CommandFailed

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
    "pytest-xdist>=3.6",
    "coverage[toml]>=7.10",
    "hypothesis>=6.100",
    # real servers and frameworks the integration tests run under
    "uvicorn>=0.30",
    "gunicorn>=27",  # --no-control-socket
    "hypercorn>=0.16",
    "waitress>=3",
    "granian>=2",  # reads the WSGI head as soon as the application returns
    "httpx>=0.27",
    "html5lib>=1.1",  # a real HTML5 parser checks where the snippet lands
    # a real worker runs a task enqueued during a request (posthog's Celery integration)
    "celery>=5.4",
    *FRAMEWORKS,
]
DOCS_DEPS = ["mkdocs>=1.6", "mkdocs-material>=9.5"]
# Four pytest-xdist workers, even on two cores: most tests wait on servers and
# sockets, not on the CPU (one Python's suite: 155 s with two, 88 s with four).
# Each module goes to one worker whole (loadscope), so its module-scoped servers
# start once. Coverage measures the workers as subprocesses (patch = subprocess).
PARALLEL = ["--numprocesses=4", "--dist=loadscope"]
# Tests that wait out real PostHog outages under real servers run once, in `outage`.
NOT_SLOW = ["-m", "not slow"]

nox.options.sessions = [
    "lint",
    "typecheck",
    "docs",
    "package",
    "tests",
    "outage",
    "coverage",
    "browser",
    "bench_smoke",
]
nox.options.reuse_existing_virtualenvs = True
# The script block above has nox run itself beside uv (.nox/_nox_script_mode, once):
# uv makes each session's environment in a few seconds where pip takes about 15 (a
# full run: 761-775 s against 868-876 s). Never a Python downloaded for a missing one.
nox.options.default_venv_backend = "uv|virtualenv"
nox.options.download_python = "never"
# pip compiles what it installs; uv only when asked. Without it, where bytecode is not
# written (PYTHONDONTWRITEBYTECODE), every test worker and server compiles Django & co.
os.environ.setdefault("UV_COMPILE_BYTECODE", "1")
# Outside CI a missing interpreter is skipped; in CI it is an error.
nox.options.error_on_missing_interpreters = bool(os.environ.get("CI"))


def _covered_pytest(session: nox.Session, data: str, *options: str) -> None:
    """pytest under coverage (branch), its data in `.coverage.<data>` for `coverage`."""
    session.install("-e", ".", *TEST_DEPS)
    session.run(
        "coverage",
        "run",
        "-m",
        "pytest",
        *options,
        # The browser scenarios have their own session (they need Chromium).
        "--ignore=tests/browser",
        *session.posargs,
        env={"COVERAGE_FILE": f".coverage.{data}"},
    )


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """Run the test suite under coverage (branch); `coverage` combines the results."""
    _covered_pytest(session, str(session.python), *PARALLEL, *NOT_SLOW)


@nox.session(python="3.11")
def outage(session: nox.Session) -> None:
    """The slow tests (real PostHog outages under real servers), once, four at a time."""
    # --dist=load: the outages are waits, four at once.
    _covered_pytest(session, "outage", "--numprocesses=4", "--dist=load", "-m", "slow")


@nox.session(python="3.11")
def quick(session: nox.Session) -> None:
    """The inner loop: the suite on one Python, no coverage, no browser.

    Arguments after `--` go to pytest: `nox -s quick -- tests/unit/test_wsgi.py -k cookie`.
    """
    session.install("-e", ".", *TEST_DEPS)
    session.run("pytest", *PARALLEL, *NOT_SLOW, "--ignore=tests/browser", *session.posargs)


@nox.session(python="3.11")
def coverage(session: nox.Session) -> None:
    """Combine the test sessions' data; fail below 95% branch coverage of src/."""
    session.install("coverage[toml]>=7.10")
    session.run("coverage", "combine", success_codes=[0, 1])
    session.run("coverage", "report", "--fail-under=95")


@nox.session(python="3.11")
def lint(session: nox.Session) -> None:
    session.install("ruff>=0.6")
    # --no-cache: a stale local cache once hid an import-order error that CI's fresh run found.
    paths = ("src", "tests", "examples", "bench", "noxfile.py")
    session.run("ruff", "check", "--no-cache", *paths)
    session.run("ruff", "format", "--check", "--no-cache", *paths)


@nox.session(python="3.11")
def typecheck(session: nox.Session) -> None:
    session.install("-e", ".", "mypy>=1.10", "pytest>=8", *FRAMEWORKS)
    session.run("mypy", "--strict", "src")


@nox.session(python="3.11")
def docs(session: nox.Session) -> None:
    """Build the documentation site; any warning fails the build."""
    session.install(*DOCS_DEPS)
    session.run(
        "mkdocs", "build", "--strict", "--site-dir", "site", env={"NO_MKDOCS_2_WARNING": "1"}
    )


# posthog-js as the browser tests pin it (the browser session's own `npm ci`); the demo
# serves it too.
BROWSER_PACKAGE = "tests/browser"
POSTHOG_JS = f"{BROWSER_PACKAGE}/node_modules/posthog-js"
NPM_CI = ["npm", "ci", "--prefix", BROWSER_PACKAGE, "--ignore-scripts", "--no-audit", "--no-fund"]


def _pinned_posthog_js_installed() -> bool:
    """Is node_modules' posthog-js the version package-lock.json pins?"""
    try:
        with open(f"{BROWSER_PACKAGE}/package-lock.json", encoding="utf-8") as lock:
            pinned = json.load(lock)["packages"]["node_modules/posthog-js"]["version"]
        with open(f"{POSTHOG_JS}/package.json", encoding="utf-8") as package:
            return bool(json.load(package)["version"] == pinned)
    except (OSError, ValueError, KeyError):
        return False


@nox.session(python="3.11")
def demo(session: nox.Session) -> None:
    """Run the demo site (arguments after `--` go to `posthog-identity demo`).

    It serves the posthog-js the browser tests pin (npm installs it once), so
    the browser side works offline; without npm, posthog-js comes from the CDN.
    """
    session.install(".")
    options: list[str] = []
    if shutil.which("npm") is None:
        session.log(
            "npm is not installed, so posthog-js loads from PostHog's CDN and browser events "
            "need internet; `apt-get install -y nodejs npm` serves the pinned one offline"
        )
    else:
        if not _pinned_posthog_js_installed():
            try:
                session.run(*NPM_CI, "--prefer-offline", external=True)
            except CommandFailed:
                session.log("npm could not install posthog-js: it loads from PostHog's CDN")
        if _pinned_posthog_js_installed():
            options = ["--posthog-js", POSTHOG_JS]
    session.run("posthog-identity", "demo", *options, *session.posargs)


# The build and the upload check the release workflow runs too (.github/workflows/release.yml);
# twine 7 reads the metadata version hatchling writes (2.4 for PEP 639 licence files, then 2.5).
# build's isolated environments come from uv: three builds, 4-6 s instead of 11-13 s with pip.
PACKAGE_DEPS = ["build[uv]>=1.2", "twine>=7"]
BUILD = ("python", "-m", "build", "--installer", "uv")
#: What the plugin example (examples/testing/test_flask_analytics.py) needs beside the wheel.
EXAMPLE_DEPS = ["pytest>=8", "flask>=3"]


# pip, as a user installs the wheel (`pip --python` below needs this session's own pip).
@nox.session(python="3.11", venv_backend="virtualenv")
def package(session: nox.Session) -> None:
    """Build the sdist and the wheel into dist/, check them, and use the wheel as a user would.

    The tests install the checkout editable; this session is what catches a file the
    wheel lacks (the snippet's JavaScript, the demo's files, the plugin's entry point).
    """
    session.install(*PACKAGE_DEPS)
    dist = Path("dist")
    shutil.rmtree(dist, ignore_errors=True)
    # `build` with no target builds the sdist, then the wheel from that sdist.
    session.run(*BUILD, "--outdir", str(dist))
    [sdist] = dist.glob("*.tar.gz")
    [wheel] = dist.glob("*.whl")
    session.run("twine", "check", "--strict", str(sdist), str(wheel))

    tmp = Path(session.create_tmp())
    tree = tmp / "from-tree"
    shutil.rmtree(tree, ignore_errors=True)
    session.run(*BUILD, "--wheel", "--outdir", str(tree), ".")
    [tree_wheel] = tree.glob("*.whl")
    problems = _archive_problems(sdist, wheel, tree_wheel)
    if problems:
        session.error("\n".join(["the artifacts are not what the checkout holds:", *problems]))

    venv = tmp / "user"  # fresh every run: only the wheel and the example's needs
    shutil.rmtree(venv, ignore_errors=True)
    # Without a pip of its own (5 s less); this session's pip installs into it.
    session.run("python", "-m", "venv", "--without-pip", str(venv))
    python = str(venv / "bin" / "python")
    session.run("pip", "--python", python, "install", "--quiet", str(wheel), *EXAMPLE_DEPS)
    session.run(python, "tests/project/check_installed.py", external=True)


def _archive_problems(sdist: Path, wheel: Path, tree_wheel: Path) -> list[str]:
    """What the wheel (built from the sdist) lacks: a file of the package, the licence,
    or a file of the wheel built straight from the checkout."""
    with zipfile.ZipFile(wheel) as archive:
        shipped = set(archive.namelist())
    with zipfile.ZipFile(tree_wheel) as archive:
        from_tree = set(archive.namelist())
    with tarfile.open(sdist) as archive:
        in_sdist = {name.split("/", 1)[-1] for name in archive.getnames()}
    sources = {
        path.relative_to("src").as_posix()
        for path in Path("src", "posthog_identity").rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    }
    dist_info = next(name.split("/")[0] for name in shipped if ".dist-info/" in name)
    problems = [f"the wheel lacks {name}" for name in sorted(sources - shipped)]
    problems += [f"only the checkout's wheel has {name}" for name in sorted(from_tree - shipped)]
    problems += [f"only the sdist's wheel has {name}" for name in sorted(shipped - from_tree)]
    if f"{dist_info}/licenses/LICENSE" not in shipped:
        problems.append("the wheel lacks LICENSE")
    if "LICENSE" not in in_sdist:
        problems.append("the sdist lacks LICENSE")
    return problems


E2E_DEPS = [
    "playwright>=1.45",  # drives Debian's Chromium; never `playwright install`
    "flask-cors>=5",  # the SPA API's CORS under gunicorn, as docs/frameworks/spa.md shows it
]
CHROMIUM = "/usr/bin/chromium"


@nox.session(python="3.11")
def browser(session: nox.Session) -> None:
    """The real posthog-js (pinned in tests/browser/package-lock.json) in Debian's Chromium."""
    missing = [
        hint
        for found, hint in (
            (os.path.exists(CHROMIUM), "Chromium: `apt-get install -y chromium`"),
            (shutil.which("npm") is not None, "npm: `apt-get install -y nodejs npm`"),
        )
        if not found
    ]
    if missing:
        message = "the browser tests need " + " and ".join(missing)
        if os.environ.get("CI") == "true":
            session.error(message)
        session.skip(message)
    session.install("-e", ".", *TEST_DEPS, *E2E_DEPS)
    session.run(
        "npm",
        "ci",
        "--prefix",
        "tests/browser",
        "--ignore-scripts",
        "--no-audit",
        "--no-fund",
        external=True,
    )
    session.run("pytest", *PARALLEL, "tests/browser", *session.posargs)


# opentelemetry-api: without it, posthog's PosthogASGIMiddleware retries a failing
# `import opentelemetry` on every request; the peer is measured at its best.
BENCH_DEPS = [
    "starlette>=0.37",
    "flask>=3",
    "uvicorn>=0.30",
    "gunicorn>=27",
    "opentelemetry-api",
    "matplotlib>=3.8",  # the performance page's chart
]


@nox.session(python="3.11")
def bench(session: nox.Session) -> None:
    """Benchmarks against peers (docs/performance.md); `-- --quick` is the CI smoke run."""
    session.install("-e", ".", *BENCH_DEPS)
    session.run("python", "bench/run.py", *session.posargs)


@nox.session(python="3.11")
def bench_smoke(session: nox.Session) -> None:
    """A short benchmark run so it cannot rot; it reports, never asserts speed."""
    session.install("-e", ".", *BENCH_DEPS)
    session.run("python", "bench/run.py", "--quick")


@nox.session(python="3.11")
def fuzz(session: nox.Session) -> None:
    """The fuzz tests with a long budget (POSTHOG_IDENTITY_FUZZ_EXAMPLES per target)."""
    session.install("-e", ".", *TEST_DEPS)
    examples = os.environ.get("POSTHOG_IDENTITY_FUZZ_EXAMPLES", "3000")
    session.run(
        "pytest",
        "tests/robustness/test_fuzz.py",
        "--hypothesis-show-statistics",
        *session.posargs,
        env={"POSTHOG_IDENTITY_FUZZ_EXAMPLES": examples},
    )
