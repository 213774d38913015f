"""The flags a sink serves: static values, definitions, and the `/flags` answer.

Definitions are evaluated by posthog-python's own local evaluation, through its
public client API only (`Client.load_feature_flags` and
`Client.get_all_flags_and_payloads(only_evaluate_locally=True)`), with the
definitions loaded over HTTP from the sink itself, as an app's client loads
them from PostHog. So a remote answer agrees with a local evaluation of the
same definitions by the installed posthog-python, whatever its version.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import time
import uuid
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from posthog.client import Client

from .remote_config import remote_config

__all__ = [
    "EXAMPLE_FLAG_DEFINITIONS",
    "FlagBook",
    "FlagValue",
    "LocalEvaluator",
    "flags_reply",
]

#: A flag's value: on, off, or on with this variant.
FlagValue = bool | str

#: Two flags in the shape of PostHog's local-evaluation API, for demos and tests:
#: `beta-banner`, a boolean rolled out to 50% of people, and `checkout-experiment`,
#: an A/B test splitting everyone 50/50 between `control` and `test`, with a
#: JSON payload per variant. PostHog sends payloads JSON-encoded, as here.
EXAMPLE_FLAG_DEFINITIONS: tuple[dict[str, Any], ...] = (
    {
        "id": 1,
        "team_id": 1,
        "name": "Beta banner for half of the people",
        "key": "beta-banner",
        "active": True,
        "deleted": False,
        "ensure_experience_continuity": False,
        "filters": {
            "groups": [{"properties": [], "rollout_percentage": 50, "variant": None}],
            "multivariate": None,
            "payloads": {"true": json.dumps({"text": "Try the new beta!"})},
        },
    },
    {
        "id": 2,
        "team_id": 1,
        "name": "Checkout experiment",
        "key": "checkout-experiment",
        "active": True,
        "deleted": False,
        "ensure_experience_continuity": False,
        "filters": {
            "groups": [{"properties": [], "rollout_percentage": 100, "variant": None}],
            "multivariate": {
                "variants": [
                    {"key": "control", "name": "Control", "rollout_percentage": 50},
                    {"key": "test", "name": "One-click checkout", "rollout_percentage": 50},
                ]
            },
            "payloads": {
                "control": json.dumps({"button": "Proceed to checkout", "color": "blue"}),
                "test": json.dumps({"button": "Buy now", "color": "green"}),
            },
        },
    },
)


@dataclass(frozen=True)
class FlagBook:
    """One checked flag configuration: what `/flags` and `/flags/definitions` serve.

    Build it with `FlagBook.build`; a sink swaps whole books, never edits one.
    """

    flags: Mapping[str, FlagValue]
    payloads: Mapping[str, str]
    definitions: tuple[dict[str, Any], ...]
    group_type_mapping: Mapping[str, str]
    definitions_body: bytes
    etag: str

    @classmethod
    def build(
        cls,
        flags: Mapping[str, FlagValue] | None = None,
        flag_payloads: Mapping[str, Any] | None = None,
        flag_definitions: Iterable[Mapping[str, Any]] | None = None,
        group_type_mapping: Mapping[str, str] | None = None,
    ) -> FlagBook:
        """Check and copy a configuration.

        :raises ValueError: for a flag value or payload key that is not one of
            `flags`, or a definition that is not a JSON object with a unique key.
        """
        checked = _check_flags(flags or {})
        unknown = sorted(set(flag_payloads or {}) - set(checked))
        if unknown:
            raise ValueError(f"flag_payloads for flags that are not in flags: {unknown}")
        definitions = tuple(_check_definitions(flag_definitions or (), checked))
        mapping = {str(k): str(v) for k, v in (group_type_mapping or {}).items()}
        body = json.dumps(
            {"flags": list(definitions), "group_type_mapping": mapping, "cohorts": {}}
        ).encode()
        return cls(
            flags=checked,
            # PostHog sends payloads JSON-encoded; posthog-js parses them back.
            payloads={key: json.dumps(value) for key, value in (flag_payloads or {}).items()},
            definitions=definitions,
            group_type_mapping=mapping,
            definitions_body=body,
            etag=hashlib.sha256(body).hexdigest()[:32],
        )

    @property
    def has_flags(self) -> bool:
        return bool(self.flags or self.definitions)

    def ids(self) -> dict[str, int]:
        """Each flag's id: static flags numbered from 1, then the definitions'
        own ids (or their position when they have none)."""
        ids = {key: index for index, key in enumerate(self.flags, start=1)}
        for position, definition in enumerate(self.definitions, start=len(ids) + 1):
            given = definition.get("id")
            ids[definition["key"]] = (
                given if isinstance(given, int) and not isinstance(given, bool) else position
            )
        return ids

    def payload_for(self, key: str, value: FlagValue) -> str | None:
        """A definition's payload for the value it evaluated to (by variant, or "true")."""
        if value is False:
            return None
        for definition in self.definitions:
            if definition["key"] == key:
                payloads = (definition.get("filters") or {}).get("payloads") or {}
                found = payloads.get("true" if value is True else value)
                return found if isinstance(found, str) else None
        return None


def _check_flags(flags: Mapping[str, FlagValue]) -> dict[str, FlagValue]:
    for key, value in flags.items():
        if not isinstance(key, str) or not key:
            raise ValueError(f"flag keys must be non-empty strings, not {key!r}")
        if not isinstance(value, bool) and (not isinstance(value, str) or not value):
            raise ValueError(f"flag {key!r} must be True, False or a variant name, not {value!r}")
    return dict(flags)


def _check_definitions(
    definitions: Iterable[Mapping[str, Any]], taken: Collection[str]
) -> list[dict[str, Any]]:
    """Copies of flag definitions in PostHog's local-evaluation shape, checked.

    Each needs a unique non-empty `key` (not one of `taken`), object `filters`
    if any, and payloads that are JSON-encoded strings, as PostHog sends them.
    """
    checked: list[dict[str, Any]] = []
    seen = set(taken)
    for index, definition in enumerate(definitions):
        key = definition.get("key") if isinstance(definition, Mapping) else None
        if not isinstance(key, str) or not key:
            raise ValueError(f"flag definition {index} is not an object with a non-empty 'key'")
        if key in seen:
            raise ValueError(f"flag {key!r} is defined more than once")
        seen.add(key)
        try:
            copied: dict[str, Any] = json.loads(json.dumps(definition, allow_nan=False))
        except (TypeError, ValueError) as exc:
            raise ValueError(f"flag {key!r} is not JSON: {exc}") from None
        filters = copied.get("filters")
        if filters is not None and not isinstance(filters, dict):
            raise ValueError(f"flag {key!r}: 'filters' must be an object")
        payloads = (filters or {}).get("payloads") or {}
        if not isinstance(payloads, dict) or not all(
            isinstance(value, str) and _is_json(value) for value in payloads.values()
        ):
            raise ValueError(f"flag {key!r}: 'payloads' must map values to JSON-encoded strings")
        checked.append(copied)
    return checked


def _is_json(text: str) -> bool:
    try:
        json.loads(text)
    except ValueError:
        return False
    return True


def _object(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def _accepts(function: Any, name: str) -> bool:
    return name in inspect.signature(function).parameters


class LocalEvaluator:
    """posthog-python's public local evaluation, over the definitions a sink serves.

    :param host: the sink's URL; the client loads `/flags/definitions` from it.
    :param token: the project key the client asks with.
    :param key: the personal API key it asks with (the sink knows it as its own).
    """

    def __init__(self, host: str, token: str, key: str) -> None:
        # Newer clients name the key `secret_key` and warn on the old name.
        key_option = "secret_key" if _accepts(Client, "secret_key") else "personal_api_key"
        options: dict[str, Any] = {key_option: key}
        self._client = Client(
            token,
            host=host,
            send=False,
            # No poller: the sink's definitions change only with a new evaluator.
            enable_local_evaluation=False,
            **options,
        )
        self._client.load_feature_flags()  # type: ignore[no-untyped-call]
        self._with_device_id = _accepts(self._client.get_all_flags_and_payloads, "device_id")

    def evaluate(self, request: Mapping[str, Any]) -> dict[str, FlagValue]:
        """Every defined flag's value for a flags request's person, groups and device.

        A flag the client cannot decide locally (it needs what PostHog stored
        about the person) is off: the sink stores nothing.
        """
        options: dict[str, Any] = {}
        device_id = request.get("device_id") or request.get("$device_id")
        if self._with_device_id and isinstance(device_id, str):
            options["device_id"] = device_id
        groups = {name: str(key) for name, key in _object(request.get("groups")).items()}
        answer = self._client.get_all_flags_and_payloads(
            str(request["distinct_id"]),
            groups=groups,
            person_properties=_object(request.get("person_properties")),
            group_properties=_object(request.get("group_properties")),
            only_evaluate_locally=True,
            **options,
        )
        values: dict[str, FlagValue] = {}
        for key, value in (answer.get("featureFlags") or {}).items():
            values[key] = value if isinstance(value, bool | str) and value != "" else False
        return values

    def close(self) -> None:
        self._client.shutdown()


def _flag_record(
    key: str, value: FlagValue, flag_id: int, payload: str | None, *, typed: bool
) -> dict[str, Any]:
    """One flag of a v2 flags response, as posthog-js's `normalizeFlagsResponse` reads it.

    Its value is `variant ?? enabled`; its payload is `metadata.payload`, a JSON
    string, read only when enabled. `typed` adds posthog-python's `/flags?v=4` value.
    """
    enabled = value is not False
    record: dict[str, Any] = {
        "key": key,
        "enabled": enabled,
        "variant": value if isinstance(value, str) else None,
        "reason": (
            {
                "code": "condition_match",
                "condition_index": 0,
                "description": "Matched condition set 1",
            }
            if enabled
            else {"code": "no_condition_match", "description": "No matching condition set"}
        ),
        "metadata": {"id": flag_id, "version": 1},
    }
    if payload is not None and enabled:
        record["metadata"]["payload"] = payload
    if typed:
        record["value"] = value
    return record


def _requested_keys(request: Mapping[str, Any]) -> list[Any] | None:
    """The flag keys a flags request limits itself to, if any.

    posthog-js sends `flag_keys`, posthog-python `flag_keys_to_evaluate`.
    """
    for name in ("flag_keys", "flag_keys_to_evaluate"):
        keys = request.get(name)
        if isinstance(keys, list):
            return keys
    return None


def flags_reply(
    flags: Mapping[str, FlagValue],
    payloads: Mapping[str, str],
    ids: Mapping[str, int],
    request: Mapping[str, Any],
    *,
    decide: bool,
    version: int,
    with_config: bool,
) -> dict[str, Any]:
    """PostHog's answer to a flags request, in the shape its version asks for.

    `/flags/?v=2` and up (and `/decide/?v=4`) get `flags` records; older
    versions get the legacy `featureFlags` and `featureFlagPayloads` maps.
    `/decide/` (`decide`) and `?config=true` (`with_config`) also carry the
    remote config. `ids` are the flags' ids.
    """
    keys = _requested_keys(request)
    selected = {
        key: value
        for key, value in flags.items()
        if request.get("disable_flags") is not True and (keys is None or key in keys)
    }
    reply: dict[str, Any] = {}
    if decide or with_config:
        token = str(request.get("token", request.get("api_key")))
        reply.update(remote_config(token, has_feature_flags=bool(flags)))
        reply.update(config={"enable_collect_everything": True}, toolbarParams={})
    if version >= (4 if decide else 2):
        typed = not decide and version >= 4
        reply["flags"] = {
            key: _flag_record(key, value, ids[key], payloads.get(key), typed=typed)
            for key, value in selected.items()
        }
    else:
        reply["featureFlags"] = selected
        reply["featureFlagPayloads"] = {
            key: payloads[key] for key, value in selected.items() if value and key in payloads
        }
    reply.update(
        errorsWhileComputingFlags=False,
        requestId=str(uuid.uuid4()),
        evaluatedAt=int(time.time() * 1000),
    )
    return reply
