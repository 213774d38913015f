"""`lazy_exports`: a package's PEP 562 ``__getattr__``/``__dir__`` that imports a name's home
module on first use, keeps the name in the package, and words a miss as Python does.
"""

from __future__ import annotations

import importlib
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType

import pytest

import posthog_identity
import posthog_identity.testing

INIT = """
from posthog_identity.lazy import lazy_exports

EAGER = "eager"
_HOMES = {"Heavy": ".heavy", "VALUE": ".heavy", "Absent": ".heavy"}
__getattr__, __dir__ = lazy_exports(__name__, _HOMES, globals())
"""
HEAVY = """
class Heavy:
    pass

VALUE = 42
"""


@pytest.fixture
def package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[ModuleType]:
    """A fresh package on disk whose `Heavy` and `VALUE` live in `.heavy`, not imported yet."""
    name = f"lazy_{uuid.uuid4().hex}"
    (tmp_path / name).mkdir()
    (tmp_path / name / "__init__.py").write_text(INIT)
    (tmp_path / name / "heavy.py").write_text(HEAVY)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield importlib.import_module(name)
    for module in [m for m in sys.modules if m == name or m.startswith(name + ".")]:
        del sys.modules[module]


def home(package: ModuleType) -> str:
    return package.__name__ + ".heavy"


def test_a_name_is_imported_only_when_first_used(package: ModuleType) -> None:
    assert home(package) not in sys.modules

    package.VALUE  # noqa: B018

    assert home(package) in sys.modules


def test_the_first_use_gives_the_object_of_the_names_home(package: ModuleType) -> None:
    heavy = importlib.import_module(home(package))

    assert package.Heavy is heavy.Heavy
    assert package.VALUE == 42


def test_a_used_name_is_kept_in_the_package_and_not_looked_up_again(package: ModuleType) -> None:
    first = package.Heavy
    heavy = sys.modules[home(package)]
    heavy.Heavy = type("Replaced", (), {})  # type: ignore[attr-defined]

    assert vars(package)["Heavy"] is first
    assert package.Heavy is first


def test_an_unknown_name_is_an_attribute_error_worded_as_pythons_own(
    package: ModuleType,
) -> None:
    with pytest.raises(AttributeError) as raised:
        package.nope  # noqa: B018

    assert str(raised.value) == f"module {package.__name__!r} has no attribute 'nope'"
    assert not hasattr(package, "nope")
    assert home(package) not in sys.modules, "a miss imports nothing"


def test_a_name_its_home_lacks_is_an_attribute_error_and_kept_nowhere(
    package: ModuleType,
) -> None:
    assert not hasattr(package, "Absent")
    assert "Absent" not in vars(package)


def test_dir_lists_the_lazy_names_before_their_import_sorted_and_once(package: ModuleType) -> None:
    before = dir(package)
    package.Heavy  # noqa: B018
    after = dir(package)

    assert {"Heavy", "VALUE", "Absent", "EAGER"} <= set(before)
    assert before == sorted(before)
    assert after == sorted(after)
    assert after.count("Heavy") == 1, "a name used since is listed once"


@pytest.mark.parametrize(
    "exporter", [posthog_identity, posthog_identity.testing], ids=lambda m: m.__name__
)
def test_every_name_a_package_exports_lazily_resolves_and_is_listed(exporter: ModuleType) -> None:
    for name in exporter.__all__:
        assert getattr(exporter, name) is not None, name
    assert set(exporter.__all__) <= set(dir(exporter))
