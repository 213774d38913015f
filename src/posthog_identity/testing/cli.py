"""`posthog-identity sink`: serve a `Sink` from the command line, one line per arrival."""

from __future__ import annotations

import argparse
import json
import signal
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from .flags import EXAMPLE_FLAG_DEFINITIONS
from .protocol import distinct_id_of
from .server import Sink

if TYPE_CHECKING:
    from types import FrameType

__all__ = ["format_event", "main", "port_number"]


def port_number(text: str) -> int:
    """An argparse type: a TCP port, 1-65535, or 0 for any free one."""
    try:
        port = int(text, 10)
    except ValueError:
        port = -1
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a port number (1-65535, or 0 for any free port)"
        )
    return port


def _show(value: Any) -> str:
    # One value on one line: plain when it is a plain word, else as JSON
    # (which escapes line breaks, spaces show as quoted, non-ASCII as \u).
    plain = isinstance(value, str) and value.isascii() and value.isprintable()
    if plain and value and " " not in value:
        return str(value)
    return json.dumps(value)


def format_event(event: Mapping[str, Any]) -> str:
    """One line for an event: local time, name, distinct id, and the linked id.

    `$create_alias` shows its `alias`, `$identify` its `$anon_distinct_id`: the
    anonymous id merged into the person. Values with spaces or line breaks are
    shown as JSON strings, so the line stays one line.
    """
    name = event.get("event")
    line = f"{time.strftime('%H:%M:%S')} {_show(name)} distinct_id={_show(distinct_id_of(event))}"
    properties = event.get("properties")
    properties = properties if isinstance(properties, dict) else {}
    linked = {"$create_alias": "alias", "$identify": "$anon_distinct_id"}.get(str(name))
    if linked is not None and linked in properties:
        line += f" {linked}={_show(properties[linked])}"
    return line


def _format_flag_request(request: Mapping[str, Any]) -> str:
    return f"{time.strftime('%H:%M:%S')} flags? distinct_id={_show(request.get('distinct_id'))}"


def main(argv: Sequence[str] | None = None) -> int:
    """`posthog-identity sink`: serve a `Sink` until SIGINT or SIGTERM.

    Prints `PostHog sink listening on http://HOST:PORT`, then one line per
    event and per flags request as they arrive. Returns 0 once stopped, 1 when
    it cannot start (port taken, JSONL file or static directory unusable).
    """
    parser = argparse.ArgumentParser(
        prog="posthog-identity sink",
        description="A local stand-in for PostHog's ingestion: prints what it receives.",
        epilog="exit codes:\n  0  stopped\n  1  could not start (port in use, unusable file)\n"
        "  2  usage error: bad option or port number",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--host", default="127.0.0.1", help="interface (default: %(default)s)")
    parser.add_argument(
        "--port", type=port_number, default=8010, help="0 picks one (default: %(default)s)"
    )
    parser.add_argument("--jsonl", metavar="FILE", help="also append each event to FILE")
    parser.add_argument("--static-dir", metavar="DIR", help="serve DIR at /static/")
    parser.add_argument(
        "--example-flags",
        action="store_true",
        help="serve two example flags (beta-banner, checkout-experiment) for /flags "
        "and for local evaluation with any personal API key",
    )
    args = parser.parse_args(argv)

    printing = threading.Lock()

    def say(line: str) -> None:
        with printing:
            sys.stdout.write(line + "\n")
            sys.stdout.flush()

    stopping: list[int] = []

    def request_stop(signum: int, frame: FrameType | None) -> None:
        stopping.append(signum)

    # A flag, polled: a signal handler must not take a lock the main thread may hold.
    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        try:
            sink = Sink(
                args.host,
                args.port,
                jsonl_path=args.jsonl,
                static_dir=args.static_dir,
                flag_definitions=EXAMPLE_FLAG_DEFINITIONS if args.example_flags else None,
                on_event=lambda event: say(format_event(event)),
                on_flag_request=lambda request: say(_format_flag_request(request)),
            ).start()
        except OSError as exc:
            print(f"posthog-identity sink: cannot start: {exc}", file=sys.stderr)
            return 1
        try:
            say(f"PostHog sink listening on {sink.url}")
            while not stopping:
                time.sleep(0.1)
        finally:
            sink.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
