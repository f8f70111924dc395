"""The REST API of the model server (FastAPI; its OpenAPI description is at /openapi.json).

``GET /health``, ``GET /v1/info``, ``POST /v1/generate``, ``POST /v1/compare_encoders``,
``POST /v1/style_transfer``, ``POST /v1/paint_with_words``. Images come back as base64 PNGs with
their settings embedded (PNG text ``parameters`` and ``ediff``). Bad input → 422
``{"field", "message"}``; a full queue → 503 and a client past its share (``fairness``) → 429, both
with ``Retry-After``. With ``"stream": true`` the
answer is NDJSON: one ``{"event": "progress", ...}`` line per denoiser evaluation, then one
``{"event": "result", ...}`` (or ``{"event": "error", ...}``) line. A client that disconnects
cancels its request.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from dataclasses import asdict, replace
from typing import AsyncIterator, Callable

from fastapi import Depends, FastAPI, HTTPException, Request
from starlette.exceptions import HTTPException as StarletteHTTPException
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials
from pydantic import BaseModel

from ediff_core.features.ablation import ablation_grid
from ediff_core.core.images import encode_png
from ediff_core.pipeline import GenerationResult, Progress
from ediff_core.core.request import GenerationRequest, RequestError

from .fairness import TooManyRequests, client_key
from .model import Model, Prepare
from .scheduler import Busy, Cancelled, Ticket
from .schemas import CompareBody, GenerateBody, PaintBody, StyleBody, describe_validation_error
from .uploads import check_base64_size, decode_base64_image

POLL_S = 0.01  # how often a waiting handler checks for events and for a gone client


class ErrorBody(BaseModel):
    """Every error answer: the field at fault (when one is), what is allowed, and a kind."""

    field: str | None = None
    message: str
    error: str | None = None
    errors: list[dict] | None = None


ERRORS: dict[int | str, dict] = {
    400: {"model": ErrorBody, "description": "the body could not be read"},
    408: {"model": ErrorBody, "description": "the body did not arrive in time (--body-timeout)"},
    413: {"model": ErrorBody, "description": "the body is over the cap (from --max-file-size)"},
    422: {"model": ErrorBody, "description": "a field is invalid; `field` names it, `message` says what is allowed"},
    429: {"model": ErrorBody, "description": "this client has its share in flight (--max-per-client, --client-budget), or too many failed logins; see Retry-After"},
    499: {"model": ErrorBody, "description": "the request was cancelled"},
    503: {"model": ErrorBody, "description": "the server is full (--max-queue); see Retry-After"},
}
STREAMED: dict[int | str, dict] = {
    200: {"description": "the result as JSON, or with `stream: true` NDJSON: progress lines, then a result (or error) line",
          "content": {"application/json": {}, "application/x-ndjson": {"schema": {"type": "string"}}}},
}


class ClientGone(Exception):
    """The HTTP client disconnected; its request was cancelled."""


def result_json(result: GenerationResult) -> dict:
    """Images as base64 PNG with embedded metadata, plus per-image metadata and timings."""
    images = []
    for k, img in enumerate(result.images):
        png = encode_png(img, result.png_info(k))
        images.append({"seed": result.metadata[k]["seed"], "width": img.width, "height": img.height, "png_base64": base64.b64encode(png).decode(), "metadata": result.metadata[k]})
    return {"images": images, "timings": {k: round(v, 4) for k, v in result.timings.items()}}


def progress_json(p: Progress) -> dict:
    return {"event": "progress", **asdict(p)}


def error_json(e: BaseException) -> tuple[int, dict]:
    """(HTTP status, body) for an error raised while serving a request."""
    if isinstance(e, RequestError):
        return 422, {"field": e.field, "message": str(e)}
    if isinstance(e, Busy):
        return 503, {"error": "busy", "message": str(e)}
    if isinstance(e, TooManyRequests):
        return 429, {"error": "too_many_requests", "message": str(e)}
    if isinstance(e, (Cancelled, ClientGone)):
        return 499, {"error": "cancelled", "message": str(e)}
    return 500, {"error": type(e).__name__, "message": str(e) or type(e).__name__}


def error_response(e: BaseException) -> JSONResponse:
    status, body = error_json(e)
    headers = None
    if status in (429, 503):
        headers = {"Retry-After": str(getattr(e, "retry_after", 2))}
    return JSONResponse(body, status_code=status, headers=headers)


async def _next(ticket: Ticket, request: Request | None) -> Progress | GenerationResult:
    """The ticket's next event without blocking the event loop; cancels it if the client left."""
    while True:
        event = ticket.next_event(timeout=0)
        if event is not None:
            return event
        if request is not None and await request.is_disconnected():
            ticket.cancel()
            raise ClientGone(f"client disconnected; request {ticket.id} cancelled")
        await asyncio.sleep(POLL_S)


async def _collect(tickets: list[Ticket], request: Request) -> list[GenerationResult]:
    """Waits for every ticket's result (cancelling all of them if the client leaves or one fails)."""
    try:
        results = []
        for t in tickets:
            event = await _next(t, request)
            while not isinstance(event, GenerationResult):
                event = await _next(t, request)
            results.append(event)
        return results
    finally:
        for t in tickets:
            t.cancel()


def _stream(tickets: list[Ticket], labels: list[str], finish: Callable[[list[GenerationResult]], dict]) -> StreamingResponse:
    """NDJSON progress lines for every ticket, then one result line built by ``finish``."""

    async def lines() -> AsyncIterator[bytes]:
        results: dict[int, GenerationResult] = {}
        try:
            while len(results) < len(tickets):
                progressed = False
                for k, t in enumerate(tickets):
                    if k in results:
                        continue
                    event = t.next_event(timeout=0)
                    while event is not None:
                        progressed = True
                        if isinstance(event, GenerationResult):
                            results[k] = event
                            break
                        yield (json.dumps({**progress_json(event), "label": labels[k]}) + "\n").encode()
                        event = t.next_event(timeout=0)
                if not progressed:
                    await asyncio.sleep(POLL_S)
            yield (json.dumps({"event": "result", **finish([results[k] for k in range(len(tickets))])}) + "\n").encode()
        except Exception as e:
            status, body = error_json(e)
            yield (json.dumps({"event": "error", "status": status, **body}) + "\n").encode()
        finally:  # also runs when the client disconnects and Starlette cancels this generator
            for t in tickets:
                t.cancel()

    return StreamingResponse(lines(), media_type="application/x-ndjson")


def create_api(model: Model, auth: tuple[str, str] | None = None, title: str = "eDiff-I model server", trusted_header: str | None = None) -> FastAPI:
    """The FastAPI app over one ``Model``; Gradio is mounted on it by ``app.py``.

    Args:
        model: the loaded model every route shares.
        auth: (user, password) for HTTP Basic auth on /v1 routes; ``None`` = open. /health stays open.
        trusted_header: behind a reverse proxy, the header whose last address is the client's
            (``fairness.client_key``); ``None``: the connection's address.
    """
    app = FastAPI(title=title, version="1.0", description=__doc__)
    app.router.on_shutdown.append(model.close)
    basic = HTTPBasic(auto_error=False)

    def check_auth(creds: HTTPBasicCredentials | None = Depends(basic)) -> None:
        ok = creds is not None and secrets.compare_digest(creds.username, auth[0]) and secrets.compare_digest(creds.password, auth[1])
        if not ok:
            raise HTTPException(401, "authentication required", headers={"WWW-Authenticate": "Basic"})

    # Without --auth the routes take no credentials at all (a stray Authorization header is ignored).
    guarded = [Depends(check_auth)] if auth is not None else []
    errors = {**ERRORS, **({401: {"model": ErrorBody, "description": "login required (--auth)"}} if auth is not None else {})}
    generation = {**errors, **STREAMED}

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:  # FastAPI's own: in ErrorBody's shape
        field = "body" if exc.status_code == 400 else None
        return JSONResponse({"field": field, "message": f"body: {exc.detail}" if field else str(exc.detail), "error": f"http_{exc.status_code}"},
                            status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(describe_validation_error(exc.errors()), status_code=422)

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(Busy)
    async def _busy(request: Request, exc: Busy) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(TooManyRequests)
    async def _too_many(request: Request, exc: TooManyRequests) -> JSONResponse:
        return error_response(exc)

    def client_of(request: Request) -> str:
        return client_key(request.client.host if request.client else None, request.headers, trusted_header)

    @app.get("/health", tags=["server"])
    def health() -> dict:
        """Status, model name, queue depth and the scheduler's batching counters."""
        return model.health()

    @app.get("/v1/info", tags=["server"], dependencies=guarded, responses=errors)
    def info() -> dict:
        """Encoders, resolutions, each expert with its σ interval, parameter counts."""
        return model.info()

    async def serve(requests: list[GenerationRequest], labels: list[str], stream: bool, request: Request, finish: Callable[[list[GenerationResult]], dict], prepare: Prepare | None = None):
        # RequestError -> 422, TooManyRequests -> 429, Busy -> 503; ``prepare`` runs in the slot
        tickets = model.submit_many(requests, client_of(request), prepare)
        if stream:
            return _stream(tickets, labels, finish)
        try:
            results = await _collect(tickets, request)
        except Exception as e:
            return error_response(e)
        return await asyncio.to_thread(finish, results)  # PNG encoding off the event loop

    @app.post("/v1/generate", tags=["generate"], dependencies=guarded, responses=generation)
    async def generate(body: GenerateBody, request: Request):
        """Text to image through the full cascade."""
        req = body.to_request()
        return await serve([req], ["image"], body.stream, request, lambda rs: result_json(rs[0]))

    @app.post("/v1/compare_encoders", tags=["generate"], dependencies=guarded, responses=generation)
    async def compare_encoders(body: CompareBody, request: Request):
        """The same prompt and seed with CLIP only, T5 only and both encoders (§5.2), side by side."""
        base = body.to_request()
        modes = list(dict.fromkeys(body.modes))
        reqs = [replace(base, encoders=m) for m in modes]

        def finish(results: list[GenerationResult]) -> dict:
            out = {"modes": {m: result_json(r) for m, r in zip(modes, results)}}
            strip = ablation_grid(dict(zip(modes, results)))
            out["grid_png_base64"] = base64.b64encode(encode_png(strip)).decode()
            return out

        return await serve(reqs, modes, body.stream, request, finish)

    @app.post("/v1/style_transfer", tags=["generate"], dependencies=guarded, responses=generation)
    async def style_transfer(body: StyleBody, request: Request):
        """Generation conditioned on the CLIP image embedding of a reference (§5.3)."""

        def decode(req: GenerationRequest) -> GenerationRequest:  # in the request's slot
            return replace(req, style_image=decode_base64_image(body.style_image, "style_image"))

        check_base64_size(body.style_image, "style_image")
        return await serve([body.to_request()], ["image"], body.stream, request, lambda rs: result_json(rs[0]), decode)

    @app.post("/v1/paint_with_words", tags=["generate"], dependencies=guarded, responses=generation)
    async def paint_with_words(body: PaintBody, request: Request):
        """A colour sketch with each colour mapped to a phrase of the prompt (§4.3)."""
        check_base64_size(body.sketch, "sketch")
        req = body.to_request()
        # the phrase caps and the prompt check now; the sketch is decoded and rasterised in the slot
        prepare = model.paint_prepare(req, lambda: decode_base64_image(body.sketch, "sketch"), body.phrase_map())
        return await serve([req], ["image"], body.stream, request, lambda rs: result_json(rs[0]), prepare)

    return app
