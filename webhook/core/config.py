"""Every environment variable the service reads, checked once at start-up.

A bad or missing value stops the process before it serves a single request, with a
message naming the variable, instead of failing on the first event in production.
"""

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import psycopg
from psycopg.conninfo import conninfo_to_dict

from webhook.core.errors import ConfigError

KNOWN_STATUSES = frozenset(
    {
        "incomplete",
        "incomplete_expired",
        "trialing",
        "active",
        "past_due",
        "canceled",
        "unpaid",
        "paused",
    }
)
DEFAULT_ENTITLED_STATUSES = ("active", "trialing", "past_due")
# The levels LOG_LEVEL accepts, the default first.
LOG_LEVELS = ("info", "warning", "error", "debug")
# The largest whole number any setting takes: PostgreSQL's `integer`, which is what
# lock_timeout and statement_timeout (and LIMIT's usual values) are read as. A larger
# DB_LOCK_TIMEOUT_MS was accepted here and refused by PostgreSQL on every batch.
MAX_WHOLE_NUMBER = 2_147_483_647
# The longest DB_POOL_TIMEOUT: ten minutes, far past what Stripe or gunicorn waits for an
# answer. Without a cap, inf reached the pool's wait as an OverflowError on every request.
MAX_POOL_TIMEOUT_SECONDS = 600.0


@dataclass(frozen=True)
class Settings:
    """The service's configuration; see the table in README.md."""

    webhook_secrets: tuple[str, ...]
    database_url: str | None = None
    tolerance_seconds: int = 300
    stripe_api_key: str | None = field(default=None, repr=False)
    stripe_api_base: str | None = None
    # Requests per second `sync` allows itself; None: by the key's mode (see webhook.stripe.client).
    stripe_api_rate: float | None = None
    # How often `sync` retries a request Stripe refused for now (429, 5xx) or dropped.
    stripe_api_max_retries: int = 7
    entitled_statuses: frozenset[str] = frozenset(DEFAULT_ENTITLED_STATUSES)
    pool_min_size: int = 1
    pool_max_size: int = 4
    pool_timeout_seconds: float = 5.0
    lock_timeout_ms: int = 5000
    statement_timeout_ms: int = 15000
    # None: decide from the URL (off for a transaction pooler's port), see prepared_statements().
    prepared_statements: bool | None = None
    # queued: a delivery is stored and answered, a drain applies it; inline: applied in the request.
    apply_mode: str = "queued"
    # Whether each web worker runs a drain (off when a dedicated `drain` process does).
    web_drain: bool = True
    drain_batch_size: int = 200
    # The most concurrent deliveries one web process stores with a single insert (1: each alone).
    store_group_size: int = 16
    # How long a delivery may wait for its insert under the ASGI edge before it gets 503;
    # at least 100 ms, or a healthy database's inserts would come back too late.
    store_timeout_ms: int = 5000
    # Threads per web process for what blocks: Flask's routes and inline applies under the
    # ASGI edge, every request under gunicorn's threaded worker.
    web_threads: int = 8
    # The least severe level of the service's own log lines shown (not the event log's).
    log_level: str = "info"

    def __repr__(self) -> str:
        # Never let a secret reach a log line through a repr.
        return (
            f"Settings(webhook_secrets=<{len(self.webhook_secrets)} secret(s)>, "
            f"tolerance_seconds={self.tolerance_seconds}, pool_max_size={self.pool_max_size})"
        )


def load_settings(
    environ: Mapping[str, str] | None = None, *, require_secret: bool = True
) -> Settings:
    """Read and check the environment; raise ConfigError naming the first bad variable.

    Operator commands that never verify a signature (reconcile, replay) pass
    require_secret=False.
    """
    env = os.environ if environ is None else environ
    secrets = tuple(s.strip() for s in env.get("STRIPE_WEBHOOK_SECRET", "").split(",") if s.strip())
    if not secrets and require_secret:
        raise ConfigError(
            "STRIPE_WEBHOOK_SECRET is not set: give the endpoint's signing secret (whsec_...),"
            " or several separated by commas while rolling it"
        )
    pool_min = _int(env, "DB_POOL_MIN_SIZE", 1, minimum=0)
    pool_max = _int(env, "DB_POOL_MAX_SIZE", 4, minimum=1)
    if pool_min > pool_max:
        raise ConfigError(
            f"DB_POOL_MIN_SIZE ({pool_min}) is larger than DB_POOL_MAX_SIZE ({pool_max})"
        )
    return Settings(
        webhook_secrets=secrets,
        database_url=env.get("DATABASE_URL", "").strip() or None,
        tolerance_seconds=_int(env, "STRIPE_WEBHOOK_TOLERANCE", 300, minimum=1),
        stripe_api_key=env.get("STRIPE_API_KEY", "").strip() or None,
        stripe_api_base=checked_stripe_api_base(env.get("STRIPE_API_BASE", "").strip() or None),
        stripe_api_rate=_optional_rate(env),
        stripe_api_max_retries=_int(env, "STRIPE_API_MAX_RETRIES", 7, minimum=0),
        entitled_statuses=_statuses(env),
        pool_min_size=pool_min,
        pool_max_size=pool_max,
        pool_timeout_seconds=_float(env, "DB_POOL_TIMEOUT", 5.0, maximum=MAX_POOL_TIMEOUT_SECONDS),
        lock_timeout_ms=_int(env, "DB_LOCK_TIMEOUT_MS", 5000, minimum=1),
        statement_timeout_ms=_int(env, "DB_STATEMENT_TIMEOUT_MS", 15000, minimum=1),
        prepared_statements=prepared_statements_setting(env),
        apply_mode=_choice(env, "WEBHOOK_APPLY", ("queued", "inline")),
        web_drain=_choice(env, "WEB_DRAIN", ("on", "off")) == "on",
        drain_batch_size=_int(env, "DRAIN_BATCH_SIZE", 200, minimum=1),
        store_group_size=_int(env, "WEB_STORE_GROUP", 16, minimum=1),
        store_timeout_ms=_int(env, "WEB_STORE_TIMEOUT_MS", 5000, minimum=100),
        web_threads=web_threads(env),
        log_level=_choice(env, "LOG_LEVEL", LOG_LEVELS),
    )


# Supabase's transaction pooler (Supavisor) listens on 6543; PgBouncer deployments often
# use the same port for transaction mode. A pooler in transaction mode hands each
# transaction to any server connection, where a statement prepared by another one is unknown.
TRANSACTION_POOLER_PORT = 6543


def web_concurrency(env: Mapping[str, str]) -> int:
    """Web workers per instance: WEB_CONCURRENCY (what Heroku-style platforms set), else 2."""
    return _int(env, "WEB_CONCURRENCY", 2, minimum=1)


def web_port(env: Mapping[str, str]) -> int:
    """The port the web line listens on: PORT (what platforms set), else 8000. Checked
    here because gunicorn's own message for a bad one does not name the variable."""
    port = _int(env, "PORT", 8000, minimum=1)
    if port > 65535:
        raise ConfigError(f"PORT must be a port number up to 65535, got {port}")
    return port


def web_threads(env: Mapping[str, str]) -> int:
    """Threads per web process: WEB_THREADS, else 8. A function of its own because
    gunicorn's config reads it before load_settings runs (see web/gunicorn_config.py)."""
    return _int(env, "WEB_THREADS", 8, minimum=1)


# The gunicorn worker classes the web line runs, the default first (see web/gunicorn_config.py).
WORKER_CLASSES = ("asgi", "gthread")


def web_worker_class(env: Mapping[str, str]) -> str:
    """WEB_WORKER_CLASS: asgi (the default) or gthread. Here, not in gunicorn's config,
    so that `doctor` checks it with the very rule the web line applies."""
    return _choice(env, "WEB_WORKER_CLASS", WORKER_CLASSES)


def web_access_log(env: Mapping[str, str]) -> bool:
    """WEB_ACCESS_LOG: off (the default) or on, read like every on/off setting; any other
    word (`yes`) is refused rather than quietly meaning off."""
    return _choice(env, "WEB_ACCESS_LOG", ("off", "on")) == "on"


def metrics_dir(env: Mapping[str, str]) -> str | None:
    """PROMETHEUS_MULTIPROC_DIR when set (None: the web line makes a folder of its own).

    It must be a folder this process may write in: prometheus_client creates its files
    there in every worker, and a missing folder crashed each of them at boot with a
    FileNotFoundError traceback.
    """
    raw = env.get("PROMETHEUS_MULTIPROC_DIR", "").strip()
    if not raw:
        return None
    if not os.path.isdir(raw):
        raise ConfigError(
            f"PROMETHEUS_MULTIPROC_DIR must be an existing folder, got {raw!r}: create it,"
            " or leave the variable unset and the web line makes one"
        )
    if not os.access(raw, os.W_OK | os.X_OK):
        raise ConfigError(
            f"PROMETHEUS_MULTIPROC_DIR must be a folder this user can write, got {raw!r}"
        )
    return raw


# What the Procfile's web line reads besides load_settings, checked in this order by
# gunicorn's config (web/gunicorn_config.py) and by `doctor`.
WEB_LINE_SETTINGS: tuple[Callable[[Mapping[str, str]], object], ...] = (
    web_port,
    web_concurrency,
    web_worker_class,
    web_threads,
    web_access_log,
    metrics_dir,
)


def checked_stripe_api_base(value: str | None) -> str | None:
    """STRIPE_API_BASE as given, once it is an http(s) URL with a host and, if it names
    one, a port number: urllib reads `http://localhost:abc` and only fails, with a
    traceback, when the port is asked for (by `sync`'s client, or the web's re-fetch)."""
    if value is None:
        return None
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (raises ValueError: not a number, or out of range)
    except ValueError as exc:
        raise ConfigError(
            f"STRIPE_API_BASE must be an http(s) URL, got {value!r} ({exc})"
        ) from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"STRIPE_API_BASE must be an http(s) URL, got {value!r}")
    return value


def use_prepared_statements(setting: bool | None, database_url: str) -> bool:
    """Whether to let psycopg prepare statements on connections to `database_url`.

    Prepared statements save the server re-planning the same few statements for every
    event; they cannot work through a pooler in transaction mode. Unless
    DB_PREPARED_STATEMENTS says otherwise, they are off for URLs on port 6543.
    """
    if setting is not None:
        return setting
    return not on_transaction_pooler_port(database_url)


def on_transaction_pooler_port(database_url: str) -> bool:
    """Whether `database_url` names port 6543, where Supabase's transaction pooler listens
    (False for a URL psycopg cannot read: connecting will say why)."""
    try:
        port = conninfo_to_dict(database_url).get("port")
    except psycopg.ProgrammingError:
        return False
    return str(port) == str(TRANSACTION_POOLER_PORT)


def _int(
    env: Mapping[str, str],
    name: str,
    default: int,
    *,
    minimum: int,
    maximum: int = MAX_WHOLE_NUMBER,
) -> int:
    """A whole number from `minimum` to `maximum` (by default PostgreSQL's integer limit,
    since several of these end up in SQL, where a larger one fails every statement)."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name} must be at least {minimum}, got {value}")
    if value > maximum:
        raise ConfigError(f"{name} must be at most {maximum}, got {value}")
    return value


def _float(env: Mapping[str, str], name: str, default: float, *, maximum: float) -> float:
    """A positive, finite number of seconds up to `maximum`: Python reads "nan" and "inf"
    as floats, and a wait of nan or inf seconds fails every request that makes it."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number of seconds, got {raw!r}")
    if value <= 0:
        raise ConfigError(f"{name} must be positive, got {raw}")
    if value > maximum:
        raise ConfigError(f"{name} must be at most {maximum:g} seconds, got {raw}")
    return value


def _choice(env: Mapping[str, str], name: str, choices: tuple[str, ...]) -> str:
    """One of `choices` (the first is the default)."""
    raw = env.get(name, "").strip().lower()
    if not raw:
        return choices[0]
    if raw not in choices:
        raise ConfigError(f"{name} must be {' or '.join(choices)}, got {raw!r}")
    return raw


def _optional_rate(env: Mapping[str, str]) -> float | None:
    raw = env.get("STRIPE_API_RATE", "").strip()
    if not raw:
        return None
    try:
        rate = float(raw)
    except ValueError:
        raise ConfigError(
            f"STRIPE_API_RATE must be a number of requests per second, got {raw!r}"
        ) from None
    if not rate > 0:
        raise ConfigError(f"STRIPE_API_RATE must be positive, got {raw}")
    if rate > 100:
        raise ConfigError(
            f"STRIPE_API_RATE must be at most 100 (Stripe's live-mode limit per second), got {raw}"
        )
    return rate


def prepared_statements_setting(env: Mapping[str, str]) -> bool | None:
    """DB_PREPARED_STATEMENTS: True (on), False (off), or None (auto, the default)."""
    raw = env.get("DB_PREPARED_STATEMENTS", "").strip().lower()
    if not raw or raw == "auto":
        return None
    if raw in {"on", "true", "1", "yes"}:
        return True
    if raw in {"off", "false", "0", "no"}:
        return False
    raise ConfigError(f"DB_PREPARED_STATEMENTS must be on, off or auto, got {raw!r}")


def _statuses(env: Mapping[str, str]) -> frozenset[str]:
    """The statuses that grant a plan. A value that names none (",") is refused: an empty
    set would take every plan away, and `reconcile` would clear every customer's."""
    raw = env.get("ENTITLED_STATUSES", "").strip()
    if not raw:
        return frozenset(DEFAULT_ENTITLED_STATUSES)
    statuses = frozenset(s.strip() for s in raw.split(",") if s.strip())
    if not statuses:
        raise ConfigError(
            f"ENTITLED_STATUSES names no subscription status, got {raw!r}: list the statuses"
            f" that grant a plan (default: {','.join(DEFAULT_ENTITLED_STATUSES)}), or unset it"
        )
    unknown = sorted(statuses - KNOWN_STATUSES)
    if unknown:
        raise ConfigError(
            f"ENTITLED_STATUSES names unknown subscription statuses: {', '.join(unknown)}"
            f" (known: {', '.join(sorted(KNOWN_STATUSES))})"
        )
    return statuses
