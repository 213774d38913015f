"""The package as a user gets it: run by `nox -s package` with the Python of a fresh
virtualenv holding only the wheel (and pytest and Flask for the plugin example).

Standard library only. Each check runs what the user would run, from the installed
wheel, never from this checkout: `python tests/project/check_installed.py`.
"""

from __future__ import annotations

import importlib.metadata
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import threading
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
#: The plugin example the testing docs show whole; it needs only pytest and Flask.
EXAMPLE = ROOT / "examples" / "testing" / "test_flask_analytics.py"
SCRIPTS = Path(sysconfig.get_path("scripts"))
COMMAND = str(SCRIPTS / "posthog-identity")
#: A configuration `check` accepts (no --ping: the network stays on 127.0.0.1).
SAMPLE_ENV = {
    "POSTHOG_IDENTITY_SECRET": "a-sample-secret-of-at-least-32-characters",
    "POSTHOG_API_KEY": "phc_sample_project_key",
    "POSTHOG_HOST": "https://eu.i.posthog.com",
}
LISTENING = re.compile(r"posthog-identity demo on (http://127\.0\.0\.1:\d+)/")
TIMEOUT = 60.0


def clean_env(**extra: str) -> dict[str, str]:
    """The environment without any POSTHOG_* of the caller's, plus `extra`."""
    env = {name: value for name, value in os.environ.items() if not name.startswith("POSTHOG")}
    env.update(extra)
    return env


def run(*command: str, env: dict[str, str] | None = None, cwd: Path | None = None) -> str:
    done = subprocess.run(
        command,
        env=clean_env() if env is None else env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    if done.returncode != 0:
        raise AssertionError(
            f"{' '.join(command)} exited {done.returncode}\n{done.stdout}\n{done.stderr}"
        )
    return done.stdout


def check_import() -> None:
    import posthog_identity

    location = Path(posthog_identity.__file__).resolve()
    site = Path(sysconfig.get_path("purelib")).resolve()
    assert location.is_relative_to(site), f"imported from {location}, not from {site}"
    metadata = importlib.metadata.version("posthog-identity")
    assert posthog_identity.__version__ == metadata, (posthog_identity.__version__, metadata)
    print(f"ok: import posthog_identity {metadata} from {location.parent}")


def check_version() -> None:
    expected = f"posthog-identity {importlib.metadata.version('posthog-identity')}\n"
    shown = run(COMMAND, "--version")
    assert shown == expected, f"--version printed {shown!r}, not {expected!r}"
    print(f"ok: {shown.strip()}")


def check_configuration() -> None:
    shown = run(COMMAND, "check", env=clean_env(**SAMPLE_ENV))
    assert "ok: the configuration looks right." in shown, shown
    print("ok: posthog-identity check accepts the sample environment")


def fetch(url: str) -> str:
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        assert response.status == 200, (url, response.status)
        return str(response.read().decode("utf-8"))


def check_demo() -> None:
    """The demo serves a page carrying the bootstrapped snippet, and its events page."""
    demo = subprocess.Popen(
        [COMMAND, "demo", "--port", "0"],  # 0: the system picks a free port
        env=clean_env(PYTHONUNBUFFERED="1"),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert demo.stdout is not None
    lines: list[str] = []
    url = ""
    watchdog = threading.Timer(TIMEOUT, demo.kill)  # a demo that never says where it is
    watchdog.start()
    try:
        for line in demo.stdout:
            lines.append(line)
            if match := LISTENING.search(line):
                url = match.group(1)
                break
        watchdog.cancel()
        assert url, "the demo never said where it listens:\n" + "".join(lines)
        home = fetch(url + "/")
        scripts = re.findall(r"<script data-posthog-identity[^>]*>(.*?)</script>", home, re.S)
        assert scripts, "no snippet in the demo's page:\n" + home
        assert "__SV" in scripts[0], "the snippet lacks posthog's loader:\n" + scripts[0]
        assert "phc_posthog_identity_demo" in scripts[0], scripts[0]
        assert "Events" in fetch(url + "/events")
    finally:
        watchdog.cancel()
        demo.send_signal(signal.SIGINT)
        try:
            code = demo.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            demo.kill()
            code = demo.wait()
        lines.extend(demo.stdout)
        demo.stdout.close()
    assert code == 0, f"the demo exited {code}:\n" + "".join(lines)
    print(f"ok: posthog-identity demo served the snippet at {url}/")


def check_plugin_example() -> None:
    """The documented example under pytest, copied out of the checkout: only the wheel's
    entry point can give it the `posthog_sink` fixture."""
    with tempfile.TemporaryDirectory() as folder:
        shutil.copy(EXAMPLE, folder)
        pytest = (sys.executable, "-m", "pytest", "-p", "no:cacheprovider")
        shown = run(*pytest, folder, cwd=Path(folder))
    summary = shown.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary), shown
    assert "skipped" not in summary, shown
    print(f"ok: pytest {EXAMPLE.name}: {summary.strip('= ')}")


CHECKS: list[Callable[[], None]] = [
    check_import,
    check_version,
    check_configuration,
    check_demo,
    check_plugin_example,
]


def main() -> int:
    if Path(sys.prefix).resolve() == Path(sys.base_prefix).resolve():
        print("run this with the Python of the virtualenv the wheel is installed in")
        return 2
    for check in CHECKS:
        check()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
