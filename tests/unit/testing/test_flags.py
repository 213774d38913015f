"""The flags a sink serves: fixed values, and definitions evaluated per person by
posthog-python's local evaluation; `/flags` in each version's shape, `/flags/definitions`.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import pytest

from posthog_identity.testing import EXAMPLE_FLAG_DEFINITIONS, Sink
from tests.helpers.sink import (
    DEFINITIONS_PATH,
    FLAGS,
    FLAGS_REQUEST,
    KEY,
    PERSONAL,
    ask_definitions,
    ask_flags,
    client,
    send,
)

# -- feature flags ----------------------------------------------------------------


def test_flags_v2_answers_an_empty_flag_set(sink: Sink) -> None:
    reply = ask_flags(sink)

    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json"
    answer = reply.json()
    assert set(answer) == {"flags", "errorsWhileComputingFlags", "requestId", "evaluatedAt"}
    assert answer["flags"] == {}
    assert answer["errorsWhileComputingFlags"] is False
    assert uuid.UUID(answer["requestId"])
    assert isinstance(answer["evaluatedAt"], int)


def test_legacy_flags_answer_empty_feature_flag_maps(sink: Sink) -> None:
    answer = ask_flags(sink, "/flags/").json()

    assert answer["featureFlags"] == {}
    assert answer["featureFlagPayloads"] == {}
    assert answer["errorsWhileComputingFlags"] is False
    assert "flags" not in answer


@pytest.mark.parametrize(
    ("path", "shape"),
    [
        ("/flags/?v=2", "flags"),
        ("/flags?v=2", "flags"),
        ("/flags/?v=4", "flags"),
        ("/flags/", "featureFlags"),
        ("/flags/?v=1", "featureFlags"),
        ("/flags/?v=next", "featureFlags"),
        ("/decide/?v=3", "featureFlags"),
        ("/decide/?v=4", "flags"),
    ],
)
def test_flags_answer_in_the_shape_their_version_asks_for(
    flagged: Sink, path: str, shape: str
) -> None:
    answer = ask_flags(flagged, path).json()
    assert {"flags", "featureFlags"} & set(answer) == {shape}


def test_configured_flags_answer_v2_records(flagged: Sink) -> None:
    # posthog-js's normalizeFlagsResponse: value = variant ?? enabled; payload =
    # metadata.payload (a JSON string) of the enabled flags.
    flags = ask_flags(flagged).json()["flags"]

    assert flags == {
        "new-checkout": {
            "key": "new-checkout",
            "enabled": True,
            "variant": "variant-b",
            "reason": {
                "code": "condition_match",
                "condition_index": 0,
                "description": "Matched condition set 1",
            },
            "metadata": {"id": 1, "version": 1, "payload": '{"button": "green"}'},
        },
        "beta": {
            "key": "beta",
            "enabled": True,
            "variant": None,
            "reason": {
                "code": "condition_match",
                "condition_index": 0,
                "description": "Matched condition set 1",
            },
            "metadata": {"id": 2, "version": 1, "payload": '"hello"'},
        },
        "old-nav": {
            "key": "old-nav",
            "enabled": False,
            "variant": None,
            "reason": {"code": "no_condition_match", "description": "No matching condition set"},
            "metadata": {"id": 3, "version": 1},
        },
    }


def test_configured_flags_answer_legacy_maps(flagged: Sink) -> None:
    answer = ask_flags(flagged, "/flags/").json()

    assert answer["featureFlags"] == FLAGS
    assert answer["featureFlagPayloads"] == {
        "new-checkout": '{"button": "green"}',
        "beta": '"hello"',
    }


def test_v4_flag_records_carry_typed_values(flagged: Sink) -> None:
    flags = ask_flags(flagged, "/flags/?v=4").json()["flags"]
    assert {key: record["value"] for key, record in flags.items()} == FLAGS


def test_posthog_python_reads_the_configured_flags(flagged: Sink) -> None:
    with client(flagged, sync_mode=True) as ph:
        flags = ph.evaluate_flags("user-1")

    assert [flags.get_flag(key) for key in FLAGS] == ["variant-b", True, False]
    assert flags.get_flag("missing") is None
    assert flags.get_flag_payload("new-checkout") == {"button": "green"}
    [request] = flagged.flag_requests()
    assert (request["distinct_id"], request["api_key"]) == ("user-1", KEY)


def test_flag_keys_limit_the_answer(flagged: Sink) -> None:
    answer = ask_flags(flagged, request={**FLAGS_REQUEST, "flag_keys": ["beta"]}).json()
    assert list(answer["flags"]) == ["beta"]


def test_disable_flags_answers_no_flags(flagged: Sink) -> None:
    answer = ask_flags(flagged, request={**FLAGS_REQUEST, "disable_flags": True}).json()
    assert answer["flags"] == {}


@pytest.mark.parametrize("path", ["/decide/?v=3", "/flags/?v=2&config=true"])
def test_decide_and_config_true_carry_the_remote_config(flagged: Sink, path: str) -> None:
    answer = ask_flags(flagged, path).json()
    assert answer["supportedCompression"] == ["gzip", "gzip-js"]
    assert answer["sessionRecording"] is False
    assert answer["hasFeatureFlags"] is True


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"flags": {"beta": 1}}, "True, False or a variant name"),
        ({"flags": {"beta": ""}}, "True, False or a variant name"),
        ({"flags": {"": True}}, "non-empty strings"),
        ({"flags": {"beta": True}, "flag_payloads": {"other": 1}}, r"\['other'\]"),
    ],
    ids=["number", "empty-variant", "empty-key", "payload-without-flag"],
)
def test_invalid_flags_are_refused_at_construction(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Sink(**options)


# -- flag definitions: local evaluation, and /flags evaluating them ---------------


def definition(key: str, *groups: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A flag definition in PostHog's local-evaluation shape."""
    filters = {"groups": list(groups) or [{"properties": [], "rollout_percentage": 100}]}
    filters.update(extra.pop("filters", {}))
    return {"id": extra.pop("id", 7), "key": key, "active": True, "filters": filters, **extra}


PRO_ONLY = definition(
    "pro-dashboard",
    {
        "properties": [{"key": "plan", "value": ["pro"], "operator": "exact", "type": "person"}],
        "rollout_percentage": 100,
    },
)


ENTERPRISE_COMPANIES = definition(
    "sso",
    {
        "properties": [
            {"key": "tier", "value": "enterprise", "operator": "exact", "type": "group"}
        ],
        "rollout_percentage": 100,
    },
    filters={"aggregation_group_type_index": 0},
)


def evaluated(sink: Sink, distinct_id: str, **request: Any) -> dict[str, Any]:
    """posthog-python's /flags?v=4 answer as {key: (value, payload)}."""
    body = {"api_key": KEY, "distinct_id": distinct_id, **request}
    flags = ask_flags(sink, "/flags/?v=4", body).json()["flags"]
    return {k: (r["value"], r["metadata"].get("payload")) for k, r in flags.items()}


def test_definitions_answer_in_the_local_evaluation_shape(defined: Sink) -> None:
    reply = ask_definitions(defined)

    assert reply.status == 200
    assert reply.headers["Content-Type"] == "application/json"
    assert reply.json() == {
        "flags": list(EXAMPLE_FLAG_DEFINITIONS),
        "group_type_mapping": {},
        "cohorts": {},
    }
    assert re.fullmatch(r'"[0-9a-f]{32}"', reply.headers["ETag"])


def test_definitions_are_served_at_the_older_local_evaluation_path(defined: Sink) -> None:
    reply = ask_definitions(defined, path="/api/feature_flag/local_evaluation/")
    assert reply.status == 200
    assert [flag["key"] for flag in reply.json()["flags"]] == ["beta-banner", "checkout-experiment"]


@pytest.mark.parametrize("form", ["{}", "W/{}", "*", '"other", {}'])
def test_definitions_matching_if_none_match_get_304(defined: Sink, form: str) -> None:
    etag = ask_definitions(defined).headers["ETag"]

    reply = ask_definitions(defined, etag=form.format(etag))

    assert reply.status == 304
    assert reply.body == b""
    assert reply.headers["ETag"] == etag


def test_definitions_with_a_stale_etag_get_the_definitions(defined: Sink) -> None:
    reply = ask_definitions(defined, etag='"stale"')
    assert reply.status == 200
    assert len(reply.json()["flags"]) == 2


def test_definitions_of_a_project_without_flags_are_empty(sink: Sink) -> None:
    assert ask_definitions(sink).json() == {"flags": [], "group_type_mapping": {}, "cohorts": {}}


@pytest.mark.parametrize(
    ("options", "key", "status", "code"),
    [
        pytest.param({}, None, 401, "not_authenticated", id="no-key"),
        pytest.param(
            {"personal_api_keys": ["phx_other"]}, PERSONAL, 401, "authentication_failed", id="bad"
        ),
        pytest.param(
            {"unscoped_personal_api_keys": [PERSONAL]},
            PERSONAL,
            403,
            "permission_denied",
            id="scope",
        ),
    ],
)
def test_definitions_refuse_a_missing_invalid_or_unscoped_key(
    options: dict[str, Any], key: str | None, status: int, code: str
) -> None:
    with Sink(flag_definitions=EXAMPLE_FLAG_DEFINITIONS, **options) as sink:
        reply = ask_definitions(sink, key=key)

    assert reply.status == status
    assert reply.json()["type"] == "authentication_error"
    assert reply.json()["code"] == code


def test_definitions_accept_a_listed_key() -> None:
    with Sink(flag_definitions=EXAMPLE_FLAG_DEFINITIONS, personal_api_keys=[PERSONAL]) as sink:
        assert ask_definitions(sink).status == 200


def test_definitions_need_the_project_token(defined: Sink) -> None:
    reply = ask_definitions(defined, token=None)
    assert reply.status == 400
    assert "token" in reply.json()["detail"]


def test_definitions_refuse_post(defined: Sink) -> None:
    assert send(defined.url + DEFINITIONS_PATH, b"{}").status == 405


def test_posthog_python_loads_definitions_and_revalidates_with_the_etag(defined: Sink) -> None:
    with client(defined, secret_key=PERSONAL, poll_interval=3600) as ph:
        ph.load_feature_flags()
        ph.load_feature_flags()
        loaded = [flag["key"] for flag in ph.feature_flags or []]

    assert loaded == ["beta-banner", "checkout-experiment"]
    first, second = defined.definition_requests()
    assert (first["path"], first["token"], first["personal_api_key"]) == (
        DEFINITIONS_PATH,
        KEY,
        PERSONAL,
    )
    assert (first["status"], second["status"]) == (200, 304)
    assert second["if_none_match"] is not None


def test_remote_evaluation_agrees_with_posthog_python_local_evaluation(defined: Sink) -> None:
    with (
        client(defined, secret_key=PERSONAL, poll_interval=3600) as local,
        client(defined) as remote,
    ):
        local.load_feature_flags()
        ids = [f"person-{n}" for n in range(200)]
        local_answers = [
            local.get_all_flags_and_payloads(i, only_evaluate_locally=True) for i in ids
        ]
        remote_answers = [remote.get_all_flags_and_payloads(i) for i in ids]

    assert len(defined.flag_requests()) == len(ids)  # every remote answer came from /flags
    assert remote_answers == local_answers
    variants = {answer["featureFlags"]["checkout-experiment"] for answer in remote_answers}
    assert variants == {"control", "test"}


def test_example_flags_split_people_about_in_half(defined: Sink) -> None:
    answers = [evaluated(defined, f"visitor-{n}") for n in range(400)]

    beta = sum(answer["beta-banner"][0] is True for answer in answers)
    test = sum(answer["checkout-experiment"][0] == "test" for answer in answers)
    assert 140 < beta < 260
    assert 140 < test < 260


def test_posthog_js_flags_request_gets_evaluated_records(defined: Sink) -> None:
    flags = ask_flags(defined).json()["flags"]  # distinct id anon-1, as posthog-js asks
    local = evaluated(defined, "anon-1")

    variant, payload = local["checkout-experiment"]
    record = flags["checkout-experiment"]
    assert (record["enabled"], record["variant"]) == (True, variant)
    assert record["metadata"] == {"id": 2, "version": 1, "payload": payload}
    assert json.loads(payload) == json.loads(
        EXAMPLE_FLAG_DEFINITIONS[1]["filters"]["payloads"][variant]
    )
    assert flags["beta-banner"]["metadata"]["id"] == 1


def test_legacy_flags_answer_carries_payloads_of_enabled_flags_only(defined: Sink) -> None:
    # Find one person with the beta banner off and one with it on.
    people: dict[bool, Any] = {}
    for n in range(50):
        answer = ask_flags(defined, "/flags/", {"token": KEY, "distinct_id": f"p-{n}"}).json()
        people.setdefault(answer["featureFlags"]["beta-banner"], answer)
    off, on = people[False], people[True]

    assert "beta-banner" not in off["featureFlagPayloads"]
    assert json.loads(on["featureFlagPayloads"]["beta-banner"]) == {"text": "Try the new beta!"}
    assert "checkout-experiment" in off["featureFlagPayloads"]


def test_person_property_conditions_match_the_request_properties() -> None:
    with Sink(flag_definitions=[PRO_ONLY]) as sink:
        pro = evaluated(sink, "u", person_properties={"plan": "pro"})
        free = evaluated(sink, "u", person_properties={"plan": "free"})
        unknown = evaluated(sink, "u")

    assert pro["pro-dashboard"] == (True, None)
    assert free["pro-dashboard"] == (False, None)
    assert unknown["pro-dashboard"] == (False, None)  # no stored person to look at


@pytest.mark.parametrize(
    ("mapping", "request_", "value"),
    [
        pytest.param(
            {"0": "company"},
            {
                "groups": {"company": "acme"},
                "group_properties": {"company": {"tier": "enterprise"}},
            },
            True,
            id="matching-group",
        ),
        pytest.param(
            {"0": "company"},
            {"groups": {"company": "acme"}, "group_properties": {"company": {"tier": "free"}}},
            False,
            id="other-group",
        ),
        pytest.param({"0": "company"}, {}, False, id="no-group"),
        pytest.param({}, {"groups": {"company": "acme"}}, False, id="unknown-group-type"),
    ],
)
def test_group_flags_match_the_request_groups(
    mapping: dict[str, str], request_: dict[str, Any], value: bool
) -> None:
    with Sink(flag_definitions=[ENTERPRISE_COMPANIES], group_type_mapping=mapping) as sink:
        assert evaluated(sink, "u", **request_)["sso"] == (value, None)
        assert ask_definitions(sink).json()["group_type_mapping"] == mapping


def test_device_id_bucketed_flags_use_posthog_js_device_id() -> None:
    by_device = definition("device-flag", bucketing_identifier="device_id")
    with Sink(flag_definitions=[by_device]) as sink:
        with_device = ask_flags(sink, "/flags/?v=2").json()["flags"]  # carries $device_id
        without = evaluated(sink, "anon-1")

    assert with_device["device-flag"]["enabled"] is True
    assert without["device-flag"] == (False, None)  # undecidable without a device id


def test_inactive_definitions_are_off() -> None:
    with Sink(flag_definitions=[definition("retired", active=False)]) as sink:
        assert evaluated(sink, "u")["retired"] == (False, None)


def test_flag_keys_to_evaluate_limit_the_evaluated_answer(defined: Sink) -> None:
    answer = evaluated(defined, "u", flag_keys_to_evaluate=["beta-banner"])
    assert list(answer) == ["beta-banner"]


def test_configured_flags_and_definitions_answer_together() -> None:
    no_id = {k: v for k, v in definition("no-id").items() if k != "id"}
    with Sink(flags={"static": "on"}, flag_definitions=[no_id]) as sink:
        flags = ask_flags(sink).json()["flags"]

    assert {key: record["metadata"]["id"] for key, record in flags.items()} == {
        "static": 1,
        "no-id": 2,
    }
    assert flags["no-id"]["enabled"] is True


def test_definitions_are_copied_at_construction() -> None:
    mine = definition("mine")
    with Sink(flag_definitions=[mine]) as sink:
        mine["active"] = False
        assert evaluated(sink, "u")["mine"] == (True, None)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"flag_definitions": ["beta"]}, "not an object with a non-empty 'key'"),
        ({"flag_definitions": [{"key": ""}]}, "not an object with a non-empty 'key'"),
        ({"flag_definitions": [definition("a"), definition("a")]}, "more than once"),
        ({"flags": {"a": True}, "flag_definitions": [definition("a")]}, "more than once"),
        ({"flag_definitions": [{"key": "a", "when": object()}]}, "not JSON"),
        ({"flag_definitions": [{"key": "a", "filters": []}]}, "'filters' must be an object"),
        ({"flag_definitions": [definition("a", filters={"payloads": ["x"]})]}, "'payloads'"),
        ({"flag_definitions": [definition("a", filters={"payloads": {"true": 1}})]}, "'payloads'"),
        (
            {"flag_definitions": [definition("a", filters={"payloads": {"true": "{"}})]},
            "'payloads'",
        ),
        ({"personal_api_keys": "phx_one"}, "a collection"),
        ({"unscoped_personal_api_keys": "phx_one"}, "a collection"),
    ],
    ids=[
        "not-an-object",
        "empty-key",
        "duplicate",
        "duplicate-of-a-configured-flag",
        "not-json",
        "filters-not-an-object",
        "payloads-not-an-object",
        "payload-not-a-string",
        "payload-not-json",
        "one-personal-key-string",
        "one-unscoped-key-string",
    ],
)
def test_invalid_definitions_are_refused_at_construction(
    options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Sink(**options)
