"""The REST API of the model server (FastAPI; its OpenAPI description is at /openapi.json).

``GET /health``, ``GET /v1/info``, ``POST /v1/generate``, ``POST /v1/compare_encoders``,
``POST /v1/style_transfer``, ``POST /v1/paint_with_words``. Images come back as base64 PNGs with
their settings embedded (PNG text ``parameters`` and ``ediff``). Bad input → 422
``{"field", "message"}``; a full queue → 503 with ``Retry-After``. With ``"stream": true`` the
answer is NDJSON: one ``{"event": "progress", ...}`` line per denoiser evaluation, then one
``{"event": "result", ...}`` (or ``{"event": "error", ...}``) line. A client that disconnects
cancels its request.
"""

from __future__ import annotations

import asyncio
import base64
import json
import secrets
from dataclasses import asdict
from typing import AsyncIterator, Callable

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from fastapi.security import HTTPBasic, HTTPBasicCredentials

from ediff_core.ablation import ablation_grid
from ediff_core.pipeline import GenerationResult, Progress
from ediff_core.request import GenerationRequest, RequestError

from .model import Model
from .scheduler import Busy, Cancelled, Ticket
from .schemas import CompareBody, GenerateBody, PaintBody, StyleBody, describe_validation_error
from .uploads import decode_base64_image, encode_png

POLL_S = 0.01  # how often a waiting handler checks for events and for a gone client


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
    if isinstance(e, (Cancelled, ClientGone)):
        return 499, {"error": "cancelled", "message": str(e)}
    return 500, {"error": type(e).__name__, "message": str(e) or type(e).__name__}


def error_response(e: BaseException) -> JSONResponse:
    status, body = error_json(e)
    headers = {"Retry-After": "2"} if status == 503 else None
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


def create_api(model: Model, auth: tuple[str, str] | None = None, title: str = "eDiff-I model server") -> FastAPI:
    """The FastAPI app over one ``Model``; Gradio is mounted on it by ``app.py``.

    Args:
        model: the loaded model every route shares.
        auth: (user, password) for HTTP Basic auth on /v1 routes; ``None`` = open. /health stays open.
    """
    app = FastAPI(title=title, version="1.0", description=__doc__)
    app.router.on_shutdown.append(model.close)
    basic = HTTPBasic(auto_error=False)

    def check_auth(creds: HTTPBasicCredentials | None = Depends(basic)) -> None:
        if auth is None:
            return
        ok = creds is not None and secrets.compare_digest(creds.username, auth[0]) and secrets.compare_digest(creds.password, auth[1])
        if not ok:
            raise HTTPException(401, "authentication required", headers={"WWW-Authenticate": "Basic"})

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(describe_validation_error(exc.errors()), status_code=422)

    @app.exception_handler(RequestError)
    async def _request_error(request: Request, exc: RequestError) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(Busy)
    async def _busy(request: Request, exc: Busy) -> JSONResponse:
        return error_response(exc)

    @app.get("/health", tags=["server"])
    def health() -> dict:
        """Status, model name, queue depth and the scheduler's batching counters."""
        return model.health()

    @app.get("/v1/info", tags=["server"], dependencies=[Depends(check_auth)])
    def info() -> dict:
        """Encoders, resolutions, each expert with its σ interval, parameter counts."""
        return model.info()

    async def serve(requests: list[GenerationRequest], labels: list[str], stream: bool, request: Request, finish: Callable[[list[GenerationResult]], dict]):
        tickets = model.submit_many(requests)  # RequestError -> 422, Busy -> 503
        if stream:
            return _stream(tickets, labels, finish)
        try:
            results = await _collect(tickets, request)
        except Exception as e:
            return error_response(e)
        return await asyncio.to_thread(finish, results)  # PNG encoding off the event loop

    @app.post("/v1/generate", tags=["generate"], dependencies=[Depends(check_auth)])
    async def generate(body: GenerateBody, request: Request):
        """Text to image through the full cascade."""
        req = body.to_request()
        return await serve([req], ["image"], body.stream, request, lambda rs: result_json(rs[0]))

    @app.post("/v1/compare_encoders", tags=["generate"], dependencies=[Depends(check_auth)])
    async def compare_encoders(body: CompareBody, request: Request):
        """The same prompt and seed with CLIP only, T5 only and both encoders (§5.2), side by side."""
        from dataclasses import replace

        base = body.to_request()
        modes = list(dict.fromkeys(body.modes))
        reqs = [replace(base, encoders=m) for m in modes]

        def finish(results: list[GenerationResult]) -> dict:
            out = {"modes": {m: result_json(r) for m, r in zip(modes, results)}}
            strip = ablation_grid(dict(zip(modes, results)))
            out["grid_png_base64"] = base64.b64encode(encode_png(strip)).decode()
            return out

        return await serve(reqs, modes, body.stream, request, finish)

    @app.post("/v1/style_transfer", tags=["generate"], dependencies=[Depends(check_auth)])
    async def style_transfer(body: StyleBody, request: Request):
        """Generation conditioned on the CLIP image embedding of a reference (§5.3)."""
        image = await asyncio.to_thread(decode_base64_image, body.style_image, "style_image")
        req = body.to_request(style_image=image)
        return await serve([req], ["image"], body.stream, request, lambda rs: result_json(rs[0]))

    @app.post("/v1/paint_with_words", tags=["generate"], dependencies=[Depends(check_auth)])
    async def paint_with_words(body: PaintBody, request: Request):
        """A colour sketch with each colour mapped to a phrase of the prompt (§4.3)."""
        def prepare() -> GenerationRequest:  # decoding and mask checks off the event loop
            sketch = decode_base64_image(body.sketch, "sketch")
            return model.paint_request(body.to_request(), sketch, body.phrase_map())

        req = await asyncio.to_thread(prepare)
        return await serve([req], ["image"], body.stream, request, lambda rs: result_json(rs[0]))

    return app
