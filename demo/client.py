"""``RemoteModel``: the UI's model interface over HTTP, for ``app.py --server-url URL``.

It speaks the model server's REST API with ``"stream": true`` (NDJSON progress lines, then the
result), so the UI shows per-step progress for a model running in another process or machine.
Closing an iterator closes the HTTP stream, which cancels the request on the server.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any, Iterator, Sequence

import httpx
from PIL import Image

from ediff_core.pipeline import GenerationResult, Progress
from ediff_core.core.request import API_FIELDS, GenerationRequest, RequestError
from server.fairness import TooManyRequests
from server.model import Prepare, SketchSource
from server.scheduler import Busy, Cancelled

Event = Progress | GenerationResult
CLIENT_HEADER = "X-Ediff-Client"
_PROGRESS_FIELDS = ("stage", "step", "steps", "sigma", "expert", "done", "total")


def _png_b64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _result(body: dict) -> GenerationResult:
    images = [Image.open(io.BytesIO(base64.b64decode(im["png_base64"]))).convert("RGB") for im in body["images"]]
    return GenerationResult(images, {}, [im["metadata"] for im in body["images"]], body.get("timings", {}))


def _raise(status: int, body: dict) -> None:
    """The server's error as the same exception an in-process ``Model`` raises."""
    message = str(body.get("message") or body.get("detail") or body)
    if status == 422:
        field = str(body.get("field", "request"))
        raise RequestError(field, message.removeprefix(f"{field}: "))
    if status == 503:
        raise Busy(message)
    if status == 429:
        raise TooManyRequests(message)
    if status == 499:
        raise Cancelled(message)
    raise RuntimeError(f"model server error {status}: {message}")


class RemoteModel:
    """The ``ModelLike`` interface backed by a model server at ``url``.

    Args:
        url: base URL of a server started with ``python app.py`` (e.g. http://host:7860).
        auth: (user, password) when that server was started with ``--auth``.
        timeout_s: connect/read timeout; generation streams progress, so reads stay short.
    """

    def __init__(self, url: str, auth: tuple[str, str] | None = None, timeout_s: float = 120.0):
        self.url = url.rstrip("/")
        self.client = httpx.Client(base_url=self.url, auth=auth, timeout=timeout_s)
        self.name = self.health().get("model", "remote")

    def health(self) -> dict:
        r = self.client.get("/health")
        r.raise_for_status()
        return r.json()

    def info(self) -> dict:
        r = self.client.get("/v1/info")
        if r.status_code != 200:
            _raise(r.status_code, r.json())
        return r.json()

    def _stream(self, route: str, body: dict, client: str | None = None) -> Iterator[dict]:
        """Yields the NDJSON lines of a streamed request; raises the server's errors.

        ``client`` goes in ``CLIENT_HEADER``: a model server started with
        ``--trusted-proxy-header X-Ediff-Client`` counts each UI visitor's share on its own.
        """
        headers = {CLIENT_HEADER: client} if client else None
        with self.client.stream("POST", route, json={**body, "stream": True}, headers=headers) as r:
            if r.status_code != 200:
                r.read()
                _raise(r.status_code, r.json())
            for line in r.iter_lines():
                if not line.strip():
                    continue
                event = json.loads(line)
                if event.get("event") == "error":
                    _raise(int(event.get("status", 500)), event)
                yield event

    @staticmethod
    def _body(req: GenerationRequest) -> dict[str, Any]:
        return {k: getattr(req, k) for k in API_FIELDS}

    def _run(self, route: str, body: dict, client: str | None = None) -> Iterator[Event]:
        for event in self._stream(route, body, client):
            if event["event"] == "progress":
                yield Progress(**{k: event[k] for k in _PROGRESS_FIELDS})
            elif event["event"] == "result":
                yield _result(event)

    def run(self, request: GenerationRequest, client: str | None = None, prepare: Prepare | None = None) -> Iterator[Event]:
        """Text to image (or style transfer when ``request.style_image`` is set); ``prepare``
        (reading an upload) runs here, before the request is sent."""
        if prepare is not None:
            request = prepare(request)
        body = self._body(request)
        if request.style_image is not None:
            body.update(style_image=_png_b64(request.style_image), style_strength=request.style_strength)
            return self._run("/v1/style_transfer", body, client)
        return self._run("/v1/generate", body, client)

    def paint_with_words(self, request: GenerationRequest, sketch: SketchSource, phrases: dict[str, str], client: str | None = None) -> Iterator[Event]:
        sketch = sketch() if callable(sketch) else sketch
        body = {**self._body(request), "sketch": _png_b64(sketch), "phrases": phrases, "pww_weight": request.pww_weight}
        return self._run("/v1/paint_with_words", body, client)

    def compare_encoders(self, request: GenerationRequest, modes: Sequence[str] = ("clip", "t5", "both"), client: str | None = None) -> Iterator[tuple[str, Event]]:
        body = {**self._body(request), "modes": list(modes)}
        for event in self._stream("/v1/compare_encoders", body, client):
            if event["event"] == "progress":
                yield event["label"], Progress(**{k: event[k] for k in _PROGRESS_FIELDS})
            elif event["event"] == "result":
                for mode, res in event["modes"].items():
                    yield mode, _result(res)

    def close(self) -> None:
        self.client.close()
