"""`posthog-identity`: demo, sink and check."""

from __future__ import annotations

import argparse
import difflib
import json
import os
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import TextIO
from urllib.parse import urlsplit

from . import __version__
from .client import FLUSH_TIMEOUT
from .hosts import assets_host
from .ping import ask
from .proxy import ASGI_CONCURRENCY, WSGI_CONCURRENCY
from .resend import POLICY
from .settings import ENV_VARS, MIN_SECRET_LENGTH, ConfigurationError, Settings

__all__ = ["EXIT_CODES", "check", "main"]

#: Exit codes: success; problems `check` found, or a server that could not
#: start; a usage error (argparse's own code); a configuration the middleware
#: would refuse.
OK, PROBLEMS, USAGE, INVALID = 0, 1, 2, 3
EXIT_CODES = f"""\
exit codes:
  {OK}  success
  {PROBLEMS}  check found problems; demo or sink could not start (port in use)
  {USAGE}  usage error: unknown command, bad option or port number
  {INVALID}  invalid configuration: the middleware would refuse to start
"""
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
_PREFIX = "POSTHOG_IDENTITY_"


@dataclass
class Report:
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def check(
    environ: Mapping[str, str] | None = None,
    *,
    ping: bool = False,
    timeout: float = 5.0,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Read the environment as the middleware does; print it (on `out`) and what
    is wrong (on `err`)."""
    out = sys.stdout if out is None else out
    err = sys.stderr if err is None else err
    env = os.environ if environ is None else environ
    report = Report()
    known = set(ENV_VARS.values())
    for name in sorted(env):
        if name.startswith(_PREFIX) and name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            report.errors.append(f"{name} is not a posthog-identity setting{hint}")
    try:
        settings = Settings.from_env(env)
    except ConfigurationError as error:
        for variable, message in error.errors:
            print(f"error: {variable}: {message}", file=err)
        _print_problems(report, err)
        print("The middleware would refuse to start with this configuration.", file=err)
        return INVALID

    _print_settings(settings, out)
    _audit(settings, report)
    if settings.proxy_path is not None:
        _describe_proxy(settings, out)
    if settings.api_key is not None and not settings.disabled:
        _describe_delivery(out)
    if ping:
        _ping(settings, timeout, out, report)
        if settings.proxy_path is not None:
            _ping_through_proxy(settings, timeout, out, report)
    _print_problems(report, err)
    if report.errors:
        return PROBLEMS
    print("ok: the configuration looks right.", file=out)
    return OK


def _audit(settings: Settings, report: Report) -> None:
    newest = settings.secrets[0]
    if len(newest) < MIN_SECRET_LENGTH:
        report.errors.append(
            f"{ENV_VARS['secrets']}: the newest secret has {len(newest)} characters; use at least "
            f"{MIN_SECRET_LENGTH} random ones (python3 -c 'import secrets; "
            "print(secrets.token_urlsafe(32))')"
        )
    key = settings.api_key
    if key is None:
        report.warnings.append(
            f"{ENV_VARS['api_key']} is not set: identity works, but no events are sent and no "
            "snippet is injected"
        )
    elif key.startswith("phx_"):
        report.errors.append(
            f"{ENV_VARS['api_key']} is a personal API key (phx_…): it grants access to your "
            "PostHog account and would be published in every page; use the project key (phc_…)"
        )
    elif not key.startswith("phc_"):
        report.warnings.append(f"{ENV_VARS['api_key']} does not look like a project key (phc_…)")
    parts = urlsplit(settings.host)
    if parts.scheme != "https" and (parts.hostname or "") not in _LOCAL_HOSTS:
        report.errors.append(
            f"{ENV_VARS['host']}: {settings.host} is not https; events and the API key would "
            "travel in clear text"
        )
    if settings.cookie_samesite == "None" and settings.cookie_secure is None:
        report.warnings.append(
            f"{ENV_VARS['cookie_samesite']}=None: the cookie is always Secure, so it is not set "
            "over plain http"
        )
    if settings.disabled:
        report.warnings.append(
            f"{ENV_VARS['disabled']} is on: the middleware passes everything through"
        )


def _describe_delivery(out: TextIO) -> None:
    """What happens to events PostHog does not accept (it is down, or answers 429/5xx)."""
    policy = POLICY
    print(
        f"delivery: login links PostHog does not accept are kept in memory and sent again "
        f"(after {policy.first_delay:g} s, backing off to every {policy.max_delay:g} s) "
        f"for up to {policy.max_age / 3600:g} h, at most {policy.max_pending} at a time "
        f"(the oldest dropped first, with a warning); at shutdown they get up to "
        f"{FLUSH_TIMEOUT:g} s, then those still pending are logged as lost. Other events "
        "get posthog's own retries, then are dropped.",
        file=out,
    )


#: The distinct id `--ping` asks the flags of: no person has it.
PING_DISTINCT_ID = "posthog-identity-check"


def _flags_request(settings: Settings) -> bytes:
    """A flags request as posthog-js makes it: PostHog answers 200 for the project's key."""
    return json.dumps({"token": settings.api_key, "distinct_id": PING_DISTINCT_ID}).encode()


def _ping(settings: Settings, timeout: float, out: TextIO, report: Report) -> None:
    """Ask POSTHOG_HOST for flags with the project key; any error status or no answer fails."""
    if settings.api_key is None:
        report.warnings.append(
            f"--ping: without {ENV_VARS['api_key']} nothing is sent, so nothing was asked"
        )
        return
    url = f"{settings.host}/flags/?v=2"
    answer = ask("POST", url, _flags_request(settings), timeout)
    if answer.ok:
        print(f"ping: POST {url}: {answer.describe()}", file=out)
    elif answer.status is not None:
        report.errors.append(
            f"{ENV_VARS['host']}: POST {url} answered {answer.describe()}"
            + (
                f"; is {ENV_VARS['api_key']} a key of a project on this host?"
                if answer.status in (401, 403)
                else ""
            )
        )
    else:
        report.errors.append(f"{ENV_VARS['host']}: POST {url}: {answer.describe()}")


def _describe_proxy(settings: Settings, out: TextIO) -> None:
    prefix = settings.proxy_path
    assert prefix is not None
    print(
        f"proxy: {prefix}/static/* and {prefix}/array/* go to {assets_host(settings.host)}, "
        f"the rest of {prefix}/* to {settings.host}; the snippet loads posthog-js from "
        f"{settings.script_url or prefix + '/static/array.js'} and sends to {prefix}",
        file=out,
    )


def _ping_through_proxy(settings: Settings, timeout: float, out: TextIO, report: Report) -> None:
    """Ask each upstream the proxy forwards to what posthog-js will ask through it."""
    assert settings.proxy_path is not None
    # Where the proxy forwards them: assets to the assets host, the rest to POSTHOG_HOST.
    asks: list[tuple[str, str, str, bytes | None]] = [
        ("GET", "/static/array.js", assets_host(settings.host), None)
    ]
    if settings.api_key is not None:
        asks.append(("POST", "/flags/?v=2", settings.host, _flags_request(settings)))
    for method, path, upstream, body in asks:
        answer = ask(method, upstream + path, body, min(timeout, settings.proxy_timeout))
        line = f"{settings.proxy_path}{path} -> {answer.url}"
        if answer.ok:
            print(f"proxy: {line}: {answer.describe()}", file=out)
        elif answer.status is not None:
            report.errors.append(f"{ENV_VARS['proxy_path']}: {line} answered {answer.describe()}")
        else:
            report.errors.append(
                f"{ENV_VARS['proxy_path']}: {line} gave no answer: {answer.describe()}"
            )


#: How an unset value reads, where "none" would not say what happens.
_UNSET = {
    "cookie_domain": "(host-only)",
    "cookie_secure": "auto",
    "script_url": "(default for the host)",
    "proxy_concurrency": (
        f"({ASGI_CONCURRENCY} in flight under ASGI, {WSGI_CONCURRENCY} under WSGI)"
    ),
}


def _shown(name: str, value: object) -> str:
    """One setting as the environment variable would spell it; secrets masked."""
    if name == "secrets":
        assert isinstance(value, tuple)
        return f"{len(value)} secret(s), newest {len(value[0])} characters (masked)"
    if name == "personal_api_key" and value:
        return "(set, masked)"
    if value is None or value == () or value == {}:
        return _UNSET.get(name, "(none)")
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ", ".join(value)
    if isinstance(value, Mapping):
        return json.dumps(dict(value))
    return str(value)


def _print_settings(settings: Settings, out: TextIO) -> None:
    # Every field, so a new setting can never be missing from the table.
    rows = [(ENV_VARS[f.name], _shown(f.name, getattr(settings, f.name))) for f in fields(settings)]
    width = max(len(variable) for variable, _ in rows)
    print("Effective configuration:", file=out)
    for variable, value in rows:
        print(f"  {variable:<{width}}  {value}", file=out)


def _print_problems(report: Report, out: TextIO) -> None:
    for warning in report.warnings:
        print(f"warning: {warning}", file=out)
    for error in report.errors:
        print(f"error: {error}", file=out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    arguments = list(sys.argv[1:] if argv is None else argv)
    if arguments[:1] == ["sink"]:
        from .testing.cli import main as sink_main

        return sink_main(arguments[1:])
    options = parser.parse_args(arguments)
    if options.command == "demo":
        return _demo(options.host, options.port, options.posthog_js)
    return check(ping=options.ping, timeout=options.timeout)


def _parser() -> argparse.ArgumentParser:
    from .testing.cli import port_number  # the sink's command line parses ports too

    formatter = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="posthog-identity", description=__doc__, epilog=EXIT_CODES, formatter_class=formatter
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser(
        "demo",
        help="run the demo site with a local event sink",
        epilog=EXIT_CODES,
        formatter_class=formatter,
    )
    demo.add_argument("--host", default="127.0.0.1", help="interface (default: %(default)s)")
    demo.add_argument(
        "--port", type=port_number, default=8000, help="0 picks one (default: %(default)s)"
    )
    demo.add_argument(
        "--posthog-js",
        metavar="DIR",
        type=_posthog_js,
        help="serve posthog-js from DIR (the posthog-js npm package or its dist/), so the "
        "browser side works offline (default: PostHog's CDN)",
    )
    commands.add_parser("sink", help="run a local PostHog ingestion sink", add_help=False)
    doctor = commands.add_parser(
        "check",
        help="check the configuration in the environment",
        epilog=EXIT_CODES,
        formatter_class=formatter,
    )
    doctor.add_argument(
        "--ping",
        action="store_true",
        help="ask POSTHOG_HOST (and, with the proxy, the assets host) as posthog-js will; "
        "an error status or no answer fails",
    )
    doctor.add_argument("--timeout", type=float, default=5.0)
    return parser


def _posthog_js(directory: str) -> Path:
    """An argparse type: posthog-js's `dist/` directory, found from what was given."""
    from .demo import find_posthog_js

    try:
        return find_posthog_js(directory)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def _demo(host: str, port: int, posthog_js: Path | None) -> int:
    """Run the demo; a configuration it cannot use is one line per variable.

    A port in use is werkzeug's to report: it says so on stderr and exits 1.
    """
    from .demo import serve

    try:
        return serve(host, port, posthog_js=posthog_js)
    except ConfigurationError as error:
        for variable, message in error.errors:
            print(f"posthog-identity demo: error: {variable}: {message}", file=sys.stderr)
        return INVALID
