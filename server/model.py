"""The one object that owns the weights: ``Model`` holds the ``EDiffPipeline`` and its scheduler.

The REST API and the Gradio UI both call ``Model.run`` (or ``run_many``); neither ever touches
the networks, so one process serves every UI session and API client from one copy of the model.
``demo.client.RemoteModel`` has the same methods over HTTP for a UI whose model runs elsewhere.
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterator, Protocol, Sequence

from PIL import Image

from ediff_core.tools import accel
from ediff_core.core.conditioning import ENCODER_MODES
from ediff_core.pipeline import EDiffPipeline, GenerationResult, Progress
from ediff_core.core.request import GenerationRequest, RequestError, pick_device

from .fairness import ClientLimits, TooManyRequests, request_cost
from .scheduler import Busy, Cancelled, Scheduler, Ticket

log = logging.getLogger(__name__)

Event = Progress | GenerationResult
Prepare = Callable[[GenerationRequest], GenerationRequest]
SketchSource = Image.Image | Callable[[], Image.Image]


class ModelLike(Protocol):
    """What the UI needs from a model: ``Model`` in-process or ``RemoteModel`` over HTTP."""

    name: str

    def run(self, request: GenerationRequest, client: str | None = None, prepare: Prepare | None = None) -> Iterator[Event]: ...

    def compare_encoders(self, request: GenerationRequest, modes: Sequence[str] = ENCODER_MODES, client: str | None = None) -> Iterator[tuple[str, Event]]: ...

    def paint_with_words(self, request: GenerationRequest, sketch: SketchSource, phrases: dict[str, str], client: str | None = None) -> Iterator[Event]: ...

    def info(self) -> dict: ...

    def health(self) -> dict: ...


def apply_compile(pipe: EDiffPipeline, mode: str) -> tuple[str, int | None]:
    """Accelerates the U-Nets with ``ediff_core.tools.accel``.

    Returns what runs (``str`` of its report: "tensorrt", "torch.compile" or "eager") and the
    largest U-Net batch the backend serves fast (TensorRT engines have one; None = any).
    """
    if mode == "none":
        return "eager", None
    report = accel.compile_pipeline(pipe, mode)
    log.info("compile %s: %s", mode, report.reason)
    backend = str(report)
    return backend, accel.MAX_BATCH if backend == "tensorrt" else None


class Model:
    """The loaded pipeline plus the step-level batching scheduler in front of it.

    Args:
        pipe: a loaded ``EDiffPipeline``.
        max_queue: requests admitted at once (waiting + running); more get ``Busy`` (HTTP 503).
        max_running: requests generating at once.
        batch_window_ms: how long the batching loop waits for more evaluations.
        limits: each client's share (``fairness.ClientLimits``); ``None``: no per-client limit.
    """

    def __init__(self, pipe: EDiffPipeline, max_queue: int = 32, max_running: int = 16, batch_window_ms: float = 5.0, limits: ClientLimits | None = None):
        self.pipe = pipe
        self.name = pipe.name
        limits = limits or ClientLimits(max_in_flight=max_queue)
        self.scheduler = Scheduler(pipe, max_queue=max_queue, max_running=max_running, batch_window_ms=batch_window_ms, limits=limits)
        self.backend = "eager"
        self.started = time.time()

    @classmethod
    def load(cls, path: str | Path | None = None, device: str = "auto", compile: str = "none", **kwargs) -> "Model":
        """Loads a model folder (``None``: the embedded default ``checkpoints/ediff-mini``)."""
        pipe = EDiffPipeline.from_pretrained(path, device=pick_device(device))
        model = cls(pipe, **kwargs)
        model.backend, unet_batch = apply_compile(pipe, compile)
        if unet_batch:  # CFG doubles each sample: keep batched calls inside the engines' range
            model.scheduler.max_batch = min(model.scheduler.max_batch, max(1, unet_batch // 2))
        return model

    # ------------------------------------------------------------ generation

    def check(self, request: GenerationRequest) -> GenerationRequest:
        """Validates a request (``RequestError`` naming the field) before it takes a slot."""
        return self.pipe.resolve(request)

    def default_cost(self) -> float:
        """``fairness.request_cost`` of the model's default one-image request (the unit of budgets)."""
        return request_cost(self.pipe, self.check(GenerationRequest(prompt="x")))

    def submit(self, request: GenerationRequest, client: str | None = None, prepare: Prepare | None = None) -> Ticket:
        """Validates and admits a request; raises ``RequestError``, ``Busy`` or ``TooManyRequests``."""
        return self.submit_many([request], client, prepare)[0]

    def submit_many(self, requests: Sequence[GenerationRequest], client: str | None = None, prepare: Prepare | None = None) -> list[Ticket]:
        """Validates all, then admits all or none; admitted together, they share calls.

        ``client`` is whose share they count against (``fairness``); ``prepare`` runs in each
        request's worker once it holds a slot (decoding uploads, rasterising masks).
        """
        costs = [request_cost(self.pipe, self.check(r)) for r in requests]
        return self.scheduler.submit_many(list(requests), client=client, costs=costs, prepare=prepare)

    def run(self, request: GenerationRequest, client: str | None = None, prepare: Prepare | None = None) -> Iterator[Event]:
        """Yields ``Progress`` after every denoiser evaluation, then the ``GenerationResult``.

        Closing the iterator early (a client went away) cancels the request.
        """
        ticket = self.submit(request, client, prepare)
        yield from ticket  # Ticket.__iter__ cancels on close

    def __call__(self, request: GenerationRequest) -> GenerationResult:
        """Runs a request to the end."""
        result = None
        for event in self.run(request):
            result = event
        assert isinstance(result, GenerationResult)
        return result

    def run_many(self, requests: Sequence[GenerationRequest], client: str | None = None) -> Iterator[tuple[int, Event]]:
        """Runs several requests at once (they share denoiser calls); yields (index, event).

        All are admitted before any runs, so either all start or ``Busy`` is raised.
        """
        tickets = self.submit_many(requests, client)
        try:
            yield from merge_tickets(tickets)
        finally:
            for t in tickets:
                t.cancel()

    def compare_encoders(self, request: GenerationRequest, modes: Sequence[str] = ENCODER_MODES, client: str | None = None) -> Iterator[tuple[str, Event]]:
        """The §5.2 ablation: the same request and seed with each encoder mode, run together."""
        modes = list(modes)
        for m in modes:
            if m not in ENCODER_MODES:
                raise RequestError("encoders", f"must be one of {', '.join(ENCODER_MODES)}; got {m!r}")
        for k, event in self.run_many([replace(request, encoders=m) for m in modes], client):
            yield modes[k], event

    def paint_prepare(self, request: GenerationRequest, sketch: SketchSource, phrases: dict[str, str]) -> Prepare:
        """Checks what costs nothing now (the phrase caps, every phrase in the prompt, §4.3) and
        returns the step that decodes, downscales and rasterises the sketch in the request's slot."""
        from ediff_core.features.paint_with_words import phrase_positions

        from .painting import check_phrase_tokens, paint_spec, phrase_words

        self.check(request)
        for phrase in phrase_words(phrases):
            check_phrase_tokens(phrase, phrase_positions(self.pipe, request.prompt, phrase))

        def prepare(req: GenerationRequest) -> GenerationRequest:
            return replace(req, paint=paint_spec(sketch() if callable(sketch) else sketch, phrases))

        return prepare

    def paint_with_words(self, request: GenerationRequest, sketch: SketchSource, phrases: dict[str, str], client: str | None = None) -> Iterator[Event]:
        """Paint with words: ``phrases`` maps sketch colours ``#rrggbb`` to prompt phrases
        (optionally ``phrase@strength``); ``sketch`` may be a callable that reads the upload."""
        yield from self.run(request, client, self.paint_prepare(request, sketch, phrases))

    # ------------------------------------------------------------ description

    def info(self) -> dict:
        return {**self.pipe.info(), "backend": self.backend}

    def health(self) -> dict:
        s = self.scheduler
        return {
            "status": "ok",
            "model": self.name,
            "device": str(self.pipe.device),
            "backend": self.backend,
            "queue_depth": s.depth,
            "running": s.running,
            "max_queue": s.max_queue,
            "clients": s.ledger.clients(),
            "max_per_client": s.ledger.limits.max_in_flight,
            "uptime_s": round(time.time() - self.started, 1),
            "scheduler": s.stats.as_dict(),
        }

    def close(self) -> None:
        self.scheduler.close()


def merge_tickets(tickets: list[Ticket], poll_s: float = 0.02) -> Iterator[tuple[int, Event]]:
    """Interleaves the events of several tickets until each has given its result."""
    left = set(range(len(tickets)))
    while left:
        got = False
        for k in sorted(left):
            event = tickets[k].next_event(timeout=0)
            while event is not None:
                got = True
                yield k, event
                if isinstance(event, GenerationResult):
                    left.discard(k)
                    break
                event = tickets[k].next_event(timeout=0)
        if not got and left:
            tickets[min(left)].finished.wait(poll_s)


__all__ = ["Model", "ModelLike", "Busy", "Cancelled", "TooManyRequests", "Event", "pick_device", "apply_compile", "merge_tickets"]
