"""``python -m server.ray_serve``: the model server as a Ray Serve application with N replicas.

Two deployments (docs/serving.md, "Ray Serve"):

- ``ModelServer``: each replica loads the pipeline with its step-level batching scheduler
  (``server.model.Model``) and answers HTTP requests with the REST app of ``server.api``
  (``create_api``), run in-process through ``server.asgi_bridge``. Every response carries
  ``X-Replica``, the id of the replica that produced it.
- ``Ingress``: one light replica behind Ray Serve's HTTP proxy. It forwards every request to a
  ``ModelServer`` replica through a streaming ``DeploymentHandle`` (Ray spreads them by queue
  length), answers ``/health`` with the answering replica and the replica counts, and turns a
  replica that died under a request into HTTP 503 + ``Retry-After`` with a JSON body (or, once an
  NDJSON stream has started, a last ``{"event": "error", "status": 503, ...}`` line): the request
  is safe to retry, and Ray starts a replacement replica.

The protection of ``app.py`` holds here too (``server.protection``, the same flags): the ingress
sits behind ``guard.Guard`` (body cap 413, body deadline 408, failed-login throttle 429) and
counts each client's requests in flight over every replica (``--max-per-client``, 429); each
replica's scheduler keeps each client's work budget there (``--client-budget``).

``python app.py --server-url http://HOST:PORT`` runs the Gradio UI against the ingress.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from .asgi_bridge import HttpHead, HttpRequest, call_asgi
from .fairness import ClientLimits, Ledger, TooManyRequests, client_key
from .protection import add_protection_flags, check_protection_args, client_limits, guard, guard_settings

log = logging.getLogger("ediff.ray_serve")

ROOT = Path(__file__).resolve().parents[1]
APP_NAME = "ediff"
RETRY_AFTER_S = 5  # a replacement replica loads the model in about this long (tiny/mini, CPU)
COUNTS_TTL_S = 1.0  # /health asks the Serve controller for replica counts at most this often


def replica_error_body(e: BaseException) -> dict:
    """The JSON body of a request whose replica died or could not be reached (retryable)."""
    return {
        "error": "replica_unavailable",
        "retryable": True,
        "message": f"the model replica serving this request died or is unreachable ({type(e).__name__}); "
        f"Ray Serve is replacing it; retry in {RETRY_AFTER_S} s",
    }


def busy_body(e: BaseException) -> dict:
    return {"error": "busy", "retryable": True, "message": f"every replica's queue is full; retry later ({getattr(e, 'message', e)})"}


# ---------------------------------------------------------------- the deployments


class ModelServer:
    """One replica: the pipeline, its scheduler and the REST app of ``server.api``.

    Args:
        model: model folder or Hub id (``None``: the embedded ``checkpoints/ediff-mini``); every
            node must see the same folder at the same path.
        device, compile, max_queue, max_running, batch_window_ms: as ``app.py``'s flags.
        threads: torch CPU threads for this replica (its ``num_cpus``).
        auth: (user, password) for HTTP Basic auth on /v1 routes; ``None`` = open.
        trusted_header, max_per_client, client_budget: as the flags (``server.protection``); the
            budget holds per replica.
    """

    def __init__(self, model: str | None = None, device: str = "auto", compile: str = "none", max_queue: int = 32, max_running: int = 16,
                 batch_window_ms: float = 5.0, threads: int = 1, auth: tuple[str, str] | None = None, trusted_header: str | None = None,
                 max_per_client: int = 4, client_budget: float = 16.0):
        import ray
        import torch
        from ray import serve

        from .api import create_api
        from .model import Model

        torch.set_num_threads(max(1, threads))
        self.model = Model.load(model, device=device, compile=compile, max_queue=max_queue, max_running=max_running, batch_window_ms=batch_window_ms)
        self.model.scheduler.ledger.limits = client_limits(max_per_client, client_budget, self.model.default_cost())
        self.api = create_api(self.model, auth=auth, title="eDiff-I model server (Ray Serve replica)", trusted_header=trusted_header)
        replica_id = serve.get_replica_context().replica_id.unique_id
        self.replica = {"id": replica_id, "pid": os.getpid(), "node": ray.util.get_node_ip_address(), "device": str(self.model.pipe.device)}
        self._headers = [(b"x-replica", replica_id.encode())]
        log.info("replica %s (pid %d) loaded %s on %s", replica_id, os.getpid(), self.model.name, self.model.pipe.device)

    def health(self) -> dict:
        """``Model.health()`` plus which replica answered."""
        return {**self.model.health(), "replica": self.replica}

    async def http(self, req: HttpRequest) -> AsyncIterator[HttpHead | bytes]:
        """One HTTP request through the REST app: its head, then its body chunks (streamed)."""
        async for item in call_asgi(self.api, req, self._headers):
            yield item

    def __del__(self) -> None:
        model = getattr(self, "model", None)
        if model is not None:
            model.close()


class Ingress:
    """The HTTP entry point: forwards to ``ModelServer`` replicas, maps replica death to 503.

    Args:
        model_server: the replicas' ``DeploymentHandle``.
        guard: ``protection.guard_settings`` (the body cap and deadline, the login throttle); None = none.
        max_per_client: requests one client may have in flight over all replicas (POST /v1/...).
        trusted_header: behind a reverse proxy, the header naming the client (``fairness.client_key``).
    """

    def __init__(self, model_server: Any, deployment: str = "ModelServer", guard: dict | None = None, max_per_client: int = 4,
                 trusted_header: str | None = None):
        self.model_server = model_server  # a DeploymentHandle
        self.deployment = deployment
        self.guard, self.trusted_header = guard, trusted_header
        self.ledger = Ledger(ClientLimits(max_in_flight=max_per_client, budget=None))  # the count only: costs are the replicas'
        self._counts: tuple[float, dict] = (0.0, {})

    def __serve_build_asgi_app__(self):
        app = ingress_app(self)
        return app if self.guard is None else guard(app, self.guard)

    def admit(self, request: Request) -> str | None:
        """Books a generation request for its client (raises ``TooManyRequests``); its key, or None if not counted."""
        if request.method != "POST" or not request.url.path.startswith("/v1/"):
            return None
        key = client_key(request.client.host if request.client else None, request.headers, self.trusted_header)
        self.ledger.admit(key, [0.0])
        return key

    def release(self, key: str | None) -> None:
        if key is not None:
            self.ledger.release(key, 0.0)

    def replica_counts(self) -> dict:
        """{"running": n, "target": m, "states": {...}} of the model deployment (cached briefly)."""
        at, counts = self._counts
        if time.monotonic() - at < COUNTS_TTL_S:
            return counts
        from ray import serve

        try:
            dep = serve.status().applications[APP_NAME].deployments[self.deployment]
            states = {str(getattr(k, "value", k)): v for k, v in dep.replica_states.items()}
            counts = {"running": states.get("RUNNING", 0), "states": states, "deployment_status": str(getattr(dep.status, "value", dep.status))}
        except Exception as e:  # the controller is busy or restarting: say so, do not fail /health
            counts = {"running": None, "error": f"{type(e).__name__}: {e}"}
        self._counts = (time.monotonic(), counts)
        return counts


def _replica_errors() -> tuple[type[BaseException], ...]:
    from ray.exceptions import RayActorError
    from ray.serve.exceptions import DeploymentUnavailableError

    return (RayActorError, DeploymentUnavailableError)


class _ClosingResponse(StreamingResponse):
    """A streamed response that calls ``on_close`` once it is over, also when the client left
    before its body started (a generator's own ``finally`` never runs if it never started)."""

    def __init__(self, content: AsyncIterator[bytes], status_code: int, on_close: Callable[[], None]):
        super().__init__(content, status_code=status_code)
        self.on_close = on_close

    async def __call__(self, scope, receive, send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.on_close()


def ingress_app(ingress: Ingress):
    """The ingress's FastAPI app: ``/health`` here, every other path forwarded to a replica."""
    from ray.serve.exceptions import BackPressureError

    app = FastAPI(title="eDiff-I model server (Ray Serve ingress)", docs_url=None, redoc_url=None, openapi_url=None)
    dead = _replica_errors()

    def unavailable(e: BaseException) -> JSONResponse:
        log.warning("request failed on a replica: %s", e)
        if isinstance(e, BackPressureError):
            return JSONResponse(busy_body(e), status_code=503, headers={"Retry-After": "2"})
        return JSONResponse(replica_error_body(e), status_code=503, headers={"Retry-After": str(RETRY_AFTER_S)})

    @app.get("/health")
    async def health():
        """A replica's health (``replica`` says which one answered) and ``replicas``: how many are up."""
        try:
            body = await ingress.model_server.health.remote()
        except (*dead, BackPressureError) as e:
            return unavailable(e)
        body["replicas"] = await asyncio.to_thread(ingress.replica_counts)
        return body

    @app.api_route("/{path:path}", methods=["GET", "POST", "PUT", "PATCH", "DELETE", "HEAD", "OPTIONS"])
    async def forward(request: Request, path: str):
        try:
            key = ingress.admit(request)
        except TooManyRequests as e:  # the API's 429, before the body is read or a replica is asked
            return JSONResponse({"error": "too_many_requests", "message": str(e)}, status_code=429, headers={"Retry-After": str(e.retry_after)})
        stream = None
        try:
            client = (request.client.host, request.client.port) if request.client else None
            req = HttpRequest(request.method, request.url.path, request.url.query.encode(), list(request.headers.raw), await request.body(), client)
            stream = ingress.model_server.options(stream=True).http.remote(req)
            # the head, and the first chunk with it: until then a dead replica can still be a clean 503
            head: HttpHead = await stream.__anext__()
            first = await anext(stream, b"")
        except (*dead, BackPressureError) as e:
            if stream is not None:
                stream.cancel()
            ingress.release(key)
            return unavailable(e)
        except BaseException:
            if stream is not None:
                stream.cancel()
            ingress.release(key)
            raise
        ndjson = (head.header(b"content-type") or b"").startswith(b"application/x-ndjson")

        state = {"finished": False}

        async def body() -> AsyncIterator[bytes]:
            try:
                if first:
                    yield first
                async for chunk in stream:
                    yield chunk
                state["finished"] = True
            except dead as e:  # mid-stream: the status is sent; NDJSON gets the API's error line
                log.warning("replica died during a streamed response: %s", e)
                if ndjson:
                    yield (json.dumps({"event": "error", "status": 503, **replica_error_body(e)}) + "\n").encode()

        def closed() -> None:  # once the response is over, however it ended (even before its body started)
            ingress.release(key)
            if not state["finished"]:
                stream.cancel()  # the client left (or the replica died): cancel downstream

        response = _ClosingResponse(body(), status_code=head.status, on_close=closed)
        response.raw_headers = [(k, v) for k, v in head.headers if k.lower() != b"content-length"]
        return response

    return app


# ---------------------------------------------------------------- the command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m server.ray_serve", description="the eDiff-I model server as a Ray Serve application (N replicas behind one HTTP ingress)")
    p.add_argument("--replicas", type=int, default=1, help="model replicas (ignored with --autoscale)")
    p.add_argument("--autoscale", default=None, metavar="MIN:MAX", help="let Ray Serve scale between MIN and MAX replicas on queue length")
    p.add_argument("--num-gpus-per-replica", type=float, default=0.0, metavar="G", help="GPUs each replica reserves (0 = CPU; 0.5 = two replicas per GPU)")
    p.add_argument("--num-cpus-per-replica", type=float, default=1.0, metavar="C", help="CPUs each replica reserves (also its torch threads)")
    p.add_argument("--model", default=None, help="model folder or Hub id (default: checkpoints/ediff-mini); the same path on every node")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--compile", default="none", choices=["auto", "tensorrt", "torch", "none"])
    p.add_argument("--host", default="127.0.0.1", help="interface of the HTTP ingress (0.0.0.0 for all)")
    p.add_argument("--port", type=int, default=8000, help="port of the HTTP ingress (default 8000)")
    p.add_argument("--address", default=None, help="join this Ray cluster (e.g. auto, or HEAD_IP:6379) instead of starting a local one")
    p.add_argument("--num-cpus", type=float, default=None, help="CPUs of the local cluster (default: what the replicas reserve, plus one)")
    p.add_argument("--max-queue", type=int, default=int(os.environ.get("EDIFF_MAX_QUEUE", 32)), help="requests waiting + running per replica before 'busy'")
    p.add_argument("--max-running", type=int, default=16, help="requests generating at once per replica (they share U-Net calls)")
    p.add_argument("--batch-window-ms", type=float, default=5.0)
    p.add_argument("--auth", default=os.environ.get("EDIFF_AUTH") or None, metavar="USER:PASS", help="require this login for /v1 routes (default $EDIFF_AUTH)")
    add_protection_flags(p.add_argument_group("sharing and protection (as app.py's; defaults are meant for a public instance)"))
    args = p.parse_args(argv)
    check_protection_args(p, args)
    if args.replicas < 1:
        p.error(f"--replicas must be at least 1; got {args.replicas}")
    if args.autoscale is not None:
        try:
            lo, hi = (int(v) for v in args.autoscale.split(":"))
        except ValueError:
            p.error(f"--autoscale must be MIN:MAX (two integers); got {args.autoscale!r}")
        if not 0 <= lo <= hi or hi < 1:
            p.error(f"--autoscale MIN:MAX needs 0 <= MIN <= MAX and MAX >= 1; got {args.autoscale!r}")
        args.autoscale = (lo, hi)
    if args.num_gpus_per_replica < 0 or args.num_cpus_per_replica <= 0:
        p.error("--num-gpus-per-replica must be >= 0 and --num-cpus-per-replica > 0")
    if args.auth is not None and (":" not in args.auth or not args.auth.split(":", 1)[0]):
        p.error("--auth must be USER:PASS")
    return args


def build_application(args: argparse.Namespace):
    """The bound Serve application: ``Ingress`` in front of ``ModelServer`` replicas."""
    from ray import serve

    from server import ray_serve as this  # not __main__ under `python -m`: replicas import it by name

    scaling: dict[str, Any]
    if args.autoscale:
        lo, hi = args.autoscale
        scaling = {"autoscaling_config": {"min_replicas": lo, "initial_replicas": max(lo, 1), "max_replicas": hi, "target_ongoing_requests": max(1, args.max_running // 2)}}
    else:
        scaling = {"num_replicas": args.replicas}
    actor = {"num_cpus": args.num_cpus_per_replica, "num_gpus": args.num_gpus_per_replica, "runtime_env": {"env_vars": replica_env(args)}}
    model_server = serve.deployment(this.ModelServer, name="ModelServer").options(
        ray_actor_options=actor,
        max_ongoing_requests=args.max_queue,  # the scheduler's own bound; Ray queues beyond it
        max_queued_requests=8 * args.max_queue,  # then 503 busy
        health_check_period_s=2,
        graceful_shutdown_timeout_s=5,
        **scaling,
    )
    auth = None if args.auth is None else tuple(args.auth.split(":", 1))
    init = dict(model=args.model, device=args.device, compile=args.compile, max_queue=args.max_queue, max_running=args.max_running,
                batch_window_ms=args.batch_window_ms, threads=max(1, int(args.num_cpus_per_replica)), auth=auth,
                trusted_header=args.trusted_proxy_header, max_per_client=args.max_per_client, client_budget=args.client_budget)
    ingress = serve.deployment(serve.ingress()(this.Ingress), name="Ingress").options(
        num_replicas=1, max_ongoing_requests=1024, ray_actor_options={"num_cpus": 0, "runtime_env": {"env_vars": replica_env(args)}}
    )
    return ingress.bind(model_server.bind(**init), guard=guard_settings(args), max_per_client=args.max_per_client, trusted_header=args.trusted_proxy_header)


def replica_env(args: argparse.Namespace) -> dict[str, str]:
    """Environment of every replica: this checkout on the import path, its thread count, offline Hub."""
    env = {"PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p), "OMP_NUM_THREADS": str(max(1, int(args.num_cpus_per_replica)))}
    for name in ("HF_HUB_OFFLINE", "HF_HOME", "TRANSFORMERS_VERBOSITY"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def start(args: argparse.Namespace) -> None:
    """Starts (or joins) the Ray cluster, starts Serve's HTTP proxy and deploys; returns when ready."""
    import ray
    from ray import serve

    env = replica_env(args)
    if args.address:
        ray.init(address=args.address, runtime_env={"env_vars": env}, log_to_driver=False)
    else:
        n = args.autoscale[1] if args.autoscale else args.replicas
        num_cpus = args.num_cpus if args.num_cpus is not None else n * args.num_cpus_per_replica + 1
        ray.init(num_cpus=num_cpus, include_dashboard=False, runtime_env={"env_vars": env}, log_to_driver=False)
    serve.start(http_options={"host": args.host, "port": args.port})
    serve.run(build_application(args), name=APP_NAME, route_prefix="/", blocking=False)


def stop(args: argparse.Namespace) -> None:
    import ray
    from ray import serve

    try:
        if args.address:
            serve.delete(APP_NAME)  # leave the joined cluster (and others' apps) running
        else:
            serve.shutdown()
    finally:
        ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    if args.model is not None and not Path(args.model).exists() and os.environ.get("HF_HUB_OFFLINE") == "1":
        print(f"error: --model {args.model}: no such folder (and HF_HUB_OFFLINE=1)", file=sys.stderr)
        return 2
    done = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: done.set())
    try:
        start(args)
        print(f"eDiff-I on Ray Serve: http://{args.host}:{args.port}  (/health, /v1/...; Ctrl-C stops)", flush=True)
        done.wait()
    except Exception as e:  # a deployment that fails to start: its error, not a traceback
        print(f"error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    finally:
        stop(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
