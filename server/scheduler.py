"""Step-level batching of denoiser evaluations across concurrent requests.

Each admitted request runs ``pipe.generate(req, evaluate=scheduler.evaluate)`` in its own worker
thread. ``evaluate`` does not call the denoiser: it enqueues ``(stage, D, x, σ, GuidedCond)`` and
blocks. One batching loop collects the pending evaluations (waiting a few ms for more), groups
them by stage and identical denoiser-wrapper settings, concatenates x, σ and the conditioning
(``GuidedCond.cat``), runs ONE denoiser call and splits the result back. The expert ensemble
routes every sample by its own σ (§4.1), so requests at different steps — or with different
guidance scales, which are per sample — share U-Net calls.

Admission is bounded: past ``max_queue`` waiting + running requests, ``submit`` raises ``Busy``
at once, and past its client's share (``fairness.Ledger``) ``TooManyRequests``. Work a request
needs before its first evaluation (decoding a sketch, rasterising its masks: ``prepare``) runs in
its worker once it holds a slot, so requests waiting for a slot cost no CPU. A cancelled ticket (client gone) stops at its next evaluation and frees its slot; an
error in one request never stops the loop or the other requests.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Callable, Iterator

import torch
from torch import Tensor

from ediff_core.core.attention import attention_hook, current_attention_hook
from ediff_core.core.conditioning import Denoiser
from ediff_core.core.experts import ExpertEnsemble
from ediff_core.core.guidance import CFGDenoiser, GuidedCond, ThresholdedDenoiser
from ediff_core.pipeline import EDiffPipeline, GenerationResult, Progress, Stage
from ediff_core.core.request import GenerationRequest

from .fairness import ClientLimits, Ledger, TooManyRequests

log = logging.getLogger(__name__)


class Busy(RuntimeError):
    """The server holds ``max_queue`` requests already; the client should retry later."""


class Cancelled(Exception):
    """The request was cancelled (its client went away) and stopped at an evaluation."""


@dataclass
class _Eval:
    """One pending denoiser evaluation of one request, waiting for the batching loop."""

    ticket: "Ticket"
    stage: Stage
    D: Denoiser
    x: Tensor  # (b, C, H, W)
    sigma: Tensor  # (b,)
    gc: GuidedCond
    key: tuple  # evaluations with equal keys may share one denoiser call
    hook: Callable | None = None  # the request's attention-recording hook: it runs alone
    done: threading.Event = field(default_factory=threading.Event)
    out: Tensor | None = None
    error: BaseException | None = None


class Ticket:
    """An admitted request: iterate it for ``Progress`` events and then the ``GenerationResult``.

    Iteration re-raises the request's error (``RequestError`` for bad input). Closing the iterator
    early, or ``cancel()``, stops the request at its next denoiser evaluation.
    """

    _ids = itertools.count(1)

    def __init__(self, request: GenerationRequest, client: str | None = None, cost: float = 0.0, prepare: Callable[[GenerationRequest], GenerationRequest] | None = None):
        self.id = next(Ticket._ids)
        self.request = request
        self.client, self.cost, self.prepare = client, cost, prepare
        self.released = False  # its share is back in its client's budget
        self.events: queue.Queue = queue.Queue()
        self.cancelled = threading.Event()
        self.finished = threading.Event()
        self.state = "waiting"  # waiting | running | done | failed | cancelled
        self.progress: Progress | None = None
        self.worker: threading.Thread | None = None

    def cancel(self) -> None:
        """Asks the worker to stop at its next evaluation (no-op once finished)."""
        if not self.finished.is_set():
            self.cancelled.set()

    def next_event(self, timeout: float | None = None) -> Progress | GenerationResult | None:
        """The next event, ``None`` on timeout; raises the request's error when it failed."""
        try:
            event = self.events.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(event, BaseException):
            raise event
        if isinstance(event, Progress):
            self.progress = event
        return event

    def __iter__(self) -> Iterator[Progress | GenerationResult]:
        try:
            while True:
                event = self.next_event()
                yield event
                if isinstance(event, GenerationResult):
                    return
        finally:
            self.cancel()


@dataclass
class SchedulerStats:
    """Counters for /health and for tests that check that batching happens."""

    admitted: int = 0
    completed: int = 0
    failed: int = 0
    cancelled: int = 0
    refused: int = 0  # the queue was full (503)
    throttled: int = 0  # the client's share was in flight (429)
    evaluations: int = 0  # per-request denoiser evaluations served
    calls: int = 0  # denoiser calls actually run (each may serve several evaluations)
    max_batch_samples: int = 0  # most samples (before CFG doubling) in one call
    max_batch_requests: int = 0  # most distinct requests in one call
    batch_requests: Counter = field(default_factory=Counter)  # requests per call -> number of calls

    def as_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in fields(self)}
        d["batch_requests"] = {str(k): v for k, v in sorted(self.batch_requests.items())}
        return d


def wrapper_key(D: Denoiser) -> tuple | None:
    """Identifies a denoiser wrapper chain by its settings; ``None`` if it is not one we know.

    Two evaluations can share a call only when their ``D`` compute the same function of
    (x, σ, cond): same ensemble, same CFG and thresholding settings.
    """
    if isinstance(D, ThresholdedDenoiser):
        inner = wrapper_key(D.inner)
        return None if inner is None else ("threshold", D.percentile, *inner)
    if isinstance(D, CFGDenoiser):
        inner = wrapper_key(D.inner)
        return None if inner is None else ("cfg", D.per_expert, *inner)
    if isinstance(D, ExpertEnsemble):
        return ("ensemble", id(D))
    return None


def _cond_signature(gc: GuidedCond) -> tuple:
    """Which optional fields are present and every tensor's per-sample shape and dtype."""
    sig = []
    for c in (gc.cond, gc.uncond):
        for f in fields(c):
            v = getattr(c, f.name)
            sig.append(None if v is None else (f.name, tuple(v.shape[1:]), v.dtype))
    return tuple(sig)


class Scheduler:
    """Serves ``EDiffPipeline.generate`` for many requests at once with shared denoiser calls.

    Args:
        pipe: the loaded pipeline; its networks are only ever called from the batching loop.
        max_queue: most requests admitted at once (waiting + running); beyond it ``Busy``.
        max_running: most requests generating at once (each holds a worker thread).
        batch_window_ms: how long the loop waits for more evaluations once one is pending,
            unless every running request is already waiting (then it runs at once).
        max_batch: most samples in one denoiser call (before CFG doubles them); bigger groups
            are split.
        limits: each client's share (requests and cost in flight); see ``fairness``.
    """

    def __init__(self, pipe: EDiffPipeline, max_queue: int = 32, max_running: int = 16, batch_window_ms: float = 5.0, max_batch: int = 64, limits: ClientLimits | None = None):
        self.pipe = pipe
        self.ledger = Ledger(limits or ClientLimits())
        self.max_queue, self.max_running = max_queue, max_running
        self.batch_window = batch_window_ms / 1000.0
        self.max_batch = max_batch
        self.stats = SchedulerStats()
        self._cv = threading.Condition()
        self._pending: list[_Eval] = []
        self._tickets: set[Ticket] = set()  # admitted, not finished
        self._generating = 0  # tickets inside pipe.generate
        self._slots = threading.Semaphore(max_running)
        self._local = threading.local()
        self._stop = False
        self._loop = threading.Thread(target=self._batch_loop, name="ediff-batcher", daemon=True)
        self._loop.start()

    # ------------------------------------------------------------ admission

    @property
    def depth(self) -> int:
        """Requests waiting or running."""
        with self._cv:
            return len(self._tickets)

    @property
    def running(self) -> int:
        with self._cv:
            return self._generating

    def submit(self, request: GenerationRequest) -> Ticket:
        """Admits a request and starts its worker, or raises ``Busy`` at the queue bound."""
        return self.submit_many([request])[0]

    def submit_many(self, requests: list[GenerationRequest], client: str | None = None, costs: list[float] | None = None, prepare: Callable[[GenerationRequest], GenerationRequest] | None = None) -> list[Ticket]:
        """Admits all the requests (they will share calls) or none.

        Raises ``Busy`` past the queue bound and ``TooManyRequests`` past ``client``'s share;
        ``costs`` are the requests' ``fairness.request_cost``; ``prepare`` runs in each worker
        once it holds a slot and returns the request to generate.
        """
        costs = costs or [0.0] * len(requests)
        tickets = [Ticket(r, client, c, prepare) for r, c in zip(requests, costs)]
        with self._cv:
            if self._stop:
                raise Busy("the server is shutting down")
            if len(self._tickets) + len(tickets) > self.max_queue:
                self.stats.refused += 1
                raise Busy(f"busy: {len(self._tickets)} requests queued or running (limit {self.max_queue}); retry later")
            try:
                self.ledger.admit(client, costs)
            except TooManyRequests:
                self.stats.throttled += 1
                raise
            self._tickets.update(tickets)
            self.stats.admitted += len(tickets)
        for ticket in tickets:
            ticket.worker = threading.Thread(target=self._work, args=(ticket,), name=f"ediff-request-{ticket.id}", daemon=True)
            ticket.worker.start()
        return tickets

    def _work(self, ticket: Ticket) -> None:
        """Worker thread: waits for a slot, runs the generation, posts events to the ticket."""
        outcome = "failed"
        acquired = False
        try:
            while not self._slots.acquire(timeout=0.05):
                if ticket.cancelled.is_set():
                    raise Cancelled(f"request {ticket.id} was cancelled while waiting")
            acquired = True
            ticket.state = "running"
            with self._cv:
                self._generating += 1
            self._local.ticket = ticket
            try:
                if ticket.prepare is not None:
                    ticket.request = ticket.prepare(ticket.request)
                for event in self.pipe.generate(ticket.request, evaluate=self.evaluate):
                    if isinstance(event, GenerationResult):
                        self._release(ticket)  # before the client sees its result and sends the next
                    ticket.events.put(event)
            finally:
                with self._cv:
                    self._generating -= 1
                    self._cv.notify_all()
            outcome = "completed"
        except Cancelled as e:
            outcome = "cancelled"
            self._release(ticket)
            ticket.events.put(e)
        except BaseException as e:  # the error goes to its own client only
            self._release(ticket)
            ticket.events.put(e)
        finally:
            if acquired:
                self._slots.release()
            ticket.state = {"completed": "done"}.get(outcome, outcome)
            self._release(ticket)
            ticket.finished.set()
            with self._cv:
                self._tickets.discard(ticket)
                setattr(self.stats, outcome, getattr(self.stats, outcome) + 1)

    def _release(self, ticket: Ticket) -> None:
        """Gives the ticket's share back to its client, once."""
        if not ticket.released:
            ticket.released = True
            self.ledger.release(ticket.client, ticket.cost)

    # ------------------------------------------------------------ the evaluate hook

    def evaluate(self, stage: Stage, D: Denoiser, x: Tensor, sigma: Tensor, gc: GuidedCond) -> Tensor:
        """The pipeline's evaluate hook: queue this evaluation for the batching loop and wait."""
        ticket: Ticket | None = getattr(self._local, "ticket", None)
        if ticket is None:  # called outside a worker: no batching
            return D(x, sigma, gc)
        if ticket.cancelled.is_set():
            raise Cancelled(f"request {ticket.id} was cancelled")
        # The attention-recording hook of this worker thread (``AttentionRecorder`` sets it around
        # ``evaluate``): it travels with the evaluation, which then runs alone (the recorder reads
        # the first rows of the batch as its own).
        hook = current_attention_hook()
        wk = wrapper_key(D)
        base = (id(stage), tuple(x.shape[1:]), x.dtype, x.device, _cond_signature(gc))
        key = (*base, *wk) if wk is not None and hook is None else ("solo", ticket.id, *base)
        item = _Eval(ticket, stage, D, x, sigma, gc, key, hook=hook)
        with self._cv:
            if self._stop:
                raise Cancelled("the server is shutting down")
            self._pending.append(item)
            self._cv.notify_all()
        item.done.wait()
        if item.error is not None:
            raise item.error
        if ticket.cancelled.is_set():
            raise Cancelled(f"request {ticket.id} was cancelled")
        return item.out

    # ------------------------------------------------------------ the batching loop

    def _take_batch(self) -> list[_Eval] | None:
        """Blocks until evaluations are pending, waits up to the window for more, takes them all."""
        with self._cv:
            while not self._pending and not self._stop:
                self._cv.wait()
            if self._stop:
                return None
            deadline = time.monotonic() + self.batch_window
            while len(self._pending) < self._generating and not self._stop:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cv.wait(left)
            batch, self._pending = self._pending, []
            return batch

    def _batch_loop(self) -> None:
        torch.set_grad_enabled(False)
        while True:
            batch = self._take_batch()
            if batch is None:
                return
            groups: dict[tuple, list[_Eval]] = {}
            for item in batch:
                groups.setdefault(item.key, []).append(item)
            for items in groups.values():
                for chunk in self._chunks(items):
                    self._run_group(chunk)

    def _chunks(self, items: list[_Eval]) -> Iterator[list[_Eval]]:
        chunk: list[_Eval] = []
        n = 0
        for item in items:
            b = item.x.shape[0]
            if chunk and n + b > self.max_batch:
                yield chunk
                chunk, n = [], 0
            chunk.append(item)
            n += b
        if chunk:
            yield chunk

    def _run_group(self, items: list[_Eval]) -> None:
        """One denoiser call for a group; if it fails, each item alone so only the culprit fails."""
        try:
            outs = self._call(items)
        except Exception as e:
            if len(items) > 1:
                for item in items:
                    self._run_group([item])
                return
            log.warning("denoiser evaluation failed for request %s: %s", items[0].ticket.id, e)
            outs, items[0].error = [None], e
        except BaseException as e:  # e.g. KeyboardInterrupt: fail the group, keep the loop alive
            outs = [None] * len(items)
            for item in items:
                item.error = e
        for item, out in zip(items, outs):
            item.out = out
            item.done.set()

    def _call(self, items: list[_Eval]) -> list[Tensor]:
        with torch.inference_mode():
            if len(items) == 1:
                it = items[0]
                if it.hook is not None:  # attention maps (Fig. 3): recorded in this thread, unbatched
                    with attention_hook(it.hook):
                        outs = [it.D(it.x, it.sigma, it.gc)]
                else:
                    outs = [it.D(it.x, it.sigma, it.gc)]
            else:
                x = torch.cat([it.x for it in items])
                sigma = torch.cat([it.sigma for it in items])
                gc = GuidedCond.cat([it.gc for it in items])
                outs = list(items[0].D(x, sigma, gc).split([it.x.shape[0] for it in items]))
        with self._cv:
            s = self.stats
            s.calls += 1
            s.evaluations += len(items)
            s.max_batch_samples = max(s.max_batch_samples, sum(it.x.shape[0] for it in items))
            n_req = len({it.ticket.id for it in items})
            s.max_batch_requests = max(s.max_batch_requests, n_req)
            s.batch_requests[n_req] += 1
        return outs

    def close(self, timeout_s: float = 10.0) -> None:
        """Stops the loop and waits for its threads; running requests end at their next evaluation."""
        with self._cv:
            self._stop = True
            pending, self._pending = self._pending, []
            tickets = list(self._tickets)
            for t in tickets:
                t.cancel()
            self._cv.notify_all()
        for item in pending:
            item.error = Cancelled("the server is shutting down")
            item.done.set()
        self._loop.join(timeout_s)
        for t in tickets:
            if t.worker is not None:
                t.worker.join(timeout_s)
