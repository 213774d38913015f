"""The process's one posthog client, and its flush when the process exits.

The module-level ``posthog.capture()`` a view calls and the middleware's own
events (the login link) go through one client: one queue, one sending thread,
one flush at shutdown. A second client for the same project would compete with
the first and make posthog warn about "Multiple active PostHog clients".
"""

from __future__ import annotations

import atexit
import inspect
import logging
import time
import weakref
from typing import Any

import posthog
from posthog.client import Client

from .resend import LinkResender, protect, resender_for
from .settings import ENV_VARS, Settings

__all__ = ["FLUSH_TIMEOUT", "flush", "process_client", "process_clients"]

logger = logging.getLogger("posthog_identity")

#: How long a shutdown waits for queued events, and kept login links, to reach PostHog.
FLUSH_TIMEOUT = 5.0

# posthog 7.x renamed `personal_api_key` to `secret_key`; the old name warns.
_SECRET_KEY = (
    "secret_key"
    if "secret_key" in inspect.signature(Client.__init__).parameters
    else "personal_api_key"
)

# The module attribute `posthog.setup()` reads the personal key from (renamed alike).
_MODULE_SECRET_KEY = "secret_key" if hasattr(posthog, "secret_key") else "personal_api_key"
# posthog's own default flag timeout: a module still holding it was not tuned by the app.
_DEFAULT_FLAGS_TIMEOUT = (
    inspect.signature(Client.__init__).parameters["feature_flags_request_timeout_seconds"].default
)

# Clients the middlewares use, flushed together at process exit (WSGI has no
# shutdown event); posthog's own exit hook waits one second in all.
_flushed_at_exit: weakref.WeakSet[Client] = weakref.WeakSet()


def process_client(settings: Settings, given: Client | None = None) -> Client | None:
    """The client the middleware sends through; None when there is nothing to send.

    In order: the client passed in (``client=``); posthog's module-level client
    when the app configured it (``posthog.api_key`` or ``posthog.project_api_key``
    set, or a default client with a key); else, with an API key in the settings
    and the middleware not disabled, a new client that also becomes posthog's
    default client, so a view's ``posthog.capture()`` reaches PostHog with the
    request's identity. Whichever it is, it is flushed at process exit, and
    the login links it fails to deliver are kept and sent again (resend.py).
    """
    if given is not None:
        client: Client | None = given
    elif settings.disabled:
        return None
    else:
        client = _module_client(settings)
        if client is None and settings.api_key is not None:
            client = _build(settings)
            _become_default(client)
    if client is not None:
        _flushed_at_exit.add(client)
        if protect(client) is None:
            logger.warning(
                "posthog_identity: this posthog client gives no way to see failed uploads: "
                "login links it fails to deliver are not kept to send again"
            )
    return client


def _module_client(settings: Settings) -> Client | None:
    """posthog's module-level client, when the app configured one; else None."""
    existing = posthog.default_client
    if existing is not None and existing.api_key:
        client: Client = existing
    elif _stripped(posthog.project_api_key) or _stripped(posthog.api_key):
        _prepare_module(settings)
        # posthog's own constructor for its module client, from the app's settings.
        client = posthog.setup()
    else:
        return None
    if settings.api_key is not None and client.api_key != settings.api_key:
        logger.warning(
            "posthog_identity: %s differs from the API key posthog's module is "
            "configured with; events go through posthog's module client, with its key",
            ENV_VARS["api_key"],
        )
    return client


def _prepare_module(settings: Settings) -> None:
    """Before ``posthog.setup()`` builds the module client the app configured, give
    posthog's module what flag bootstrapping needs and the app left unset.

    Module attributes are posthog's public way to configure that client; once it
    is built they are read no more. The personal key (local evaluation) is handed
    only when the app set none. Without any, each page asks ``/flags``: then the
    flag timeout too, while it is still posthog's default (3 s), so requests a
    page gave up on end with it. The app's own choices stand. Logged once.
    """
    if not settings.bootstrap_flags:
        return
    handed: list[str] = []
    key = settings.personal_api_key
    has_key = bool(
        _stripped(getattr(posthog, "secret_key", None)) or _stripped(posthog.personal_api_key)
    )
    if key is not None and not has_key:
        setattr(posthog, _MODULE_SECRET_KEY, key)
        handed.append(f"{ENV_VARS['personal_api_key']} as posthog.{_MODULE_SECRET_KEY}")
        has_key = True
    if not has_key and posthog.feature_flags_request_timeout_seconds == _DEFAULT_FLAGS_TIMEOUT:
        posthog.feature_flags_request_timeout_seconds = settings.flags_timeout
        handed.append(
            f"{ENV_VARS['flags_timeout']} as posthog.feature_flags_request_timeout_seconds"
        )
    if handed:
        logger.info(
            "posthog_identity: posthog's module is configured by the app; for flag "
            "bootstrapping its client is built with %s",
            " and ".join(handed),
        )


def _build(settings: Settings) -> Client:
    assert settings.api_key is not None
    credentials: dict[str, Any] = {_SECRET_KEY: settings.personal_api_key}
    resender = LinkResender()
    client = Client(
        settings.api_key,
        host=settings.host,
        feature_flags_request_timeout_seconds=settings.flags_timeout,
        on_error=resender,
        **credentials,
    )
    protect(client, resender)
    return client


def _become_default(client: Client) -> None:
    """Make `client` the one posthog's module-level functions use.

    Every module-level function (``posthog.capture``, ``posthog.flush``...) goes
    through ``posthog.setup()``, which builds a client only while
    ``posthog.default_client`` is None and otherwise reuses it. Assigning that
    attribute therefore hands posthog the client exactly as the settings built
    it (host, flag timeout, personal key). Setting ``posthog.api_key`` and
    ``posthog.host`` instead would have posthog build its client from its own
    defaults (a 3 s flag timeout, no personal key).
    """
    posthog.default_client = client


def _stripped(value: object) -> str:
    return value.strip() if isinstance(value, str) else ""


def process_clients() -> list[Client]:
    """The clients the middlewares of this process send with (flushed at exit)."""
    return list(_flushed_at_exit)


def flush(clients: list[Client], timeout: float = FLUSH_TIMEOUT) -> None:
    """Shutdown: deliver queued events, then kept login links, within `timeout` in all.

    What is still undelivered then is given up: posthog logs its count of
    queued events, the resender its count of lost login links. Never raises.
    """
    deadline = time.monotonic() + timeout
    for client in clients:
        try:
            client.flush(timeout_seconds=max(deadline - time.monotonic(), 0.0))
        except Exception:
            logger.exception("posthog_identity: flushing events failed")
    for client in clients:
        resender = resender_for(client)
        if resender is not None:
            resender.close(max(deadline - time.monotonic(), 0.0))


def _flush_at_exit() -> None:
    flush(list(_flushed_at_exit))


atexit.register(_flush_at_exit)
