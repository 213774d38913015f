"""Settings: every variable, parsed strictly and validated once; all problems reported together."""

from __future__ import annotations

import pytest

from posthog_identity import ConfigurationError, Settings
from tests.helpers.project import ROOT

SECRET = "s" * 32
BASE = {"POSTHOG_IDENTITY_SECRET": SECRET}


def from_env(**env: str) -> Settings:
    return Settings.from_env({**BASE, **env})


def test_defaults_match_the_design() -> None:
    settings = from_env()
    assert settings.secrets == (SECRET,)
    assert settings.api_key is None
    assert settings.host == "https://us.i.posthog.com"
    assert settings.cookie_name == "ph_identity"
    assert settings.cookie_domain is None
    assert settings.cookie_max_age == 31_536_000
    assert settings.cookie_secure is None
    assert settings.cookie_samesite == "Lax"
    assert settings.inject is True
    assert settings.script_url is None
    assert settings.reset_on_logout is True
    assert settings.exclude_paths == ()
    assert settings.person_profiles == "identified_only"
    assert settings.disabled is False


def test_missing_secret_names_the_variable() -> None:
    with pytest.raises(ConfigurationError, match="POSTHOG_IDENTITY_SECRET") as info:
        Settings.from_env({})
    assert info.value.variable == "POSTHOG_IDENTITY_SECRET"


@pytest.mark.parametrize("raw", ["", "   ", ",", " , ,"], ids=["empty", "blank", "comma", "commas"])
def test_empty_secret_counts_as_missing(raw: str) -> None:
    with pytest.raises(ConfigurationError, match="POSTHOG_IDENTITY_SECRET"):
        Settings.from_env({"POSTHOG_IDENTITY_SECRET": raw})


def test_secrets_are_comma_separated_newest_first_and_stripped() -> None:
    settings = from_env(POSTHOG_IDENTITY_SECRET=" new-secret , old-secret ,")
    assert settings.secrets == ("new-secret", "old-secret")


def test_short_secret_is_accepted() -> None:
    assert from_env(POSTHOG_IDENTITY_SECRET="x").secrets == ("x",)


def test_repr_masks_the_secrets() -> None:
    settings = from_env(POSTHOG_IDENTITY_SECRET="hunter2-very-secret,older-secret-value")
    text = repr(settings)
    assert "hunter2" not in text
    assert "older-secret" not in text
    assert "<2 masked>" in text
    assert "cookie_name='ph_identity'" in text


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"POSTHOG_API_KEY": "phc_a"}, "phc_a"),
        ({"POSTHOG_PROJECT_API_KEY": "phc_b"}, "phc_b"),
        ({"POSTHOG_API_KEY": "phc_a", "POSTHOG_PROJECT_API_KEY": "phc_a"}, "phc_a"),
        ({"POSTHOG_API_KEY": "", "POSTHOG_PROJECT_API_KEY": "phc_b"}, "phc_b"),
        ({"POSTHOG_API_KEY": "  "}, None),
    ],
    ids=["primary", "alias", "both-equal", "empty-primary", "blank"],
)
def test_api_key_variables(env: dict[str, str], expected: str | None) -> None:
    assert from_env(**env).api_key == expected


def test_two_different_api_keys_are_an_error() -> None:
    with pytest.raises(ConfigurationError, match=r"POSTHOG_API_KEY.*POSTHOG_PROJECT_API_KEY"):
        from_env(POSTHOG_API_KEY="phc_a", POSTHOG_PROJECT_API_KEY="phc_b")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1", True),
        ("true", True),
        ("TRUE", True),
        ("Yes", True),
        ("on", True),
        (" on ", True),
        ("0", False),
        ("false", False),
        ("False", False),
        ("no", False),
        ("OFF", False),
    ],
)
@pytest.mark.parametrize(
    ("variable", "field"),
    [
        ("POSTHOG_IDENTITY_INJECT", "inject"),
        ("POSTHOG_IDENTITY_RESET_ON_LOGOUT", "reset_on_logout"),
        ("POSTHOG_IDENTITY_DISABLED", "disabled"),
        ("POSTHOG_IDENTITY_ADOPT_BROWSER_ID", "adopt_browser_id"),
    ],
)
def test_booleans(variable: str, field: str, raw: str, expected: bool) -> None:
    assert getattr(from_env(**{variable: raw}), field) is expected


@pytest.mark.parametrize(
    "variable",
    [
        "POSTHOG_IDENTITY_INJECT",
        "POSTHOG_IDENTITY_RESET_ON_LOGOUT",
        "POSTHOG_IDENTITY_DISABLED",
        "POSTHOG_IDENTITY_ADOPT_BROWSER_ID",
    ],
)
@pytest.mark.parametrize("raw", ["maybe", "2", "tru", "y"])
def test_invalid_boolean_names_the_variable(variable: str, raw: str) -> None:
    with pytest.raises(ConfigurationError, match=variable) as info:
        from_env(**{variable: raw})
    assert repr(raw) in str(info.value)


def test_empty_variable_counts_as_unset() -> None:
    settings = from_env(
        POSTHOG_IDENTITY_INJECT="", POSTHOG_IDENTITY_COOKIE_MAX_AGE="", POSTHOG_HOST=""
    )
    assert settings.inject is True
    assert settings.cookie_max_age == 31_536_000
    assert settings.host == "https://us.i.posthog.com"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("auto", None),
        ("AUTO", None),
        ("true", True),
        ("1", True),
        ("false", False),
        ("off", False),
    ],
)
def test_cookie_secure(raw: str, expected: bool | None) -> None:
    assert from_env(POSTHOG_IDENTITY_COOKIE_SECURE=raw).cookie_secure is expected


def test_cookie_secure_rejects_other_values() -> None:
    with pytest.raises(ConfigurationError, match=r"POSTHOG_IDENTITY_COOKIE_SECURE.*auto"):
        from_env(POSTHOG_IDENTITY_COOKIE_SECURE="sometimes")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("lax", "Lax"), ("Strict", "Strict"), ("NONE", "None"), ("Lax", "Lax")],
)
def test_cookie_samesite(raw: str, expected: str) -> None:
    assert from_env(POSTHOG_IDENTITY_COOKIE_SAMESITE=raw).cookie_samesite == expected


def test_cookie_samesite_rejects_other_values() -> None:
    with pytest.raises(ConfigurationError, match="POSTHOG_IDENTITY_COOKIE_SAMESITE"):
        from_env(POSTHOG_IDENTITY_COOKIE_SAMESITE="loose")


def test_samesite_none_forces_secure() -> None:
    settings = from_env(POSTHOG_IDENTITY_COOKIE_SAMESITE="None")
    assert settings.cookie_secure is None
    assert settings.secure_cookie is True
    assert from_env().secure_cookie is None


def test_samesite_none_with_secure_false_is_an_error() -> None:
    with pytest.raises(ConfigurationError, match=r"POSTHOG_IDENTITY_COOKIE_SAMESITE.*SECURE"):
        from_env(
            POSTHOG_IDENTITY_COOKIE_SAMESITE="None",
            POSTHOG_IDENTITY_COOKIE_SECURE="false",
        )


@pytest.mark.parametrize(("raw", "expected"), [("60", 60), (" 86400 ", 86400)])
def test_cookie_max_age(raw: str, expected: int) -> None:
    assert from_env(POSTHOG_IDENTITY_COOKIE_MAX_AGE=raw).cookie_max_age == expected


@pytest.mark.parametrize("raw", ["0", "-5", "1.5", "a year", "1e6"])
def test_cookie_max_age_rejects_non_positive_or_non_integers(raw: str) -> None:
    with pytest.raises(ConfigurationError, match="POSTHOG_IDENTITY_COOKIE_MAX_AGE"):
        from_env(POSTHOG_IDENTITY_COOKIE_MAX_AGE=raw)


@pytest.mark.parametrize("name", ["my_id", "ph-identity", "__Host-ph"])
def test_cookie_name(name: str) -> None:
    assert from_env(POSTHOG_IDENTITY_COOKIE_NAME=name).cookie_name == name


@pytest.mark.parametrize("name", ["a b", "a;b", "a=b", "é", 'a"b'])
def test_cookie_name_must_be_a_token(name: str) -> None:
    with pytest.raises(ConfigurationError, match="POSTHOG_IDENTITY_COOKIE_NAME"):
        from_env(POSTHOG_IDENTITY_COOKIE_NAME=name)


@pytest.mark.parametrize(
    "domain", ["example.com", ".example.com", "a.b-c.example.org", "localhost"]
)
def test_cookie_domain(domain: str) -> None:
    assert from_env(POSTHOG_IDENTITY_COOKIE_DOMAIN=domain).cookie_domain == domain


@pytest.mark.parametrize(
    "domain", ["exa mple.com", "example.com;x=1", "https://example.com", "-x.com"]
)
def test_cookie_domain_rejects_garbage(domain: str) -> None:
    with pytest.raises(ConfigurationError, match="POSTHOG_IDENTITY_COOKIE_DOMAIN"):
        from_env(POSTHOG_IDENTITY_COOKIE_DOMAIN=domain)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("https://eu.i.posthog.com", "https://eu.i.posthog.com"),
        ("https://ph.example.com/", "https://ph.example.com"),
        ("http://127.0.0.1:8123", "http://127.0.0.1:8123"),
    ],
)
def test_host(raw: str, expected: str) -> None:
    assert from_env(POSTHOG_HOST=raw).host == expected


@pytest.mark.parametrize("raw", ["eu.i.posthog.com", "ftp://x", "https://", "/relative"])
def test_host_must_be_an_http_url(raw: str) -> None:
    with pytest.raises(ConfigurationError, match="POSTHOG_HOST"):
        from_env(POSTHOG_HOST=raw)


@pytest.mark.parametrize(
    "raw",
    [
        "https://cdn.example.com/array.js",
        "/static/posthog/array.js",
        "http://127.0.0.1:9/a.js",
    ],
)
def test_script_url(raw: str) -> None:
    assert from_env(POSTHOG_IDENTITY_SCRIPT_URL=raw).script_url == raw


@pytest.mark.parametrize("raw", ["array.js", "//cdn.example.com/a.js", "javascript:alert(1)"])
def test_script_url_rejects_others(raw: str) -> None:
    with pytest.raises(ConfigurationError, match="POSTHOG_IDENTITY_SCRIPT_URL"):
        from_env(POSTHOG_IDENTITY_SCRIPT_URL=raw)


def test_exclude_paths_are_a_stripped_list_without_trailing_slashes() -> None:
    settings = from_env(POSTHOG_IDENTITY_EXCLUDE_PATHS=" /static/ , /health,, /")
    assert settings.exclude_paths == ("/static", "/health", "/")


def test_exclude_paths_must_be_absolute() -> None:
    with pytest.raises(ConfigurationError, match=r"POSTHOG_IDENTITY_EXCLUDE_PATHS.*'static'"):
        from_env(POSTHOG_IDENTITY_EXCLUDE_PATHS="/ok,static")


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("identified_only", "identified_only"),
        ("always", "always"),
        ("ALWAYS", "always"),
    ],
)
def test_person_profiles(raw: str, expected: str) -> None:
    assert from_env(POSTHOG_IDENTITY_PERSON_PROFILES=raw).person_profiles == expected


def test_person_profiles_rejects_others() -> None:
    with pytest.raises(ConfigurationError, match="POSTHOG_IDENTITY_PERSON_PROFILES"):
        from_env(POSTHOG_IDENTITY_PERSON_PROFILES="never")


def test_overrides_take_field_names_and_win_over_the_environment() -> None:
    settings = Settings.from_env(
        {**BASE, "POSTHOG_IDENTITY_COOKIE_NAME": "from_env"},
        cookie_name="override",
        inject=False,
    )
    assert settings.cookie_name == "override"
    assert settings.inject is False


def test_overrides_can_supply_the_secret() -> None:
    assert Settings.from_env({}, secrets=("abc",)).secrets == ("abc",)


def test_unknown_override_is_a_type_error() -> None:
    with pytest.raises(TypeError, match="cookie_nmae"):
        Settings.from_env(BASE, cookie_nmae="x")


def test_overrides_are_validated_too() -> None:
    with pytest.raises(ConfigurationError, match="POSTHOG_IDENTITY_COOKIE_MAX_AGE"):
        Settings.from_env(BASE, cookie_max_age=-1)


def test_reads_os_environ_by_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POSTHOG_IDENTITY_SECRET", "from-os-environ")
    monkeypatch.setenv("POSTHOG_IDENTITY_COOKIE_NAME", "os_cookie")
    settings = Settings.from_env()
    assert settings.secrets == ("from-os-environ",)
    assert settings.cookie_name == "os_cookie"


@pytest.mark.parametrize(
    ("kwargs", "variable"),
    [
        ({"secrets": "one-string"}, "POSTHOG_IDENTITY_SECRET"),
        ({"secrets": ()}, "POSTHOG_IDENTITY_SECRET"),
        ({"secrets": ("ok", "")}, "POSTHOG_IDENTITY_SECRET"),
        ({"secrets": ("ok",), "api_key": ""}, "POSTHOG_API_KEY"),
        ({"secrets": ("ok",), "api_key": " phc "}, "POSTHOG_API_KEY"),
        (
            {"secrets": ("ok",), "cookie_max_age": True},
            "POSTHOG_IDENTITY_COOKIE_MAX_AGE",
        ),
        (
            {"secrets": ("ok",), "cookie_samesite": "lax"},
            "POSTHOG_IDENTITY_COOKIE_SAMESITE",
        ),
        (
            {"secrets": ("ok",), "person_profiles": "never"},
            "POSTHOG_IDENTITY_PERSON_PROFILES",
        ),
        (
            {"secrets": ("ok",), "exclude_paths": ("x",)},
            "POSTHOG_IDENTITY_EXCLUDE_PATHS",
        ),
    ],
    ids=lambda v: str(v) if isinstance(v, str) else None,
)
def test_direct_construction_is_validated(kwargs: dict[str, object], variable: str) -> None:
    with pytest.raises(ConfigurationError, match=variable):
        Settings(**kwargs)  # type: ignore[arg-type]


def test_settings_are_frozen() -> None:
    settings = from_env()
    with pytest.raises(AttributeError):
        settings.inject = False  # type: ignore[misc]


def test_every_variable_is_documented_in_the_configuration_reference() -> None:

    from posthog_identity.settings import API_KEY_ALIAS, ENV_VARS

    reference = (ROOT / "docs" / "configuration.md").read_text()
    missing = [v for v in [*ENV_VARS.values(), API_KEY_ALIAS] if f"`{v}`" not in reference]
    assert missing == []


def test_every_settings_field_has_a_variable() -> None:
    import dataclasses

    from posthog_identity.settings import ENV_VARS

    assert {f.name for f in dataclasses.fields(Settings)} == set(ENV_VARS)


# ---------------------------------------------------------------------------
# Every problem at once


def test_every_invalid_variable_is_reported_in_one_error_one_line_each() -> None:
    env = {
        "POSTHOG_IDENTITY_COOKIE_MAX_AGE": "a year",
        "POSTHOG_IDENTITY_COOKIE_SAMESITE": "sideways",
        "POSTHOG_IDENTITY_INJECT": "maybe",
        "POSTHOG_HOST": "us.i.posthog.com",
        "POSTHOG_IDENTITY_CONSENT": "always",
    }

    with pytest.raises(ConfigurationError) as info:
        Settings.from_env(env)

    named = [variable for variable, _ in info.value.errors]
    assert sorted(named) == sorted([*env, "POSTHOG_IDENTITY_SECRET"])
    lines = str(info.value).splitlines()
    assert [line.split(":", 1)[0] for line in lines] == named


def test_the_first_problem_is_also_the_errors_variable_and_message() -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({"POSTHOG_IDENTITY_COOKIE_MAX_AGE": "-"})

    assert (info.value.variable, info.value.message) == info.value.errors[0]


def test_api_keys_that_differ_are_reported_with_the_other_problems() -> None:
    env = {**BASE, "POSTHOG_API_KEY": "phc_a", "POSTHOG_PROJECT_API_KEY": "phc_b"}

    with pytest.raises(ConfigurationError) as info:
        Settings.from_env({**env, "POSTHOG_IDENTITY_COOKIE_NAME": "no spaces"})

    assert [v for v, _ in info.value.errors] == [
        "POSTHOG_API_KEY",
        "POSTHOG_IDENTITY_COOKIE_NAME",
    ]


def test_invalid_values_given_directly_are_all_reported() -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings(
            secrets=(),
            api_key=" phc_padded ",
            personal_api_key=" ",
            host="ftp://example.com",
            script_url="nowhere",
            cookie_name="a b",
            cookie_domain="-bad-",
            cookie_max_age=0,
            cookie_secure="yes",  # type: ignore[arg-type]
            cookie_samesite="lax",  # type: ignore[arg-type]
            person_profiles="sometimes",  # type: ignore[arg-type]
            inject="yes",  # type: ignore[arg-type]
            inject_lookahead=10,
            init_options={"bootstrap": {}},
            bootstrap_flags=(),
            flags_timeout=0,
            exclude_paths=("static",),
            consent="maybe",  # type: ignore[arg-type]
            consent_cookie="a b",
            consent_granted=(),
            respect_gpc="yes",  # type: ignore[arg-type]
        )

    assert [v for v, _ in info.value.errors] == [
        "POSTHOG_IDENTITY_SECRET",
        "POSTHOG_API_KEY",
        "POSTHOG_PERSONAL_API_KEY",
        "POSTHOG_HOST",
        "POSTHOG_IDENTITY_SCRIPT_URL",
        "POSTHOG_IDENTITY_COOKIE_NAME",
        "POSTHOG_IDENTITY_COOKIE_DOMAIN",
        "POSTHOG_IDENTITY_COOKIE_MAX_AGE",
        "POSTHOG_IDENTITY_COOKIE_SECURE",
        "POSTHOG_IDENTITY_COOKIE_SAMESITE",
        "POSTHOG_IDENTITY_PERSON_PROFILES",
        "POSTHOG_IDENTITY_INJECT",
        "POSTHOG_IDENTITY_INJECT_LOOKAHEAD",
        "POSTHOG_IDENTITY_INIT_OPTIONS",
        "POSTHOG_IDENTITY_BOOTSTRAP_FLAGS",
        "POSTHOG_IDENTITY_FLAGS_TIMEOUT",
        "POSTHOG_IDENTITY_EXCLUDE_PATHS",
        "POSTHOG_IDENTITY_CONSENT",
        "POSTHOG_IDENTITY_CONSENT_COOKIE",
        "POSTHOG_IDENTITY_CONSENT_GRANTED",
        "POSTHOG_IDENTITY_RESPECT_GPC",
    ]


# ---------------------------------------------------------------------------
# Overrides accept what the variables accept

OVERRIDE_TEXTS = [
    ("cookie_samesite", "lax", "Lax"),
    ("cookie_samesite", "STRICT", "Strict"),
    ("cookie_max_age", "3600", 3600),
    ("cookie_secure", "auto", None),
    ("cookie_secure", "on", True),
    ("inject", "off", False),
    ("exclude_paths", "/static, /media/", ("/static", "/media")),
    ("person_profiles", "Always", "always"),
    ("secrets", "new-secret, old-secret", ("new-secret", "old-secret")),
    ("bootstrap_flags", "checkout,beta", ("checkout", "beta")),
    ("flags_timeout", "0.5", 0.5),
    ("init_options", '{"debug": true}', {"debug": True}),
    ("consent", "OPT-IN", "opt-in"),
]


@pytest.mark.parametrize(
    ("field", "text", "expected"),
    OVERRIDE_TEXTS,
    ids=[f"{field}={text}" for field, text, _ in OVERRIDE_TEXTS],
)
def test_an_override_accepts_the_text_its_variable_accepts(
    field: str, text: str, expected: object
) -> None:
    assert getattr(Settings.from_env(BASE, **{field: text}), field) == expected


def test_an_override_the_variable_would_refuse_is_reported_under_the_variable() -> None:
    with pytest.raises(ConfigurationError) as info:
        Settings.from_env(BASE, cookie_samesite="sideways", cookie_max_age="soon")

    assert [v for v, _ in info.value.errors] == [
        "POSTHOG_IDENTITY_COOKIE_MAX_AGE",
        "POSTHOG_IDENTITY_COOKIE_SAMESITE",
    ]


def test_python_value_overrides_win_over_the_variables() -> None:
    settings = Settings.from_env(
        {**BASE, "POSTHOG_API_KEY": "phc_env", "POSTHOG_IDENTITY_INJECT": "true"},
        api_key=None,
        inject=False,
    )

    assert (settings.api_key, settings.inject) == (None, False)


# ---------------------------------------------------------------------------
# Consent


def test_consent_defaults_keep_todays_behaviour() -> None:
    settings = from_env()
    assert settings.consent == "not-required"
    assert settings.consent_cookie == "ph_consent"
    assert settings.consent_granted == ("granted", "true", "yes", "1")
    assert settings.consent_denied == ("denied", "false", "no", "0")
    assert settings.respect_gpc is True
    assert settings.respect_dnt is False


def test_consent_variables_are_read() -> None:
    settings = from_env(
        POSTHOG_IDENTITY_CONSENT="Opt-In",
        POSTHOG_IDENTITY_CONSENT_COOKIE="cookie_consent",
        POSTHOG_IDENTITY_CONSENT_GRANTED=" Accepted , ALL ,",
        POSTHOG_IDENTITY_CONSENT_DENIED="rejected",
        POSTHOG_IDENTITY_RESPECT_GPC="off",
        POSTHOG_IDENTITY_RESPECT_DNT="yes",
    )
    assert settings.consent == "opt-in"
    assert settings.consent_cookie == "cookie_consent"
    assert settings.consent_granted == ("accepted", "all")
    assert settings.consent_denied == ("rejected",)
    assert (settings.respect_gpc, settings.respect_dnt) == (False, True)
    assert "consent='opt-in'" in repr(settings)


@pytest.mark.parametrize(
    ("env", "variable", "message"),
    [
        ({"POSTHOG_IDENTITY_CONSENT": "required"}, "POSTHOG_IDENTITY_CONSENT", "opt-in"),
        (
            {"POSTHOG_IDENTITY_CONSENT_DENIED": "no,YES"},
            "POSTHOG_IDENTITY_CONSENT_DENIED",
            "yes also grants consent",
        ),
        (
            {"POSTHOG_IDENTITY_CONSENT_COOKIE": "ph_identity"},
            "POSTHOG_IDENTITY_CONSENT_COOKIE",
            "must differ from POSTHOG_IDENTITY_COOKIE_NAME",
        ),
        (
            {"POSTHOG_IDENTITY_CONSENT_COOKIE": "bad name"},
            "POSTHOG_IDENTITY_CONSENT_COOKIE",
            "not a valid cookie name",
        ),
        (
            {"POSTHOG_IDENTITY_CONSENT_GRANTED": " , "},
            "POSTHOG_IDENTITY_CONSENT_GRANTED",
            "at least one",
        ),
        (
            {"POSTHOG_IDENTITY_CONSENT_GRANTED": 'say "yes"'},
            "POSTHOG_IDENTITY_CONSENT_GRANTED",
            "not a valid cookie value",
        ),
        ({"POSTHOG_IDENTITY_RESPECT_GPC": "maybe"}, "POSTHOG_IDENTITY_RESPECT_GPC", "boolean"),
        ({"POSTHOG_IDENTITY_RESPECT_DNT": "2"}, "POSTHOG_IDENTITY_RESPECT_DNT", "boolean"),
    ],
    ids=[
        "mode",
        "overlap",
        "same-cookie",
        "cookie-name",
        "empty-list",
        "value",
        "gpc",
        "dnt",
    ],
)
def test_bad_consent_settings_name_their_variable(
    env: dict[str, str], variable: str, message: str
) -> None:
    with pytest.raises(ConfigurationError, match=message) as info:
        from_env(**env)
    assert info.value.variable == variable


def test_direct_construction_is_validated_too() -> None:
    with pytest.raises(ConfigurationError, match=r"^POSTHOG_IDENTITY_CONSENT: "):
        Settings(secrets=("s",), consent="opt_in")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="POSTHOG_IDENTITY_CONSENT_GRANTED"):
        Settings(secrets=("s",), consent_granted="granted")  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="POSTHOG_IDENTITY_CONSENT_DENIED"):
        Settings(secrets=("s",), consent_denied=("granted",))


# ---------------------------------------------------------------------------
# Session


def test_trusted_proxies_is_a_whole_number() -> None:
    env = {"POSTHOG_IDENTITY_SECRET": SECRET, "POSTHOG_IDENTITY_TRUSTED_PROXIES": "2"}
    assert Settings.from_env(env).trusted_proxies == 2
    with pytest.raises(ConfigurationError, match="POSTHOG_IDENTITY_TRUSTED_PROXIES"):
        Settings.from_env({**env, "POSTHOG_IDENTITY_TRUSTED_PROXIES": "-1"})


# ---------------------------------------------------------------------------
# The first-party proxy


@pytest.mark.parametrize("raw", ["ingest", "/", "/in gest", "//x"])
def test_a_proxy_path_that_is_not_a_path_fails_at_start_up(raw: str) -> None:
    env = {"POSTHOG_IDENTITY_SECRET": SECRET, "POSTHOG_IDENTITY_PROXY_PATH": raw}
    with pytest.raises(ConfigurationError, match="POSTHOG_IDENTITY_PROXY_PATH"):
        Settings.from_env(env)


def test_the_proxy_settings_come_from_the_environment() -> None:
    env = {
        "POSTHOG_IDENTITY_SECRET": SECRET,
        "POSTHOG_IDENTITY_PROXY_PATH": "/ingest/",
        "POSTHOG_IDENTITY_PROXY_MAX_BODY": "1000",
        "POSTHOG_IDENTITY_PROXY_TIMEOUT": "2.5",
    }
    settings = Settings.from_env(env)
    assert (settings.proxy_path, settings.proxy_max_body, settings.proxy_timeout) == (
        "/ingest",
        1000,
        2.5,
    )


@pytest.mark.parametrize(("raw", "parsed"), [(None, None), ("1", 1), ("64", 64)])
def test_proxy_concurrency_variable(raw: str | None, parsed: int | None) -> None:
    variables = {} if raw is None else {"POSTHOG_IDENTITY_PROXY_CONCURRENCY": raw}
    assert from_env(**variables).proxy_concurrency == parsed


@pytest.mark.parametrize("raw", ["0", "-4", "2.5", "many"])
def test_a_proxy_concurrency_that_is_not_a_positive_count_fails_at_start_up(raw: str) -> None:
    with pytest.raises(ConfigurationError, match="POSTHOG_IDENTITY_PROXY_CONCURRENCY"):
        from_env(POSTHOG_IDENTITY_PROXY_CONCURRENCY=raw)


def test_the_default_body_bound_holds_posthog_js_largest_request() -> None:
    # A session-replay request: at most 7 MiB x 0.9 of JSON, base64 and form-encoded
    # when compression is off (4/3, plus %2B %2F %3D for 3 of 64 characters).
    largest = 7 * 1024 * 1024 * 0.9 * 4 / 3 * (1 + 2 * 3 / 64)
    assert largest < from_env().proxy_max_body < 20 * 1024 * 1024


# ---------------------------------------------------------------------------
# Feature flags


@pytest.mark.parametrize(
    ("raw", "parsed"),
    [
        (None, False),
        ("", False),
        ("false", False),
        ("OFF", False),
        ("0", False),
        ("true", True),
        ("Yes", True),
        ("1", True),
        ("beta-banner", ("beta-banner",)),
        (" beta-banner , checkout-experiment ,, ", ("beta-banner", "checkout-experiment")),
    ],
)
def test_bootstrap_flags_variable(raw: str | None, parsed: object) -> None:
    variables = {} if raw is None else {"POSTHOG_IDENTITY_BOOTSTRAP_FLAGS": raw}
    assert from_env(**variables).bootstrap_flags == parsed


def test_bootstrap_flags_of_only_commas_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="POSTHOG_IDENTITY_BOOTSTRAP_FLAGS"):
        from_env(POSTHOG_IDENTITY_BOOTSTRAP_FLAGS=",,")


@pytest.mark.parametrize(("raw", "parsed"), [(None, 0.3), ("0.05", 0.05), ("10", 10.0)])
def test_flags_timeout_variable(raw: str | None, parsed: float) -> None:
    variables = {} if raw is None else {"POSTHOG_IDENTITY_FLAGS_TIMEOUT": raw}
    assert from_env(**variables).flags_timeout == parsed


@pytest.mark.parametrize("raw", ["0", "-1", "10.5", "soon", "nan", "inf"])
def test_flags_timeout_out_of_bounds_is_refused(raw: str) -> None:
    with pytest.raises(ConfigurationError, match="POSTHOG_IDENTITY_FLAGS_TIMEOUT"):
        from_env(POSTHOG_IDENTITY_FLAGS_TIMEOUT=raw)


def test_personal_api_key_is_read_and_masked_in_repr() -> None:
    settings = from_env(POSTHOG_PERSONAL_API_KEY="phx_very_secret")

    assert settings.personal_api_key == "phx_very_secret"
    assert "phx_very_secret" not in repr(settings)
    assert "personal_api_key=<masked>" in repr(settings)


def test_a_blank_personal_api_key_counts_as_unset() -> None:
    assert from_env(POSTHOG_PERSONAL_API_KEY="   ").personal_api_key is None


def test_adopting_the_browsers_id_is_on_by_default_and_checked_as_a_boolean() -> None:
    assert from_env().adopt_browser_id is True
    with pytest.raises(ConfigurationError, match="POSTHOG_IDENTITY_ADOPT_BROWSER_ID"):
        Settings(secrets=("s",), adopt_browser_id="yes")  # type: ignore[arg-type]
