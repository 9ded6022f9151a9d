"""A drop-in for the seed's Python ID service: ``GET /generate-id -> {"id": N}``, served from
the snowlease client's local buffer instead of a per-process Snowflake generator.

Two ways to run it, neither needs anything but the standard library and this package:

* stdlib HTTP server (threads)::

      SNOWLEASE_ADDR=snowlease-headless.ids.svc:7609 python3 generate_id_server.py --port 8000

* as a plain ASGI app under any ASGI server (uvicorn, hypercorn...), like the seed's::

      SNOWLEASE_ADDR=127.0.0.1:7609 uvicorn generate_id_server:app --port 8000

Unlike the seed's service, any number of worker processes or replicas may run: uniqueness
comes from the snowlease servers, not from a worker id each replica must own. ``SNOWLEASE_TOKEN``
sets the shared token; ``?count=N`` (1..10000) returns ``{"ids": [...]}``. Every response also
carries the ids as strings (``id_str`` / ``ids_str``), because JavaScript loses precision above
2^53.
"""

from __future__ import annotations

import argparse
import json
import os
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Awaitable, Callable, Dict, List, Optional, Tuple
from urllib.parse import parse_qs

import snowlease

MAX_COUNT = 10_000


def _addr() -> str:
    return os.environ.get("SNOWLEASE_ADDR", "127.0.0.1:7609")


def _body(take: Callable[[], int], query: str) -> Tuple[int, bytes]:
    """Status and JSON body for ``/generate-id?query``."""
    count_text = parse_qs(query).get("count", [None])[0]
    if count_text is None:
        id = take()
        return 200, json.dumps({"id": id, "id_str": str(id)}).encode()
    if not count_text.isdigit() or not 1 <= int(count_text) <= MAX_COUNT:
        return 400, json.dumps({"error": f"count must be 1..={MAX_COUNT}"}).encode()
    ids = [take() for _ in range(int(count_text))]
    return 200, json.dumps({"ids": ids, "ids_str": [str(i) for i in ids]}).encode()


# -- ASGI ----------------------------------------------------------------------------------

_async_client: Optional[snowlease.AsyncClient] = None

Scope = Dict[str, Any]
Receive = Callable[[], Awaitable[Dict[str, Any]]]
Send = Callable[[Dict[str, Any]], Awaitable[None]]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """The ASGI application (HTTP and lifespan)."""
    global _async_client
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _async_client = await snowlease.AsyncClient.connect(
                    _addr(), token=os.environ.get("SNOWLEASE_TOKEN"))
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if _async_client is not None:
                    await _async_client.close()
                await send({"type": "lifespan.shutdown.complete"})
                return
    if scope["type"] != "http":
        return
    if _async_client is None:  # a server without lifespan support
        _async_client = await snowlease.AsyncClient.connect(
            _addr(), token=os.environ.get("SNOWLEASE_TOKEN"))
    status, body = 404, b'{"error":"not found"}'
    if scope["path"] == "/generate-id" and scope["method"] == "GET":
        client = _async_client
        ids: List[int] = []
        query = scope.get("query_string", b"").decode()
        count_text = parse_qs(query).get("count", [None])[0]
        want = int(count_text) if count_text and count_text.isdigit() else 1
        for _ in range(min(want, MAX_COUNT)):
            ids.append(await client.next_id())
        status, body = _body(iter(ids).__next__, query)
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


# -- stdlib server -------------------------------------------------------------------------

def serve(port: int, host: str) -> None:
    """Serves until interrupted, with one shared thread-safe client."""
    client = snowlease.Client(_addr(), token=os.environ.get("SNOWLEASE_TOKEN"))

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
            path, _, query = self.path.partition("?")
            if path != "/generate-id":
                status, body = 404, b'{"error":"not found"}'
            else:
                try:
                    status, body = _body(client.next_id, query)
                except snowlease.Error as e:
                    status, body = 503, json.dumps({"error": str(e)}).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # no access log, like the seed's --no-access-log

    httpd = ThreadingHTTPServer((host, port), Handler)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
        client.close()


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description="GET /generate-id from a snowlease client")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    a = ap.parse_args()
    serve(a.port, a.host)
