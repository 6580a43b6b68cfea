"""Configuration: read once, checked, and a clear message naming the bad variable."""

import threading

import pytest

from webhook.core.config import load_settings, use_prepared_statements
from webhook.core.errors import ConfigError


def test_defaults() -> None:
    settings = load_settings({"STRIPE_WEBHOOK_SECRET": "whsec_a"})
    assert settings.webhook_secrets == ("whsec_a",)
    assert settings.tolerance_seconds == 300
    assert settings.entitled_statuses == {"active", "trialing", "past_due"}
    assert settings.database_url is None
    assert settings.store_timeout_ms == 5000
    assert settings.log_level == "info"


def test_the_log_level_is_read_in_any_case() -> None:
    settings = load_settings({"STRIPE_WEBHOOK_SECRET": "whsec_a", "LOG_LEVEL": " WARNING "})
    assert settings.log_level == "warning"


def test_several_secrets_are_split_and_trimmed() -> None:
    settings = load_settings({"STRIPE_WEBHOOK_SECRET": " whsec_a , whsec_b,"})
    assert settings.webhook_secrets == ("whsec_a", "whsec_b")


@pytest.mark.parametrize("value", [None, "", " , "])
def test_a_missing_secret_names_the_variable(value: str | None) -> None:
    env = {} if value is None else {"STRIPE_WEBHOOK_SECRET": value}
    with pytest.raises(ConfigError, match="STRIPE_WEBHOOK_SECRET"):
        load_settings(env)


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("STRIPE_WEBHOOK_TOLERANCE", "soon"),
        ("STRIPE_WEBHOOK_TOLERANCE", "0"),
        ("DB_POOL_MAX_SIZE", "0"),
        ("DB_POOL_TIMEOUT", "-1"),
        ("DB_LOCK_TIMEOUT_MS", "x"),
        ("ENTITLED_STATUSES", "active,bogus"),
        # Parsed to no status at all: every plan would be taken away.
        ("ENTITLED_STATUSES", ","),
        ("ENTITLED_STATUSES", " , ,"),
        ("DB_PREPARED_STATEMENTS", "sometimes"),
        ("WEB_STORE_TIMEOUT_MS", "0"),
        ("WEB_STORE_TIMEOUT_MS", "99"),
        ("WEB_THREADS", "abc"),
        ("LOG_LEVEL", "loud"),
        # The web's re-fetch and `sync` would fail on these only when reading the port.
        ("STRIPE_API_BASE", "http://localhost:abc"),
        ("STRIPE_API_BASE", "http://[::1"),
        ("STRIPE_API_BASE", "api.stripe.com"),
    ],
)
def test_bad_values_name_their_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings({"STRIPE_WEBHOOK_SECRET": "whsec_a", name: value})


@pytest.mark.parametrize(
    ("name", "value", "reason"),
    [
        # float() reads these; the pool then waited "nans" or failed with OverflowError.
        ("DB_POOL_TIMEOUT", "nan", "DB_POOL_TIMEOUT must be a finite number of seconds"),
        ("DB_POOL_TIMEOUT", "inf", "DB_POOL_TIMEOUT must be a finite number of seconds"),
        ("DB_POOL_TIMEOUT", "-inf", "DB_POOL_TIMEOUT must be a finite number of seconds"),
        ("DB_POOL_TIMEOUT", "601", "DB_POOL_TIMEOUT must be at most 600 seconds"),
        # PostgreSQL refused these on every batch ("is outside the valid range").
        ("DB_LOCK_TIMEOUT_MS", "2147483648", "DB_LOCK_TIMEOUT_MS must be at most 2147483647"),
        (
            "DB_STATEMENT_TIMEOUT_MS",
            "99999999999",
            "DB_STATEMENT_TIMEOUT_MS must be at most 2147483647",
        ),
        # Past threading.TIMEOUT_MAX a deadline's wait fails with OverflowError.
        ("WEB_STORE_TIMEOUT_MS", "1" + "0" * 20, "WEB_STORE_TIMEOUT_MS must be at most"),
        ("DRAIN_BATCH_SIZE", "9" * 19, "DRAIN_BATCH_SIZE must be at most 2147483647"),
    ],
)
def test_numbers_out_of_range_are_refused_naming_the_variable(name, value, reason) -> None:
    with pytest.raises(ConfigError, match=reason) as raised:
        load_settings({"STRIPE_WEBHOOK_SECRET": "whsec_a", name: value})
    assert "\n" not in str(raised.value)


def test_the_largest_numbers_postgresql_takes_are_accepted() -> None:
    settings = load_settings(
        {
            "STRIPE_WEBHOOK_SECRET": "whsec_a",
            "DB_LOCK_TIMEOUT_MS": "2147483647",
            "DB_STATEMENT_TIMEOUT_MS": "2147483647",
            "WEB_STORE_TIMEOUT_MS": "2147483647",
            "DB_POOL_TIMEOUT": "600",
        }
    )
    assert settings.lock_timeout_ms == settings.statement_timeout_ms == 2_147_483_647
    assert settings.store_timeout_ms / 1000 < threading.TIMEOUT_MAX
    assert settings.pool_timeout_seconds == 600.0


def test_the_store_timeout_is_read_in_milliseconds() -> None:
    settings = load_settings({"STRIPE_WEBHOOK_SECRET": "whsec_a", "WEB_STORE_TIMEOUT_MS": "250"})
    assert settings.store_timeout_ms == 250


def test_pool_bounds_must_be_ordered() -> None:
    with pytest.raises(ConfigError, match="DB_POOL_MIN_SIZE"):
        load_settings(
            {"STRIPE_WEBHOOK_SECRET": "whsec_a", "DB_POOL_MIN_SIZE": "5", "DB_POOL_MAX_SIZE": "2"}
        )


def test_the_repr_never_shows_secrets() -> None:
    settings = load_settings(
        {"STRIPE_WEBHOOK_SECRET": "whsec_topsecret", "STRIPE_API_KEY": "sk_live_x"}
    )
    assert "whsec_topsecret" not in repr(settings)
    assert "sk_live_x" not in repr(settings)


@pytest.mark.parametrize(
    ("value", "url", "prepare"),
    [
        ("", "postgresql://u:p@db.example.supabase.co:5432/postgres", True),
        ("auto", "postgresql://u:p@aws-0-eu.pooler.supabase.com:6543/postgres", False),
        ("", "host=pgbouncer port=6543 dbname=app", False),
        ("", "postgresql://localhost/app", True),
        ("on", "postgresql://u:p@aws-0-eu.pooler.supabase.com:6543/postgres", True),
        ("off", "postgresql://localhost:5432/app", False),
    ],
)
def test_prepared_statements_are_off_behind_a_transaction_pooler(value, url, prepare) -> None:
    settings = load_settings({"STRIPE_WEBHOOK_SECRET": "whsec_a", "DB_PREPARED_STATEMENTS": value})
    assert use_prepared_statements(settings.prepared_statements, url) is prepare
