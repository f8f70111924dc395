"""Fair sharing of one model between clients: every request has a cost, every client a budget.

A request's cost is the work it asks for: denoiser evaluations × images × pixels, summed over the
cascade's stages (CFG doubles the samples of a guided stage). Each client (the authenticated user,
else the address; behind a proxy, the first hop of a header the operator trusts) may have at most
``max_in_flight`` requests admitted and at most ``budget`` cost in flight. One request is always
admitted when its client has nothing in flight (a single request is already bounded by the
request limits), so a heavy client gets one long request at a time while everyone else keeps
their share of the batched denoiser calls. A refusal is ``TooManyRequests`` (HTTP 429 with
``Retry-After``), raised at once, before any work.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Mapping

if TYPE_CHECKING:
    from ediff_core.pipeline import EDiffPipeline
    from ediff_core.core.request import GenerationRequest

ANONYMOUS = "anonymous"


def client_key(host: str | None, headers: Mapping[str, str] | None = None, trusted_header: str | None = None) -> str:
    """Who a request comes from: ``ip:ADDRESS`` (``--auth`` is one login shared by everyone let
    in, so it names no individual).

    Behind a reverse proxy every request comes from the proxy's address; name the header it sets
    (``--trusted-proxy-header X-Forwarded-For``) and the last address in it, the one the proxy
    appended, is used. Never trust such a header without a proxy: clients can write it.
    """
    if trusted_header and headers is not None:
        value = headers.get(trusted_header) or headers.get(trusted_header.lower())
        if value:
            last = value.split(",")[-1].strip()
            return last if last.startswith(("user:", "ip:")) else f"ip:{last}"  # a UI front's key as is
    return f"ip:{host or ANONYMOUS}"


class TooManyRequests(RuntimeError):
    """This client has its share in flight already; ``retry_after`` seconds is a fair wait."""

    def __init__(self, message: str, retry_after: int = 2):
        super().__init__(message)
        self.retry_after = retry_after


def request_cost(pipe: "EDiffPipeline", req: "GenerationRequest") -> float:
    """Megapixel-evaluations a resolved request asks for: Σ_stages NFE × samples × H × W / 10⁶."""
    from ediff_core.core.samplers import nfe

    total = 0.0
    for k, stage in enumerate(pipe.stages):
        steps, guidance = (req.steps, req.guidance) if k == 0 else (req.sr_steps, req.sr_guidance)
        samples = req.num_images * (2 if guidance != 1.0 else 1)
        total += nfe(req.sampler, steps) * samples * stage.resolution**2
    return total / 1e6


@dataclass
class ClientLimits:
    """Per-client admission limits; ``budget`` is in ``request_cost`` units (None = no cost cap)."""

    max_in_flight: int = 4
    budget: float | None = None


@dataclass
class _Account:
    requests: int = 0
    cost: float = 0.0


@dataclass
class Ledger:
    """What each client has in flight; ``admit`` and ``release`` are called by the scheduler."""

    limits: ClientLimits = field(default_factory=ClientLimits)
    _accounts: dict[str, _Account] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def admit(self, client: str | None, costs: list[float]) -> None:
        """Books ``costs`` (one per request, admitted together) for ``client`` or raises ``TooManyRequests``."""
        key = client or ANONYMOUS
        lim = self.limits
        with self._lock:
            acc = self._accounts.get(key, _Account())
            n, cost = acc.requests + len(costs), acc.cost + sum(costs)
            if acc.requests and n > lim.max_in_flight:
                raise TooManyRequests(f"too many requests: this client has {acc.requests} in flight (limit {lim.max_in_flight}); retry when one has finished")
            if acc.requests and lim.budget is not None and cost > lim.budget:
                raise TooManyRequests(f"too much work: this client has {acc.cost:.3g} in flight and asks {sum(costs):.3g} more (budget {lim.budget:.3g} megapixel-evaluations); retry when a request has finished")
            acc.requests, acc.cost = n, cost
            self._accounts[key] = acc

    def release(self, client: str | None, cost: float) -> None:
        key = client or ANONYMOUS
        with self._lock:
            acc = self._accounts.get(key)
            if acc is None:
                return
            acc.requests -= 1
            acc.cost = max(0.0, acc.cost - cost)
            if acc.requests <= 0:
                del self._accounts[key]

    def in_flight(self, client: str | None) -> tuple[int, float]:
        with self._lock:
            acc = self._accounts.get(client or ANONYMOUS, _Account())
            return acc.requests, acc.cost

    def clients(self) -> int:
        with self._lock:
            return len(self._accounts)
