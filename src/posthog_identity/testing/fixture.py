"""`PostHogSink`: what the `posthog_sink` fixture gives a test, a typed view of one sink.

Queries read what reached "PostHog" in this test; waits and assertions fail
with a message listing what did arrive, so a renamed event or a lost distinct
id reads as such in the test report.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .protocol import Event, distinct_id_of
from .recorder import describe_arrivals

if TYPE_CHECKING:
    from posthog.client import Client

    from .flags import FlagValue
    from .server import Sink

__all__ = ["TEST_API_KEY", "TEST_SECRET", "LoginLink", "PostHogSink"]

#: The project API key the fixture sets when the environment has none, so that
#: apps built in the test send their events.
TEST_API_KEY = "phc_posthog_identity_test"
#: The cookie secret the fixture sets when the environment has none, so that
#: the middleware of an app built in the test starts (it requires one).
TEST_SECRET = "posthog-identity-test-secret-never-for-production"

_ALIAS = "$create_alias"
_KEY_VARIABLES = ("POSTHOG_API_KEY", "POSTHOG_PROJECT_API_KEY")
_SECRET_VARIABLE = "POSTHOG_IDENTITY_SECRET"


@dataclass(frozen=True)
class LoginLink:
    """One login link: a `$create_alias` event merging `anonymous_id` into `user_id`.

    PostHog keeps the person of the event's distinct id (the user) and merges in
    the person of `properties.alias` (the anonymous visitor).
    """

    user_id: str
    anonymous_id: str
    event: Event


class PostHogSink:
    """The events a test's apps sent to PostHog, caught by a local sink.

    :param sink: a started `Sink`; the fixture shares one per test session.
    :param api_key: the project API key apps built in the test send with.
    """

    def __init__(self, sink: Sink, api_key: str = TEST_API_KEY) -> None:
        self.sink = sink
        self.api_key = api_key

    @property
    def url(self) -> str:
        """The sink's base URL: `POSTHOG_HOST` while the test runs."""
        return self.sink.url

    def events(self, name: str | None = None, distinct_id: str | None = None) -> list[Event]:
        """Copies of the events that arrived so far, in arrival order, filtered
        by event name and distinct id when given."""
        return self.sink.events(name, distinct_id)

    def login_links(self, user_id: str | None = None) -> list[LoginLink]:
        """The login links that arrived, for one user when given."""
        links = []
        for event in self.sink.events(_ALIAS, user_id):
            alias = event.get("properties", {}).get("alias")
            links.append(LoginLink(str(distinct_id_of(event)), str(alias), event))
        return links

    def wait_for(
        self,
        predicate: Callable[[list[Event]], bool] | None = None,
        timeout: float = 5.0,
        *,
        name: str | None = None,
        distinct_id: str | None = None,
        count: int | None = None,
    ) -> list[Event]:
        """Wait until the events (named `name`, for `distinct_id`, when given) are
        enough, and return them.

        Enough means at least `count` of them and `predicate(events)` true; with
        neither given, at least one. For events sent from a posthog client's
        background thread; `flush` first makes the wait short.

        :raises AssertionError: after `timeout` seconds, listing what arrived.
        """
        __tracebackhide__ = True
        try:
            return self.sink.wait_for(
                predicate, count=count, event=name, distinct_id=distinct_id, timeout=timeout
            )
        except TimeoutError as exc:
            raise AssertionError(str(exc)) from None

    def flush(self, *clients: Client) -> None:
        """Wait until posthog clients have sent what they queued.

        With no client given: the clients this package's middlewares built and
        posthog's module-level client (`posthog.capture`), when there is one.
        """
        for client in clients or _known_clients():
            client.flush()

    def assert_captured(
        self, name: str, distinct_id: str | None = None, *, timeout: float = 0.0
    ) -> Event:
        """The one event named `name` (for `distinct_id`), after flushing the clients.

        The flush delivers what this process's clients queued, so a missing event
        fails at once. `timeout` waits up to that long for events sent by clients
        the flush cannot reach (another process: a live server).

        :raises AssertionError: unless exactly one arrived, listing what did.
        """
        __tracebackhide__ = True
        self.flush()
        self._settle(None, name=name, distinct_id=distinct_id, timeout=timeout)
        found = self.sink.events(name, distinct_id)
        if len(found) != 1:
            whose = "" if distinct_id is None else f" for distinct_id {distinct_id!r}"
            raise AssertionError(
                f"expected one {name!r} event{whose}, got {len(found)}; "
                f"{describe_arrivals(self.sink.events())}"
            )
        return found[0]

    def assert_login_link(
        self, user_id: str, anonymous_id: str | None = None, *, timeout: float = 0.0
    ) -> LoginLink:
        """The one login link of `user_id` (from `anonymous_id`), after flushing the clients.

        Fails at once after the flush, as `assert_captured` does; `timeout` too.

        :raises AssertionError: unless exactly one arrived, listing what did.
        """
        __tracebackhide__ = True
        self.flush()

        def arrived(events: list[Event]) -> bool:
            aliases = [e.get("properties", {}).get("alias") for e in events]
            return anonymous_id in aliases if anonymous_id is not None else bool(aliases)

        self._settle(arrived, name=_ALIAS, distinct_id=user_id, timeout=timeout)
        links = [
            link
            for link in self.login_links(user_id)
            if anonymous_id is None or link.anonymous_id == anonymous_id
        ]
        if len(links) != 1:
            merged = "" if anonymous_id is None else f" from {anonymous_id!r}"
            raise AssertionError(
                f"expected one login link of user {user_id!r}{merged}, got {len(links)}; "
                f"{describe_arrivals(self.sink.events())}"
            )
        return links[0]

    def _settle(
        self,
        predicate: Callable[[list[Event]], bool] | None,
        *,
        name: str,
        distinct_id: str | None,
        timeout: float,
    ) -> None:
        # Gives a client the flush cannot reach the time to deliver.
        if timeout <= 0:
            return
        with suppress(TimeoutError):
            self.sink.wait_for(predicate, event=name, distinct_id=distinct_id, timeout=timeout)

    def serve_flags(
        self,
        flags: Mapping[str, FlagValue] | None = None,
        *,
        payloads: Mapping[str, Any] | None = None,
        definitions: Iterable[Mapping[str, Any]] | None = None,
        group_type_mapping: Mapping[str, str] | None = None,
    ) -> None:
        """Serve these flags for the rest of the test: fixed values per key, and
        definitions in PostHog's local-evaluation shape, evaluated per person."""
        self.sink.serve_flags(
            flags,
            flag_payloads=payloads,
            flag_definitions=definitions,
            group_type_mapping=group_type_mapping,
        )

    def clear(self) -> None:
        """Forget what arrived so far."""
        self.sink.clear()

    @contextmanager
    def pointed_at(self) -> Iterator[PostHogSink]:
        """Set `POSTHOG_HOST` (and an API key and a cookie secret, when none is set)
        for the apps a test builds; restore the environment after. Starts from no
        events and no flags."""
        self.flush()  # what an earlier test queued lands before it is forgotten
        self.sink.clear()
        self.sink.serve_flags()
        variables = ("POSTHOG_HOST", *_KEY_VARIABLES, _SECRET_VARIABLE)
        saved = {name: os.environ.get(name) for name in variables}
        os.environ["POSTHOG_HOST"] = self.url
        if not any(saved[name] for name in _KEY_VARIABLES):
            os.environ["POSTHOG_API_KEY"] = self.api_key
        else:
            self.api_key = str(saved["POSTHOG_API_KEY"] or saved["POSTHOG_PROJECT_API_KEY"])
        if not saved[_SECRET_VARIABLE]:
            os.environ[_SECRET_VARIABLE] = TEST_SECRET
        try:
            yield self
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value


def _known_clients() -> list[Client]:
    import posthog

    from posthog_identity.client import process_clients

    clients = process_clients()
    if posthog.default_client is not None and posthog.default_client not in clients:
        clients.append(posthog.default_client)
    return clients
