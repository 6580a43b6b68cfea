"""A WSGI application called from an ASGI server: the Flask app behind the ASGI edge.

The edge (asgi.py) answers POST /webhook on its event loop; every other request (the
health and readiness checks, /metrics, errors such as 405 and 404, and a delivery the edge
leaves to Flask) is handed to the Flask app here, on a thread of a pool, since Flask and
what it calls block. Requests of these routes are small: the body is read whole before
the call and the response is collected whole before it is sent.
"""

import asyncio
import io
import sys
from collections.abc import Callable, Iterable
from concurrent.futures import Executor
from typing import Any

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]
Send = Callable[[dict[str, Any]], Any]


async def call(
    app: WSGIApp, scope: dict[str, Any], body: bytes, send: Send, threads: Executor
) -> None:
    """Answer the HTTP request of `scope` (with its whole `body`) from `app`."""
    environ = wsgi_environ(scope, body)
    loop = asyncio.get_running_loop()
    status, headers, content = await loop.run_in_executor(threads, _run, app, environ)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})


def wsgi_environ(scope: dict[str, Any], body: bytes) -> dict[str, Any]:
    """The WSGI environ (PEP 3333) of an ASGI HTTP scope."""
    server = scope.get("server") or ("localhost", 80)
    client = scope.get("client") or ("", 0)
    environ: dict[str, Any] = {
        "REQUEST_METHOD": scope["method"],
        "SCRIPT_NAME": _latin1(scope.get("root_path", "")),
        "PATH_INFO": _latin1(scope["path"]),
        "QUERY_STRING": scope.get("query_string", b"").decode("latin-1"),
        "SERVER_NAME": str(server[0]),
        "SERVER_PORT": str(server[1] or 80),
        "REMOTE_ADDR": str(client[0]),
        "REMOTE_PORT": str(client[1]),
        "SERVER_PROTOCOL": f"HTTP/{scope.get('http_version', '1.1')}",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": scope.get("scheme", "http"),
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": sys.stderr,
        "wsgi.multithread": True,
        "wsgi.multiprocess": True,
        "wsgi.run_once": False,
    }
    for raw_name, raw_value in scope.get("headers", []):
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        value = raw_value.decode("latin-1")
        key = name if name in ("CONTENT_TYPE", "CONTENT_LENGTH") else f"HTTP_{name}"
        # Repeated headers are joined with commas, as WSGI servers do.
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    environ.setdefault("CONTENT_LENGTH", str(len(body)))
    return environ


def _latin1(text: str) -> str:
    """A path as WSGI carries it: its UTF-8 bytes, each read as one latin-1 character."""
    return text.encode("utf-8").decode("latin-1")


def _run(app: WSGIApp, environ: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Call the app on this thread; its status, headers and whole body."""
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None):
        if exc_info is not None and started:
            raise exc_info[1].with_traceback(exc_info[2])
        started[:] = [(status, headers)]
        return _no_write

    result = app(environ, start_response)
    try:
        content = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    status, headers = started[0]
    encoded = [(name.lower().encode("latin-1"), value.encode("latin-1")) for name, value in headers]
    return int(status.split(" ", 1)[0]), encoded, content


def _no_write(data: bytes) -> None:
    raise NotImplementedError("the write() callable is not supported; return the body instead")
