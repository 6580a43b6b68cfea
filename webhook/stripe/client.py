"""A small client for the read-only calls `sync` makes to Stripe's API, within its limits.

Why not stripe-python's StripeClient: it retries only when told to, never retries a 429,
and builds an object per field of every listed item; a sync of 100,000 subscriptions wants
plain dicts, its own pace and its own patience. This client:

- paces requests with a throttle (STRIPE_API_RATE, else 20 requests/s for test-mode keys
  and 80/s for live keys: under Stripe's 25 and 100 per account, leaving room for the
  rest of the integration);
- on a 429 waits `Retry-After` when Stripe sends it, else backs off exponentially, and
  tries again; on a 5xx or a dropped connection backs off and tries again; gives up with
  a one-line error after STRIPE_API_MAX_RETRIES retries (7 by default: about a minute of
  backing off; a connection that cannot be made at all, three);
- answers a 401 or 403 at once with a one-line error that never repeats the key;
- pins `Stripe-Version` to the version stripe-python is built for, so fetched objects
  have one known shape (events keep the version they were created in, whatever is asked);
- keeps one HTTP connection open (keep-alive) and reconnects when it breaks.
"""

import http.client
import json
import logging
import random
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from queue import Full, Queue
from typing import Any
from urllib.parse import urlencode, urlsplit

import stripe

from webhook.core.config import checked_stripe_api_base
from webhook.core.errors import ConfigError, ProjectError

log = logging.getLogger(__name__)

DEFAULT_API_BASE = "https://api.stripe.com"
TEST_MODE_RATE = 20.0
LIVE_MODE_RATE = 80.0
DEFAULT_MAX_RETRIES = 7
# A connection that cannot be made again and again is more often a wrong STRIPE_API_BASE
# than a passing fault: give up sooner, and let a later run continue.
MAX_CONNECT_ATTEMPTS = 4
BACKOFF_START_SECONDS = 0.5
BACKOFF_CAP_SECONDS = 30.0
REQUEST_TIMEOUT_SECONDS = 60.0
PAGE_SIZE = 100


class StripeAPIError(ProjectError):
    """Stripe's API refused a request or could not be reached; the message says which."""


@dataclass
class Counters:
    """What the client did, for the sync summary and the tests."""

    requests: int = 0
    rate_limited: int = 0
    retried: int = 0
    waited_seconds: float = 0.0


@dataclass(frozen=True)
class Page:
    """One page of a list, and when its request was sent (Unix seconds, this host's clock)."""

    data: list[dict[str, Any]]
    has_more: bool
    requested_at: float


class Throttle:
    """Request starts at least 1/rate seconds apart, measured from the actual starts.

    Spacing from the actual start, not from a schedule, means a late request is never
    followed by a quick one to catch up: Stripe counts requests in sliding windows, and a
    catch-up burst is what would cross its limit.
    """

    def __init__(
        self,
        rate: float,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.interval = 1.0 / rate
        self._clock = clock
        self._sleep = sleep
        self._next = 0.0

    def wait(self) -> float:
        """Sleep until the next request may start; return how long that was."""
        delay = max(0.0, self._next - self._clock())
        if delay:
            self._sleep(delay)
        self._next = self._clock() + self.interval
        return delay

    def hold(self, seconds: float) -> None:
        """Start nothing for `seconds` from now (after a 429)."""
        self._next = max(self._next, self._clock() + seconds)


def read_ahead(pages: Iterator[Page], depth: int = 2) -> Iterator[Page]:
    """The same pages, fetched by a thread up to `depth` pages ahead of the consumer.

    Writing a page to the database and fetching the next one then overlap, so a sync runs
    at the pace of the slower of the two (at Stripe's rate limit, the fetching) instead of
    their sum. An error while fetching reaches the consumer at the page it would have been.
    """
    queue: Queue[Page | BaseException | None] = Queue(maxsize=depth)
    stop = threading.Event()

    def fetch() -> None:
        try:
            for page in pages:
                while not stop.is_set():
                    try:
                        queue.put(page, timeout=0.1)
                        break
                    except Full:
                        continue
                if stop.is_set():
                    return
            queue.put(None)
        except BaseException as exc:  # handed to the consumer, raised there
            queue.put(exc)

    thread = threading.Thread(target=fetch, name="stripe-read-ahead", daemon=True)
    thread.start()
    try:
        while True:
            item = queue.get()
            if item is None:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        thread.join(timeout=REQUEST_TIMEOUT_SECONDS)


def default_rate(api_key: str) -> float:
    """The pace to keep when none is configured: well under the key's mode's limit."""
    return TEST_MODE_RATE if "_test_" in api_key else LIVE_MODE_RATE


@dataclass
class StripeAPI:
    """GET requests to Stripe's API (or a stand-in at `base_url`)."""

    api_key: str = field(repr=False)
    base_url: str | None = None
    rate: float | None = None
    max_retries: int = DEFAULT_MAX_RETRIES
    backoff_start: float = BACKOFF_START_SECONDS
    timeout: float = REQUEST_TIMEOUT_SECONDS
    sleep: Callable[[float], None] = time.sleep
    counters: Counters = field(default_factory=Counters)

    def __post_init__(self) -> None:
        if not self.api_key:
            raise ConfigError(
                "STRIPE_API_KEY is not set: sync reads your subscriptions, customers and events"
                " from Stripe's API; give a secret or restricted key with read access to them"
            )
        # Checked as load_settings checks it (a port that is not a number made `.port`
        # raise here, a traceback): the client may be given a base of its own.
        base = urlsplit(checked_stripe_api_base(self.base_url) or DEFAULT_API_BASE)
        self._scheme, self._host, self._port = base.scheme, base.hostname, base.port
        self._prefix = base.path.rstrip("/")
        self.throttle = Throttle(self.rate or default_rate(self.api_key), sleep=self.sleep)
        self._connection: http.client.HTTPConnection | None = None
        self.max_attempts = self.max_retries + 1

    def __enter__(self) -> "StripeAPI":
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    @property
    def where(self) -> str:
        return f"{self._scheme}://{self._host}{f':{self._port}' if self._port else ''}"

    def list_pages(
        self, path: str, params: Sequence[tuple[str, str]], starting_after: str | None = None
    ) -> Iterator[Page]:
        """Every page of a list endpoint, newest first, from `starting_after` on."""
        cursor = starting_after
        while True:
            query = [*params, ("limit", str(PAGE_SIZE))]
            if cursor:
                query.append(("starting_after", cursor))
            requested_at = time.time()
            document = self.get(path, query)
            data = document.get("data")
            if not isinstance(data, list):
                raise StripeAPIError(f"{path} answered something that is not a list")
            page = Page(
                [o for o in data if isinstance(o, dict)],
                bool(document.get("has_more")),
                requested_at,
            )
            yield page
            if not page.has_more or not page.data:
                return
            cursor = page.data[-1].get("id")

    def get(self, path: str, params: Sequence[tuple[str, str]] = ()) -> dict[str, Any]:
        """One GET, paced and retried as the module docstring says; the decoded JSON."""
        target = f"{self._prefix}{path}" + (f"?{urlencode(list(params))}" if params else "")
        for attempt in range(1, self.max_attempts + 1):
            self.counters.waited_seconds += self.throttle.wait()
            self.counters.requests += 1
            try:
                status, headers, body = self._send(target)
            except (OSError, http.client.HTTPException) as exc:
                reason = _reason(exc)
                self._retry_or_raise(
                    attempt,
                    f"cannot reach Stripe's API at {self.where}: {reason}",
                    limit=min(self.max_attempts, MAX_CONNECT_ATTEMPTS),
                )
                continue
            if status == 200:
                return _decode(body, path)
            message = _stripe_message(body)
            if status == 401:
                raise StripeAPIError(
                    "Stripe refused the API key (401): check STRIPE_API_KEY (a secret key sk_…"
                    " or a restricted key rk_… of the right mode)"
                )
            if status == 403:
                raise StripeAPIError(
                    f"the API key may not read {path} (403): give it read access to"
                    " subscriptions, customers and events"
                )
            if status == 429:
                self.counters.rate_limited += 1
                wait = _retry_after(headers) or self._backoff(attempt, start=1.0)
                self.throttle.hold(wait)
                self._retry_or_raise(
                    attempt, f"Stripe kept answering 429 (rate limited) for {path}", wait=0.0
                )
                continue
            if status >= 500 and headers.get("stripe-should-retry") != "false":
                self._retry_or_raise(attempt, f"Stripe answered {status} for {path}: {message}")
                continue
            raise StripeAPIError(f"Stripe answered {status} for {path}: {message}")
        raise AssertionError("unreachable")  # the loop either returns or raises

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    def _send(self, target: str) -> tuple[int, dict[str, str], bytes]:
        if self._connection is None:
            if self._scheme == "https":
                self._connection = http.client.HTTPSConnection(
                    self._host,
                    self._port,
                    timeout=self.timeout,
                    context=ssl.create_default_context(),
                )
            else:
                self._connection = http.client.HTTPConnection(
                    self._host, self._port, timeout=self.timeout
                )
        try:
            self._connection.request(
                "GET",
                target,
                headers={
                    "Authorization": f"Bearer {self.api_key}",
                    "Stripe-Version": stripe.api_version,
                    "User-Agent": "stripe-plan-webhook-sync",
                    "Accept": "application/json",
                },
            )
            response = self._connection.getresponse()
            body = response.read()
        except BaseException:
            self.close()  # a broken connection is not reused
            raise
        headers = {name.lower(): value for name, value in response.getheaders()}
        if headers.get("connection", "").lower() == "close":
            self.close()
        return response.status, headers, body

    def _retry_or_raise(
        self, attempt: int, message: str, *, wait: float | None = None, limit: int | None = None
    ) -> None:
        if attempt >= (limit or self.max_attempts):
            raise StripeAPIError(f"{message} (gave up after {attempt} attempts)")
        self.counters.retried += 1
        delay = self._backoff(attempt) if wait is None else wait
        log.info("%s; trying again in %.1fs", message, delay)
        if delay:
            self.sleep(delay)
            self.counters.waited_seconds += delay

    def _backoff(self, attempt: int, start: float | None = None) -> float:
        base = (start or self.backoff_start) * 2 ** (attempt - 1)
        return min(BACKOFF_CAP_SECONDS, base) * random.uniform(0.8, 1.2)


def _decode(body: bytes, path: str) -> dict[str, Any]:
    try:
        document = json.loads(body)
    except ValueError:
        raise StripeAPIError(f"{path} answered something that is not JSON") from None
    if not isinstance(document, dict):
        raise StripeAPIError(f"{path} answered something that is not a JSON object")
    return document


def _stripe_message(body: bytes) -> str:
    """Stripe's own error message (it never contains the full key), or a placeholder."""
    try:
        message = json.loads(body)["error"]["message"]
    except (ValueError, KeyError, TypeError):
        return "no details"
    return str(message).splitlines()[0][:200] if message else "no details"


def _retry_after(headers: dict[str, str]) -> float | None:
    try:
        value = float(headers.get("retry-after", ""))
    except ValueError:
        return None
    return min(max(value, 0.0), BACKOFF_CAP_SECONDS)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, socket.timeout | TimeoutError):
        return "timed out"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__
