"""Fixtures every folder shares: a real sink and a posthog client posting to it, settings,
the basic site through either adapter, a client that fails, and a sink serving flags."""

from __future__ import annotations

import logging
import signal
from collections.abc import Iterator

import posthog
import pytest

from posthog_identity import client as client_module
from posthog_identity.settings import Settings
from posthog_identity.testing import Sink
from tests.helpers.drivers import ADAPTERS, Driver, driver_for, make_site
from tests.helpers.faults import BrokenClient
from tests.helpers.flags import posthog_client
from tests.helpers.project import API_KEY, SECRET
from tests.sites.flags import INDEPENDENT_KEY, PERSONAL_KEY, serving_flags

# A shell starts background commands (`nox &`) with SIGINT ignored, and an
# ignored signal stays ignored in every server the tests start: waitress and
# the demo, stopped with Ctrl-C's SIGINT, would then have to be killed. A
# handled signal is reset to its default in a child, so handle it here.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(autouse=True)
def _forget_built_clients() -> Iterator[None]:
    """Clients built by a test's middleware post to that test's sink, gone at exit;
    one that became posthog's default client (and the module's ``before_send``
    the middleware chained into) must not serve the next test."""
    default, before_send = posthog.default_client, posthog.before_send
    yield
    client_module._flushed_at_exit.clear()
    posthog.default_client, posthog.before_send = default, before_send


@pytest.fixture
def sink() -> Iterator[Sink]:
    with Sink() as running:
        yield running


@pytest.fixture
def client(sink: Sink) -> Iterator[posthog.Client]:
    """posthog's real client, sending to the sink over HTTP from its own thread."""
    real = posthog.Client(API_KEY, host=sink.url, flush_interval=0.05)
    yield real
    real.shutdown()


@pytest.fixture
def module_posthog(sink: Sink) -> Iterator[None]:
    """Point the module-level `posthog.capture` at the sink for one test.

    The module's client is built here rather than by `posthog.setup()`, which
    batches events for 5 s: this one sends them at once, so the test waits on
    their arrival, not on the batch window.
    """
    saved = posthog.api_key, posthog.host, posthog.default_client
    posthog.api_key, posthog.host = API_KEY, sink.url
    posthog.default_client = posthog.Client(API_KEY, host=sink.url, flush_interval=0.05)
    yield
    if posthog.default_client is not None:
        posthog.default_client.shutdown()
    posthog.api_key, posthog.host, posthog.default_client = saved


@pytest.fixture
def settings(sink: Sink) -> Settings:
    return Settings(secrets=(SECRET,), api_key=API_KEY, host=sink.url)


@pytest.fixture(params=ADAPTERS)
def adapter(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def site(adapter: str, settings: Settings, client: posthog.Client) -> Driver:
    return driver_for(adapter, make_site(adapter, settings, client))


@pytest.fixture
def caplog_identity(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="posthog_identity")
    return caplog


@pytest.fixture
def broken(sink: Sink) -> Iterator[posthog.Client]:
    """A real client whose alias and flush fail."""
    client = BrokenClient(API_KEY, host=sink.url)
    yield client
    client.shutdown()


# -- feature flags: a sink serving flag definitions, and clients evaluating them locally


@pytest.fixture
def flag_sink() -> Iterator[Sink]:
    """A sink serving the flag definitions of `tests.sites.flags`."""
    with serving_flags() as sink:
        yield sink


@pytest.fixture
def local_client(flag_sink: Sink) -> Iterator[posthog.Client]:
    """The middleware's client: local evaluation with its own personal key."""
    with posthog_client(flag_sink.url, secret_key=PERSONAL_KEY) as client:
        yield client


@pytest.fixture
def independent(flag_sink: Sink) -> Iterator[posthog.Client]:
    """Another application's client on the same project: the SDK's own answer."""
    with posthog_client(flag_sink.url, secret_key=INDEPENDENT_KEY) as client:
        yield client
