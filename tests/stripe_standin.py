"""A local stand-in for the parts of Stripe's API that `sync` and the tie re-fetch call.

It behaves as Stripe documents these endpoints, so the client is tested against the same
rules it meets in production:

- GET /v1/subscriptions, /v1/customers, /v1/events: lists newest first (by `created`,
  then id), `limit` 1..100 (default 10), `starting_after` / `ending_before` cursors,
  `has_more`; an unknown cursor is a 400, as Stripe answers it.
- /v1/subscriptions without `status` hides canceled subscriptions ("if no value is
  supplied, all subscriptions that have not been canceled are returned"); `status=all`
  shows every one, `ended` canceled and incomplete_expired ones, any other value that one.
- /v1/events: `types[]=a&types[]=b` and `types[0]=a&types[1]=b` (up to 20), `type`,
  `created[gte|gt|lte|lt]`.
- GET /v1/subscriptions/<id>, /v1/customers/<id>: one object, or 404.
- A required `Authorization: Bearer <key>` header: anything else is a 401.
- An optional rate limit (requests per second, over a sliding second): past it, a 429
  with `Stripe-Rate-Limited-Reason` and, unless disabled, `Retry-After`.
- Injected faults: the next N requests answer 500 (or another status), or the connection
  is dropped without an answer.

Objects are encoded once when added, so that a list of 100,000 subscriptions serves pages
as fast as a benchmark needs. Every request is logged with its time and answer.
"""

from __future__ import annotations

import bisect
import collections
import json
import threading
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qsl, urlsplit

API_KEY = "sk_test_standin_4eC39HqLyjWDarjtT1zdp7dc"
LIST_PATHS = {
    "/v1/subscriptions": "subscription",
    "/v1/customers": "customer",
    "/v1/events": "event",
}


@dataclass(frozen=True)
class Logged:
    """One request the stand-in answered."""

    at: float  # time.monotonic()
    path: str
    query: tuple[tuple[str, str], ...]
    status: int


@dataclass
class _Collection:
    """One kind of object, kept in Stripe's list order (newest first)."""

    keys: list[tuple[int, str]] = field(default_factory=list)  # (-created, reversed id)
    encoded: dict[str, bytes] = field(default_factory=dict)
    # Only the fields the filters read: a 100,000-subscription account stays small.
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, obj: Mapping[str, Any]) -> None:
        object_id = obj["id"]
        if object_id in self.objects:
            self.keys.remove(self._key(self.objects[object_id]))
        self.objects[object_id] = {k: obj.get(k) for k in ("id", "created", "status", "type")}
        self.encoded[object_id] = json.dumps(obj, separators=(",", ":")).encode()
        bisect.insort(self.keys, self._key(obj))

    @staticmethod
    def _key(obj: Mapping[str, Any]) -> tuple[int, str]:
        # Newest first, and for one second the larger id first: invert the id's characters.
        inverted = "".join(chr(0x10FFFF - ord(c)) for c in obj["id"])
        return (-int(obj["created"]), inverted)

    def ordered_ids(self) -> list[str]:
        return ["".join(chr(0x10FFFF - ord(c)) for c in inverted) for _, inverted in self.keys]


class StripeStandIn:
    """Serves the stand-in API on 127.0.0.1 (a free port) from a background thread."""

    def __init__(
        self,
        *,
        api_key: str = API_KEY,
        rate_limit: float | None = None,
        retry_after: bool = True,
    ) -> None:
        self.api_key = api_key
        self.rate_limit = rate_limit
        self.retry_after = retry_after
        self.log: list[Logged] = []
        self._collections = {kind: _Collection() for kind in LIST_PATHS.values()}
        self._order_cache: dict[str, tuple[list[str], dict[str, int]]] = {}
        self._faults: collections.deque[int] = collections.deque()
        self._faults_at: dict[int, int] = {}
        self._served = 0
        self._accepted: collections.deque[float] = collections.deque()
        self._lock = threading.Lock()
        standin = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                standin._handle(self)

            def log_message(self, *_args: object) -> None:
                return

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    # -- state ------------------------------------------------------------------------------

    def add(self, kind: str, objects: Iterable[Mapping[str, Any]]) -> None:
        """Add or replace objects of one kind (subscription, customer, event)."""
        with self._lock:
            for obj in objects:
                self._collections[kind].add(obj)
            self._order_cache.pop(kind, None)

    def fail_next(self, count: int, status: int = 500) -> None:
        """The next `count` requests answer `status`; status 0 drops the connection."""
        with self._lock:
            self._faults.extend([status] * count)

    def fail_at(self, request_numbers: Iterable[int], status: int = 500) -> None:
        """Requests with these numbers (1 is the first this stand-in receives) answer `status`."""
        with self._lock:
            self._faults_at.update(dict.fromkeys(request_numbers, status))

    def heal(self) -> None:
        """Drop every fault still scheduled: the outage is over."""
        with self._lock:
            self._faults.clear()
            self._faults_at.clear()

    def answered(self, path: str | None = None) -> list[Logged]:
        """The requests logged so far, optionally only those for one path."""
        with self._lock:
            return [entry for entry in self.log if path is None or entry.path == path]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- serving ----------------------------------------------------------------------------

    def _handle(self, request: BaseHTTPRequestHandler) -> None:
        split = urlsplit(request.path)
        query = tuple(parse_qsl(split.query, keep_blank_values=True))
        status, body, headers = self._answer(split.path, query, request.headers)
        with self._lock:
            self.log.append(Logged(time.monotonic(), split.path, query, status))
        if status == 0:  # a dropped connection: no answer at all
            request.close_connection = True
            request.connection.close()
            return
        request.send_response(status)
        request.send_header("Content-Type", "application/json")
        request.send_header("Content-Length", str(len(body)))
        for name, value in headers.items():
            request.send_header(name, value)
        request.end_headers()
        request.wfile.write(body)

    def _answer(
        self, path: str, query: tuple[tuple[str, str], ...], headers: Mapping[str, str]
    ) -> tuple[int, bytes, dict[str, str]]:
        if headers.get("Authorization") != f"Bearer {self.api_key}":
            return _error(401, "Invalid API Key provided", "invalid_request_error")
        with self._lock:
            self._served += 1
            if self._served in self._faults_at:
                self._faults.appendleft(self._faults_at.pop(self._served))
            if self._faults:
                status = self._faults.popleft()
                return (status, b"", {}) if status == 0 else _error(status, "injected", "api_error")
            if self.rate_limit is not None and not self._admit():
                extra = {"Stripe-Rate-Limited-Reason": "global-rate"}
                if self.retry_after:
                    extra["Retry-After"] = "1"
                status, body, _ = _error(
                    429, "Request rate limit exceeded.", "invalid_request_error"
                )
                return status, body, extra
        if path in LIST_PATHS:
            return self._list(path, LIST_PATHS[path], query)
        for prefix, kind in (
            ("/v1/subscriptions/", "subscription"),
            ("/v1/customers/", "customer"),
        ):
            if path.startswith(prefix):
                encoded = self._collections[kind].encoded.get(path.removeprefix(prefix))
                if encoded is None:
                    return _error(404, f"No such {kind}", "invalid_request_error")
                return 200, encoded, {}
        return _error(404, f"Unrecognized request URL (GET: {path})", "invalid_request_error")

    def _admit(self) -> bool:
        """A sliding one-second window of admitted requests (called with the lock held)."""
        now = time.monotonic()
        while self._accepted and now - self._accepted[0] >= 1.0:
            self._accepted.popleft()
        if len(self._accepted) >= (self.rate_limit or 0):
            return False
        self._accepted.append(now)
        return True

    def _list(
        self, path: str, kind: str, query: tuple[tuple[str, str], ...]
    ) -> tuple[int, bytes, dict[str, str]]:
        params = dict(query)
        try:
            limit = int(params.get("limit", "10"))
        except ValueError:
            return _error(400, "Invalid integer: limit", "invalid_request_error")
        if not 1 <= limit <= 100:
            return _error(
                400, "This value must be between 1 and 100 (limit)", "invalid_request_error"
            )
        with self._lock:
            collection = self._collections[kind]
            cached = self._order_cache.get(kind)
            if cached is None:
                ids = collection.ordered_ids()
                cached = self._order_cache[kind] = (ids, {oid: n for n, oid in enumerate(ids)})
            ordered, position = cached
            objects = collection.objects
            encoded = collection.encoded
        keep = _filter(kind, query)
        if keep is None:
            return _error(400, "Invalid array or filter", "invalid_request_error")
        start, stop = 0, len(ordered)
        if "starting_after" in params:
            if params["starting_after"] not in objects:
                return _error(
                    400, f"No such {kind}: '{params['starting_after']}'", "invalid_request_error"
                )
            start = position[params["starting_after"]] + 1
        if "ending_before" in params:
            if params["ending_before"] not in objects:
                return _error(
                    400, f"No such {kind}: '{params['ending_before']}'", "invalid_request_error"
                )
            stop = position[params["ending_before"]]
        chosen: list[str] = []
        has_more = False
        candidates = ordered[start:stop]
        if "ending_before" in params and "starting_after" not in params:
            candidates = list(reversed(candidates))  # nearest to the cursor first
        for object_id in candidates:
            if not keep(objects[object_id]):
                continue
            if len(chosen) == limit:
                has_more = True
                break
            chosen.append(object_id)
        if "ending_before" in params and "starting_after" not in params:
            chosen.reverse()
        body = b"".join(
            [
                b'{"object":"list","data":[',
                b",".join(encoded[object_id] for object_id in chosen),
                b'],"has_more":',
                b"true" if has_more else b"false",
                f',"url":"{path}"}}'.encode(),
            ]
        )
        return 200, body, {}


def _filter(kind: str, query: tuple[tuple[str, str], ...]):
    """The predicate a list request's filters make, or None for an invalid filter."""
    params = dict(query)
    checks = []
    if kind == "subscription":
        status = params.get("status")
        if status is None:
            checks.append(lambda o: o.get("status") != "canceled")
        elif status == "ended":
            checks.append(lambda o: o.get("status") in ("canceled", "incomplete_expired"))
        elif status != "all":
            checks.append(lambda o: o.get("status") == status)
    if kind == "event":
        types = [value for key, value in query if key == "types[]" or _indexed(key, "types")]
        if len(types) > 20 or (types and "type" in params):
            return None
        if types:
            wanted = frozenset(types)
            checks.append(lambda o: o.get("type") in wanted)
        elif "type" in params:
            checks.append(lambda o: o.get("type") == params["type"])
    bounds = {
        "created[gte]": lambda c, v: c >= v,
        "created[gt]": lambda c, v: c > v,
        "created[lte]": lambda c, v: c <= v,
        "created[lt]": lambda c, v: c < v,
    }
    for key, compare in bounds.items():
        if key in params:
            try:
                value = int(params[key])
            except ValueError:
                return None
            checks.append(lambda o, compare=compare, value=value: compare(int(o["created"]), value))
    return lambda obj: all(check(obj) for check in checks)


def _indexed(key: str, name: str) -> bool:
    """Whether `key` is `name[<n>]`, the array form stripe-python sends."""
    return key.startswith(f"{name}[") and key.endswith("]") and key[len(name) + 1 : -1].isdigit()


def _error(status: int, message: str, kind: str) -> tuple[int, bytes, dict[str, str]]:
    return status, json.dumps({"error": {"message": message, "type": kind}}).encode(), {}
