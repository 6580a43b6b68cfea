"""A WSGI application called from an ASGI server: the Flask app behind the ASGI edge.

The edge (asgi.py) answers POST /webhook on its event loop; every other request (the
health and readiness checks, /metrics, errors such as 405 and 404) is handed to the Flask
app here, on a thread of a pool, since Flask and what it calls block. Requests of these
routes are small: the edge reads the body before the call (see AsgiEdge._to_flask), and
the response is collected whole before it is sent.
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
    app: WSGIApp,
    scope: dict[str, Any],
    body: bytes,
    content_length: int,
    send: Send,
    threads: Executor,
) -> None:
    """Answer the HTTP request of `scope` from `app`, with `body` as its input and
    `content_length` as the length it declares."""
    environ = wsgi_environ(scope, body, content_length)
    loop = asyncio.get_running_loop()
    status, headers, content = await loop.run_in_executor(threads, _run, app, environ)
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})


def wsgi_environ(scope: dict[str, Any], body: bytes, content_length: int) -> dict[str, Any]:
    """The WSGI environ (PEP 3333) of an ASGI HTTP scope whose body has been read: its
    length is given, and a chunked transfer is over (the application reads no framing)."""
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
        "wsgi.input_terminated": True,
    }
    for raw_name, raw_value in scope.get("headers", []):
        name = raw_name.decode("latin-1").upper().replace("-", "_")
        if name in ("CONTENT_LENGTH", "TRANSFER_ENCODING"):
            continue  # the body is read: its length is what counts
        value = raw_value.decode("latin-1")
        key = "CONTENT_TYPE" if name == "CONTENT_TYPE" else f"HTTP_{name}"
        # Repeated headers are joined with commas, as WSGI servers do.
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    environ["CONTENT_LENGTH"] = str(content_length)
    return environ


def _latin1(text: str) -> str:
    """A path as WSGI carries it: its UTF-8 bytes, each read as one latin-1 character."""
    return text.encode("utf-8").decode("latin-1")


def _run(app: WSGIApp, environ: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """Call the app on this thread; its status, headers and whole body."""
    started: list[tuple[str, list[tuple[str, str]]]] = []

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None):
        # Nothing is sent before the app returns, so a second call (with exc_info, as PEP
        # 3333 allows for an error) simply replaces the status and headers.
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
