"""One HTTP request through an in-process ASGI app, as a stream: the response head, then body chunks.

A Ray Serve model replica (``server.ray_serve``) answers its ingress through a streaming
``DeploymentHandle`` call; ``call_asgi`` runs that request against the replica's own FastAPI app
(``server.api.create_api``), so every route, validation error, NDJSON stream and cancellation
behaves as it does under uvicorn in ``python app.py``. Closing the stream early (the client went
away) tells the app ``http.disconnect``, which cancels the request at its next evaluation.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import AsyncIterator, Awaitable, Callable

log = logging.getLogger(__name__)

ASGIApp = Callable[[dict, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]
Headers = list[tuple[bytes, bytes]]

APP_EXIT_TIMEOUT_S = 5.0  # how long a closed stream waits for the app to notice the disconnect


@dataclass
class HttpRequest:
    """What the ingress forwards: the request line, headers and the whole body (uploads included)."""

    method: str
    path: str
    query: bytes = b""
    headers: Headers = field(default_factory=list)
    body: bytes = b""
    client: tuple[str, int] | None = None


@dataclass
class HttpHead:
    """The response's status line and headers (the first item of a ``call_asgi`` stream)."""

    status: int
    headers: Headers

    def header(self, name: bytes) -> bytes | None:
        return next((v for k, v in self.headers if k.lower() == name), None)


async def call_asgi(app: ASGIApp, req: HttpRequest, extra_headers: Headers = ()) -> AsyncIterator[HttpHead | bytes]:
    """Yields the response's ``HttpHead`` (with ``extra_headers`` appended), then its body chunks."""
    scope = {
        "type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
        "method": req.method, "scheme": "http", "path": req.path, "raw_path": req.path.encode(),
        "query_string": req.query, "root_path": "", "headers": req.headers, "client": req.client,
        "server": ("127.0.0.1", 0), "state": {},
    }
    messages: asyncio.Queue[dict | None] = asyncio.Queue()
    gone = asyncio.Event()
    body_sent = False

    async def receive() -> dict:
        nonlocal body_sent
        if not body_sent:
            body_sent = True
            return {"type": "http.request", "body": req.body, "more_body": False}
        await gone.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        await messages.put(message)

    async def run() -> None:
        try:
            await app(scope, receive, send)
        finally:
            messages.put_nowait(None)  # the app returned or raised: no more messages

    task = asyncio.ensure_future(run())
    try:
        while (message := await messages.get()) is not None:
            if message["type"] == "http.response.start":
                yield HttpHead(message["status"], [*message.get("headers", []), *extra_headers])
            elif message["type"] == "http.response.body":
                if message.get("body"):
                    yield message["body"]
                if not message.get("more_body", False):
                    return
        task.result()  # the app ended without a complete response: re-raise its error
        raise RuntimeError(f"{req.method} {req.path}: the app sent no complete response")
    finally:
        gone.set()
        if not task.done():
            try:
                await asyncio.wait_for(asyncio.shield(task), APP_EXIT_TIMEOUT_S)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                task.cancel()
            except Exception as e:  # the app's own error after the client left: logged only
                log.debug("app error after disconnect: %s", e)
