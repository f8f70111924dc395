"""The HTTP layer's own protection, in front of the REST API and the Gradio UI alike.

``Guard`` (ASGI middleware): a request body cap (413, from ``--max-file-size``), a deadline for
the body to arrive (408: a client that sends its body a byte at a time does not hold a worker), and
failed-login throttling (429 with ``Retry-After`` on ``/login`` and on requests carrying
credentials, per client, after ``max_failures`` failures in ``window_s``). ``HeaderTimeoutH11``
(uvicorn protocol): a connection whose request line and headers are not complete within
``header_timeout_s`` is closed (slowloris); idle keep-alive connections close after uvicorn's
``timeout_keep_alive``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

from .fairness import client_key

log = logging.getLogger(__name__)

Scope = dict[str, Any]
Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class _Refused(Exception):
    def __init__(self, status: int, body: dict, headers: dict[str, str] | None = None):
        self.status, self.body, self.headers = status, body, headers or {}


@dataclass
class LoginThrottle:
    """Failed logins per client in a sliding window; ``blocked`` says for how long to refuse."""

    max_failures: int = 5
    window_s: float = 60.0
    _failures: dict[str, deque] = field(default_factory=dict)

    def _recent(self, client: str, now: float) -> deque:
        q = self._failures.setdefault(client, deque())
        while q and now - q[0] > self.window_s:
            q.popleft()
        return q

    def blocked(self, client: str) -> int:
        """Seconds until ``client`` may try again (0 = now)."""
        now = time.monotonic()
        q = self._recent(client, now)
        if len(q) < self.max_failures:
            if not q:
                self._failures.pop(client, None)
            return 0
        return max(1, int(q[0] + self.window_s - now) + 1)

    def failed(self, client: str) -> None:
        self._recent(client, time.monotonic()).append(time.monotonic())

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)


def _is_login_attempt(scope: Scope) -> bool:
    path = scope.get("path", "")
    has_credentials = any(k == b"authorization" for k, _ in scope.get("headers", ()))
    return (scope.get("method") == "POST" and path.rstrip("/").endswith("/login")) or has_credentials


def _failed_login(scope: Scope, status: int) -> bool:
    if status == 401:
        return True
    return scope.get("method") == "POST" and scope.get("path", "").rstrip("/").endswith("/login") and status >= 400


class Guard:
    """ASGI middleware: body cap, body deadline, failed-login throttling (see the module doc).

    Args:
        app: the ASGI app behind it.
        max_body: largest request body in bytes (413 above it).
        body_timeout_s: the whole body must arrive within this (408 otherwise).
        throttle: failed-login bookkeeping; ``None`` turns throttling off.
        trusted_header: behind a proxy, the header naming the client (``fairness.client_key``).
    """

    def __init__(self, app: Callable, max_body: int, body_timeout_s: float = 30.0, throttle: LoginThrottle | None = None, trusted_header: str | None = None):
        self.app, self.max_body, self.body_timeout_s = app, max_body, body_timeout_s
        self.throttle, self.trusted_header = throttle, trusted_header

    def _client(self, scope: Scope) -> str:
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope.get("headers", ())}
        host = scope["client"][0] if scope.get("client") else None
        return client_key(host, headers, self.trusted_header)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        client = self._client(scope)
        login = self.throttle is not None and _is_login_attempt(scope)
        try:
            if login:
                wait = self.throttle.blocked(client)
                if wait:
                    raise _Refused(429, {"error": "too_many_failed_logins", "message": f"too many failed logins from this client; retry in {wait} s"}, {"Retry-After": str(wait)})
            length = dict(scope.get("headers", ())).get(b"content-length")
            if length is not None and length.isdigit() and int(length) > self.max_body:
                raise _Refused(413, {"error": "too_large", "field": "body", "message": f"body: at most {self.max_body} bytes; got {int(length)}"})
        except _Refused as r:
            return await _answer(send, r)

        refused: list[_Refused] = []
        state = {"received": 0, "complete": False, "started": False, "deadline": time.monotonic() + self.body_timeout_s}

        async def guarded_receive() -> Message:
            if state["complete"]:
                return await receive()  # after the body: waiting for a disconnect, no deadline
            try:
                message = await asyncio.wait_for(receive(), max(0.0, state["deadline"] - time.monotonic()))
            except asyncio.TimeoutError:
                refused.append(_Refused(408, {"error": "timeout", "field": "body", "message": f"body: not received within {self.body_timeout_s:g} s"}))
                raise
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.max_body:
                    refused.append(_Refused(413, {"error": "too_large", "field": "body", "message": f"body: at most {self.max_body} bytes"}))
                    raise _Refused(413, {})
                if not message.get("more_body", False):
                    state["complete"] = True
            else:
                state["complete"] = True
            return message

        async def guarded_send(message: Message) -> None:
            if refused:  # the app answered a body we cut off (usually 500): answer ours instead
                if message["type"] == "http.response.start" and not state["started"]:
                    state["started"] = True
                    await _answer(send, refused[0])
                return
            if message["type"] == "http.response.start":
                state["started"] = True
                if login:
                    status = int(message["status"])
                    if _failed_login(scope, status):
                        self.throttle.failed(client)
                    elif status < 400:
                        self.throttle.succeeded(client)
            await send(message)

        try:
            await self.app(scope, guarded_receive, guarded_send)
        except (_Refused, asyncio.TimeoutError):
            pass
        except Exception:
            if not refused:
                raise
        if refused and not state["started"]:
            await _answer(send, refused[0])


async def _answer(send: Send, r: _Refused) -> None:
    body = json.dumps(r.body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), (b"connection", b"close")]
    headers += [(k.lower().encode(), v.encode()) for k, v in r.headers.items()]
    await send({"type": "http.response.start", "status": r.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class HeaderTimeoutH11(H11Protocol):
    """uvicorn's h11 protocol, closing connections whose request headers are not complete within
    ``header_timeout_s`` (a slowloris client otherwise holds a connection forever: uvicorn's
    keep-alive timer stops at the first byte of a request)."""

    header_timeout_s = 10.0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(self.header_timeout_s, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        timer = getattr(self, "_header_timer", None)
        if timer is not None:
            timer.cancel()
            self._header_timer = None

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE:  # the request line and headers are in
            self._cancel_header_timer()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()  # the next request on this connection gets the same deadline

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def _header_timeout(self) -> None:
        self._header_timer = None
        if self.conn.their_state is h11.IDLE and not self.transport.is_closing():
            log.info("closing a connection whose request headers did not arrive within %g s", self.header_timeout_s)
            self.transport.close()


def header_timeout_protocol(seconds: float) -> type[HeaderTimeoutH11]:
    """``HeaderTimeoutH11`` with its deadline set (uvicorn takes a protocol class)."""
    return type("HeaderTimeoutH11", (HeaderTimeoutH11,), {"header_timeout_s": float(seconds)})
