"""Fixtures of the sink's tests: sinks serving flags, flag definitions or a static
directory, and a posthog client configuration independent of the environment.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from posthog_identity.testing import EXAMPLE_FLAG_DEFINITIONS, Sink
from tests.helpers.sink import FLAGS, PAYLOADS


@pytest.fixture(autouse=True)
def _default_capture_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    # "Default configuration" must not depend on the developer's environment.
    monkeypatch.delenv("POSTHOG_CAPTURE_MODE", raising=False)
    monkeypatch.delenv("POSTHOG_CAPTURE_COMPRESSION", raising=False)


@pytest.fixture
def flagged() -> Iterator[Sink]:
    with Sink(flags=FLAGS, flag_payloads=PAYLOADS) as running:
        yield running


@pytest.fixture
def defined() -> Iterator[Sink]:
    with Sink(flag_definitions=EXAMPLE_FLAG_DEFINITIONS) as running:
        yield running


@pytest.fixture
def static_dir(tmp_path: Path) -> Path:
    root = tmp_path / "dist"
    (root / "sub").mkdir(parents=True)
    (root / "1.449.2").mkdir()
    files = {
        "array.js": "/* array */",
        "surveys.js": "/* surveys */",
        "recorder.js": "/* recorder, unversioned */",
        "1.449.2/recorder.js": "/* recorder 1.449.2 */",
        "sub/inner.js": "/* inner */",
        "data.json": "{}",
        "style.css": "a {}",
        "image.png": "png",
        "blob.unknownext": "blob",
    }
    for name, text in files.items():
        (root / name).write_text(text, encoding="utf-8")
    (tmp_path / "secret.txt").write_text("classified", encoding="utf-8")
    (root / "escape.txt").symlink_to(tmp_path / "secret.txt")
    (root / "link-out").symlink_to(tmp_path, target_is_directory=True)
    (root / "alias.js").symlink_to(root / "array.js")
    (root / "loop").symlink_to(root / "loop")
    return root


@pytest.fixture
def static_sink(static_dir: Path) -> Iterator[Sink]:
    with Sink(static_dir=static_dir) as running:
        yield running
