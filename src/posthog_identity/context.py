"""The current request's identity, the posthog context every capture inherits, and
the request's properties an event gets when it is captured."""

from __future__ import annotations

import contextvars
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import posthog

from .identity import NOBODY
from .logs import logger

if TYPE_CHECKING:
    from types import TracebackType

    from posthog.client import Client

    from .exchange import Exchange
    from .identity import Identity, Report, Resolution

__all__ = [
    "EventEnricher",
    "bind",
    "current_exchange",
    "current_identity",
    "current_resolution",
    "enrich_events",
    "enriches",
    "forget_user",
    "grant_consent",
    "has_request",
    "identify_user",
    "rebind",
    "recheck_consent",
    "report_user",
    "revoke_consent",
    "settle",
]

_PERSONLESS = "$process_person_profile"
_exchange: contextvars.ContextVar[Exchange | None] = contextvars.ContextVar(
    "posthog_identity_exchange", default=None
)


def current_identity() -> Identity | None:
    """The current request's `Identity`, or None outside a request."""
    exchange = _exchange.get()
    return None if exchange is None else exchange.identity


def identify_user(user_id: object) -> None:
    """Tell the middleware who the user is now (call it from a login view).

    The link, the cookie and the snippet follow when the response starts;
    server captures made after this call already carry the user id.
    """
    exchange = _exchange.get()
    if exchange is None:
        logger.warning("posthog_identity: identify_user() called outside a request; ignored")
        return
    report = exchange.engine.coerce(user_id)
    if isinstance(report, str):
        rebind(exchange, lambda: exchange.set_explicit(report))


def forget_user() -> None:
    """Tell the middleware nobody is logged in now (call it from a logout view)."""
    exchange = _exchange.get()
    if exchange is None:
        logger.warning("posthog_identity: forget_user() called outside a request; ignored")
        return
    rebind(exchange, lambda: exchange.set_explicit(NOBODY))


def grant_consent() -> None:
    """The visitor agreed to tracking (call it from your cookie banner's endpoint).

    The identity lifecycle starts on this response (cookie, snippet, link);
    the decision is kept in the consent cookie for the following requests.
    Does nothing (a debug log line) when POSTHOG_IDENTITY_CONSENT is not-required.
    """
    _set_consent(True, "grant_consent")


def revoke_consent() -> None:
    """The visitor refused or withdrew consent.

    This response deletes the identity cookie, records the refusal in the
    consent cookie, and its page clears PostHog's browser storage and stops
    capturing. Server captures after the call go out personless, on a random id.
    """
    _set_consent(False, "revoke_consent")


def _set_consent(granted: bool, name: str) -> None:
    exchange = _exchange.get()
    if exchange is None:
        logger.warning("posthog_identity: %s() called outside a request; ignored", name)
        return
    changed: list[bool] = []
    rebind(exchange, lambda: changed.append(exchange.set_consent(granted)))
    if not changed[0]:
        logger.debug(
            "posthog_identity: %s() ignored: POSTHOG_IDENTITY_CONSENT is not-required", name
        )


def report_user(user_id: object) -> None:
    """For framework integrations: what the framework's auth says right now.

    Unlike `identify_user`, this is not a decision of the app: the middleware
    still reads the user again when the response starts. None means nobody.
    """
    exchange = _exchange.get()
    if exchange is None:
        return
    report = exchange.engine.coerce(user_id)
    # Most reports repeat what the request already says (an integration reports
    # before and after the view): the context is left as it is.
    if not exchange.explicit and exchange.changes(report):
        rebind(exchange, lambda: exchange.report(report))


def settle(exchange: Exchange, report: Report) -> None:
    """For the adapters: the user source's answer when the response starts.

    An authentication middleware inside ours has run by then; when the answer
    changes who the request is, the posthog context moves along.
    """
    if not exchange.explicit and exchange.changes(report):
        rebind(exchange, lambda: exchange.report(report))


def recheck_consent() -> None:
    """For framework integrations: ask the consent callable again.

    A callable that reads the framework's request answers "no record" until the
    framework has set the request up; the integration calls this once it has.
    """
    exchange = _exchange.get()
    if exchange is not None:
        rebind(exchange, exchange.ask_consent_again)


def current_resolution() -> Resolution | None:
    """The current request's full resolution (transition, cookie, link); for tools like the demo."""
    exchange = _exchange.get()
    return None if exchange is None else exchange.resolution


def current_exchange() -> Exchange | None:
    """The current request's exchange, or None outside a request (for the error hooks)."""
    return _exchange.get()


def has_request() -> bool:
    """True inside a request the middleware handles (integrations check their wrapping)."""
    return _exchange.get() is not None


class bind:
    """Make `exchange` current, in a fresh posthog context bound to its distinct id."""

    __slots__ = ("_context", "_exchange", "_token")

    def __init__(self, exchange: Exchange) -> None:
        self._exchange = exchange

    def __enter__(self) -> None:
        exchange = self._exchange
        self._token = _exchange.set(exchange)
        try:
            # Off: errors.py captures an unhandled error itself, once, only with
            # consent and POSTHOG_IDENTITY_CAPTURE_EXCEPTIONS, marked unhandled.
            context = self._context = posthog.new_context(fresh=True, capture_exceptions=False)
            context.__enter__()
            posthog.identify_context(exchange.identity.distinct_id)
            if exchange.personless():
                posthog.tag(_PERSONLESS, False)
            _describe(exchange)
        except BaseException:
            _exchange.reset(self._token)
            raise

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        try:
            self._context.__exit__(kind, error, trace)
        finally:
            _exchange.reset(self._token)


def rebind(exchange: Exchange, change: Callable[[], None]) -> None:
    """Apply `change` to the exchange and move the current posthog context along."""
    was_personless = exchange.personless()
    change()
    posthog.identify_context(exchange.identity.distinct_id)
    if exchange.personless():
        posthog.tag(_PERSONLESS, False)
    elif was_personless:
        # posthog's contexts cannot remove a tag; an explicit True overrides the
        # False that `bind` set, and means what its absence means.
        posthog.tag(_PERSONLESS, True)
    _describe(exchange)


# What `_describe` put on a context when the client adds the request's properties itself.
_NOTHING_PUT: tuple[bool, tuple[str, ...]] = (False, ())
_SESSION_ONLY: tuple[bool, tuple[str, ...]] = (True, ())


def _describe(exchange: Exchange) -> None:
    """Put the browser's session on the posthog context (it travels with the
    context, to a background job too), and the request's properties when the
    client cannot add them at capture time; or take them off again when consent
    went away (a tag cannot be removed: it is overwritten with None, which
    PostHog stores as no value)."""
    described = exchange.described
    if exchange.granted:
        if described is not None:
            return
        session = exchange.browser_session()
        if session is not None:
            posthog.set_context_session(session)
        if enriches(exchange.engine.client):
            exchange.described = _SESSION_ONLY if session is not None else _NOTHING_PUT
            return
        properties = exchange.request_properties()
        for key, value in properties.items():
            posthog.tag(key, value)
        exchange.described = (session is not None, tuple(properties))
    elif described is not None:
        had_session, keys = described
        if had_session:
            posthog.set_context_session("")  # an empty session id is not sent
        for key in keys:
            posthog.tag(key, None)
        exchange.described = None


# Events posthog builds without the context's tags (or with them as person
# properties): the request's properties never belonged on them.
_NOT_CAPTURED = frozenset(("$create_alias", "$groupidentify", "$set", "$set_once"))


class EventEnricher:
    """posthog's ``before_send`` for the clients the middleware sends through.

    posthog's client calls it in the capturing thread, so the request an event
    is captured in is current: its properties are built then, once per request,
    and only for a request that captures (most capture nothing). The event's own
    properties win; without consent nothing is added. `then` is the app's own
    ``before_send``, called after, once, with what it would have seen before.
    """

    __slots__ = ("then",)

    def __init__(self, then: Callable[[dict[str, Any]], Any] | None = None) -> None:
        self.then = then

    def __call__(self, event: dict[str, Any]) -> Any:
        exchange = _exchange.get()
        if exchange is not None and event.get("event") not in _NOT_CAPTURED:
            try:
                if exchange.granted:
                    properties = event["properties"]  # posthog always builds one
                    for key, value in exchange.request_properties().items():
                        if key not in properties:
                            properties[key] = value
            except Exception:
                logger.exception("posthog_identity: adding the request's properties failed")
        then = self.then
        return event if then is None else then(event)


def enriches(client: object) -> bool:
    """Does `client` add the request's properties at capture time (our `EventEnricher`)?

    Asked per request: an app may replace a client's ``before_send`` at any time,
    and ``posthog.setup()``, which every module-level call runs, gives the module
    client posthog's module attribute ``before_send`` each time.
    """
    if not isinstance(getattr(client, "before_send", None), EventEnricher):
        return False
    return client is not posthog.default_client or isinstance(posthog.before_send, EventEnricher)


def enrich_events(client: Client | None) -> None:
    """Have `client` add the request's properties to an event when it is captured.

    Through posthog's public ``before_send``, chained before the app's own (which
    then sees them, as it saw the context's tags before). posthog's module client
    takes the module attribute ``posthog.before_send`` again on every
    module-level call (``posthog.setup()``), so for that client the attribute is
    where the chain goes. Installing twice (a second middleware) changes nothing.
    The middlewares call it once, with the client their engine sends through.
    """
    if client is None:
        return
    if client is posthog.default_client:
        module_hook = posthog.before_send
        if not isinstance(module_hook, EventEnricher):
            module_hook = posthog.before_send = EventEnricher(_callable(module_hook))
        client.before_send = module_hook
        return
    own = getattr(client, "before_send", None)
    if not isinstance(own, EventEnricher):
        client.before_send = EventEnricher(_callable(own))


def _callable(hook: object) -> Any:
    # posthog ignores a before_send that is not callable (and says so); so do we.
    return hook if callable(hook) else None
