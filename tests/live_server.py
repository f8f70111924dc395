"""Helpers for tests and benchmarks that need a real server: ``python app.py`` as a subprocess,
or a FastAPI app under uvicorn in a thread, each on a free loopback port, ready once /health
answers. ``shared_app`` starts one app per argument list per Python process and stops it at exit.
"""

from __future__ import annotations

import atexit
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, timeout_s: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> dict:
    """Polls ``url``/health until it answers 200; raises with the log tail if the process died."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log else ""
            raise RuntimeError(f"app exited with {proc.returncode} before /health answered:\n{tail}")
        try:
            r = httpx.get(f"{url}/health", timeout=2)
            if r.status_code == 200:
                return r.json()
        except httpx.HTTPError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url}/health did not answer within {timeout_s} s")


@dataclass
class AppProcess:
    """A running ``python app.py``; ``stop()`` ends it (by its own pid)."""

    url: str
    proc: subprocess.Popen
    log: Path

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


def start_app(args: list[str], timeout_s: float = 180.0) -> AppProcess:
    """Starts ``python app.py ARGS --port <free>`` and waits until /health answers."""
    port = free_port()
    log = Path(tempfile.mkstemp(prefix="ediff-app-", suffix=".log")[1])
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}
    for name in ("PORT", "GRADIO_SERVER_NAME", "GRADIO_SERVER_PORT", "EDIFF_AUTH", "EDIFF_MCP", "EDIFF_MAX_QUEUE", "EDIFF_MAX_PER_CLIENT", "EDIFF_TRUSTED_PROXY_HEADER", "SPACE_ID"):
        env.pop(name, None)
    with open(log, "w") as fh:
        proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), *args, "--port", str(port)], cwd=ROOT, stdout=fh, stderr=subprocess.STDOUT, env=env)
    app = AppProcess(f"http://127.0.0.1:{port}", proc, log)
    try:
        wait_healthy(app.url, timeout_s, proc, log)
    except BaseException:
        app.stop()
        raise
    return app


_shared: dict[tuple[str, ...], AppProcess] = {}
_lock = threading.Lock()


def shared_app(*args: str) -> AppProcess:
    """One app per argument list for this Python process (e.g. a whole pytest session)."""
    with _lock:
        app = _shared.get(args)
        if app is None or app.proc.poll() is not None:
            app = _shared[args] = start_app(list(args))
            atexit.register(app.stop)
        return app


class ThreadServer:
    """A FastAPI/ASGI app under uvicorn in a daemon thread on a free port (real HTTP)."""

    def __init__(self, app, timeout_s: float = 60.0):
        import uvicorn

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        wait_healthy(self.url, timeout_s)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
