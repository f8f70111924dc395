"""The protection flags of a public instance, shared by every front that serves the model
(``app.py`` and ``server.ray_serve``): the body cap and deadline and the failed-login throttle
(``guard.Guard``), and each client's share of the model (``fairness.ClientLimits``)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from .fairness import ClientLimits
from .guard import Guard, LoginThrottle


def file_size(text: str) -> int:
    """'8mb', '500kb', '1048576' -> bytes (1 kb = 1024); at most ``ediff_core.core.images.MAX_UPLOAD_BYTES``."""
    from ediff_core.core.images import MAX_UPLOAD_BYTES

    t = str(text).strip().lower().replace(" ", "")
    units = {"gb": 2**30, "mb": 2**20, "kb": 2**10, "b": 1}
    unit = next((u for u in units if t.endswith(u)), "")
    try:
        n = int(float(t[: len(t) - len(unit)]) * units.get(unit, 1))
    except ValueError:
        raise ValueError(f"{text!r} is not a size such as 8mb or 500kb") from None
    if not 0 < n <= MAX_UPLOAD_BYTES:
        raise ValueError(f"must be from 1 byte to {MAX_UPLOAD_BYTES // 2**20}mb; got {text!r}")
    return n


def body_cap(max_file_bytes: int) -> int:
    """The request body cap: a base64-encoded upload of the largest size plus the JSON around it."""
    return (max_file_bytes * 4) // 3 + 64 * 1024


def add_protection_flags(g: argparse._ActionsContainer) -> None:
    """The flags every front shares (issue #24; the defaults are meant for a public instance)."""
    g.add_argument("--max-file-size", default="8mb", help="largest upload (UI files and base64 images; at most 8mb); the request body cap (HTTP 413) follows from it")
    g.add_argument("--max-per-client", type=int, default=int(os.environ.get("EDIFF_MAX_PER_CLIENT", 4)), help="requests one client may have in flight (HTTP 429 beyond; default $EDIFF_MAX_PER_CLIENT or 4)")
    g.add_argument("--client-budget", type=float, default=16.0, help="work one client may have in flight, in default requests (NFE x images x pixels of the model's default request; default 16); a client with nothing in flight is always admitted one request")
    # On a Hugging Face Space (SPACE_ID is set) every visitor comes through the Space's proxy.
    proxy = os.environ.get("EDIFF_TRUSTED_PROXY_HEADER") or ("X-Forwarded-For" if os.environ.get("SPACE_ID") else None)
    g.add_argument("--trusted-proxy-header", default=proxy, metavar="NAME", help="behind a reverse proxy only: the header whose last address is the client's (e.g. X-Forwarded-For; X-Ediff-Client for a --server-url UI front; default $EDIFF_TRUSTED_PROXY_HEADER, or X-Forwarded-For on a Hugging Face Space)")
    g.add_argument("--body-timeout", type=float, default=30.0, help="seconds a request body may take to arrive (HTTP 408)")
    g.add_argument("--login-attempts", type=int, default=5, help="failed logins per client per minute before HTTP 429 (0 = no throttling)")


def check_protection_args(p: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Refuses bad values by flag name; sets ``args.max_file_bytes``."""
    try:
        args.max_file_bytes = file_size(args.max_file_size)
    except ValueError as e:
        p.error(f"--max-file-size: {e}")
    if args.max_per_client < 1:
        p.error("--max-per-client must be at least 1")
    for name in ("client_budget", "body_timeout"):
        if not getattr(args, name) > 0:
            p.error(f"--{name.replace('_', '-')} must be above 0")
    if args.login_attempts < 0:
        p.error("--login-attempts must be 0 (no throttling) or more")


def guard_settings(args: argparse.Namespace) -> dict[str, Any]:
    """``Guard``'s settings from the flags, as plain values (they travel to a Ray actor)."""
    return {"max_body": body_cap(args.max_file_bytes), "body_timeout_s": args.body_timeout, "login_attempts": args.login_attempts,
            "trusted_header": args.trusted_proxy_header}


def guard(app: Any, settings: dict[str, Any]) -> Guard:
    """``app`` behind ``Guard`` with ``guard_settings``: the body cap and deadline, failed-login throttling."""
    s = dict(settings)
    attempts = s.pop("login_attempts")
    return Guard(app, throttle=LoginThrottle(max_failures=attempts) if attempts > 0 else None, **s)


def client_limits(max_per_client: int, client_budget: float, default_cost: float) -> ClientLimits:
    """Each client's share: ``max_per_client`` requests and ``client_budget`` default requests' work in flight."""
    return ClientLimits(max_in_flight=max_per_client, budget=client_budget * default_cost)
