"""``python app.py``: the model server and the web demo on one port (http://127.0.0.1:7860).

This file only wires: ``server.Model`` owns the weights, ``server.api`` is the REST API
(/health, /v1/..., /openapi.json), ``demo.ui`` is the Gradio UI mounted on the same FastAPI app.
With ``--server-url`` no model is loaded here: the UI talks to that server over HTTP.
"""

from __future__ import annotations

import argparse
import atexit
import logging
import os
import shutil
import sys
import tempfile

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

log = logging.getLogger("ediff.app")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from server.protection import add_protection_flags, check_protection_args

    p = argparse.ArgumentParser(description="eDiff-I model server + web demo")
    # Hugging Face Spaces sets GRADIO_SERVER_NAME=0.0.0.0 and GRADIO_SERVER_PORT; Deta Space sets PORT.
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"), help="interface to listen on (0.0.0.0 for all; default $GRADIO_SERVER_NAME or 127.0.0.1)")
    p.add_argument("--port", type=int, default=int(os.environ.get("PORT") or os.environ.get("GRADIO_SERVER_PORT") or 7860), help="port (default $PORT, $GRADIO_SERVER_PORT or 7860)")
    p.add_argument("--model", default=None, help="model folder or Hub id (default: checkpoints/ediff-mini)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument("--compile", default="none", choices=["auto", "tensorrt", "torch", "none"], help="accelerate the U-Nets (ediff_core.tools.accel)")
    p.add_argument("--auth", default=os.environ.get("EDIFF_AUTH") or None, metavar="USER:PASS", help="require this login for the UI and /v1 routes (default $EDIFF_AUTH)")
    p.add_argument("--server-url", default=None, metavar="URL", help="run only the UI, against the model server at URL")
    p.add_argument("--server-auth", default=None, metavar="USER:PASS", help="login for --server-url's /v1 routes")
    p.add_argument("--max-queue", type=int, default=int(os.environ.get("EDIFF_MAX_QUEUE", 32)), help="requests waiting + running before 'busy' (HTTP 503; default $EDIFF_MAX_QUEUE or 32)")
    p.add_argument("--max-running", type=int, default=16, help="requests generating at once (they share U-Net calls)")
    p.add_argument("--batch-window-ms", type=float, default=5.0, help="how long the batcher waits for more evaluations")
    p.add_argument("--mcp", action="store_true", default=os.environ.get("EDIFF_MCP") == "1", help="also serve the four generation endpoints as MCP tools at /gradio_api/mcp/ (needs requirements-serve.txt; default $EDIFF_MCP=1)")
    p.add_argument("--outputs", default=None, help="folder for generated PNGs (default: a new temporary folder)")
    g = p.add_argument_group("sharing and protection (issue #24; defaults are meant for a public instance)")
    add_protection_flags(g)
    g.add_argument("--header-timeout", type=float, default=10.0, help="seconds a connection may take to send its request headers (slow clients are closed)")
    g.add_argument("--idle-timeout", type=int, default=5, help="seconds an idle keep-alive connection stays open")
    g.add_argument("--max-connections", type=int, default=512, help="concurrent connections before HTTP 503")
    args = p.parse_args(argv)
    check_protection_args(p, args)
    if args.max_connections < 1:
        p.error("--max-connections must be at least 1")
    if not args.header_timeout > 0:
        p.error("--header-timeout must be above 0")
    for name in ("auth", "server_auth"):
        v = getattr(args, name)
        if v is not None and (":" not in v or not v.split(":", 1)[0]):
            p.error(f"--{name.replace('_', '-')} must be USER:PASS")
    if args.mcp and args.auth:
        # Gradio's MCP route is not behind the login: it would list the tools to anyone, and its
        # callback to the app (without the login) fails every tool call.
        p.error("--mcp cannot be combined with --auth (or $EDIFF_MCP=1 with $EDIFF_AUTH): Gradio's MCP server is not behind the login; use one of them, or put an authenticating proxy in front of an --mcp instance")
    return args


def _pair(v: str | None) -> tuple[str, str] | None:
    return None if v is None else tuple(v.split(":", 1))  # type: ignore[return-value]


def private_gradio_temp_dir() -> str:
    """This instance's own Gradio upload/cache folder (issue #24.4), removed at exit.

    Gradio's default, <tmp>/gradio, is shared by every instance on the machine, so one instance
    could serve a file another one received. $GRADIO_TEMP_DIR, if set, is kept as the user's choice.
    """
    if os.environ.get("GRADIO_TEMP_DIR"):
        return os.environ["GRADIO_TEMP_DIR"]
    folder = tempfile.mkdtemp(prefix="ediff-gradio-")
    os.environ["GRADIO_TEMP_DIR"] = folder
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def build_app(args: argparse.Namespace):
    """The FastAPI app with the REST API (unless --server-url) and the Gradio UI mounted at /."""
    private_gradio_temp_dir()  # before Gradio reads it
    import gradio as gr
    from fastapi import FastAPI

    from demo.runner import Outputs
    from demo.theme import page_options
    from demo.ui import create_demo

    auth = _pair(args.auth)
    if args.server_url:
        from demo.client import RemoteModel

        model = RemoteModel(args.server_url, auth=_pair(args.server_auth))
        app = FastAPI(title="eDiff-I demo (UI only)")

        @app.get("/health")
        def health() -> dict:
            """This UI's status and the model server's."""
            return {"status": "ok", "ui_only": True, "server_url": args.server_url, "server": model.health()}

    else:
        from server.api import create_api
        from server.model import Model

        from server.protection import client_limits

        model = Model.load(args.model, device=args.device, compile=args.compile, max_queue=args.max_queue, max_running=args.max_running, batch_window_ms=args.batch_window_ms)
        model.scheduler.ledger.limits = client_limits(args.max_per_client, args.client_budget, model.default_cost())
        log.info("loaded %s on %s (%s)", model.name, model.pipe.device, model.backend)
        app = create_api(model, auth=auth, trusted_header=args.trusted_proxy_header)
    outputs = Outputs(args.outputs)
    atexit.register(outputs.cleanup)
    demo = create_demo(model, outputs, trusted_header=args.trusted_proxy_header)
    if args.mcp:  # before mounting: Gradio builds the MCP server's tool list there
        from demo.mcp_tools import describe_tools

        describe_tools(demo)
    app = gr.mount_gradio_app(app, demo, path="/", auth=auth, mcp_server=bool(args.mcp), max_file_size=args.max_file_bytes, allowed_paths=[str(outputs.root)], footer_links=["api"], **page_options())
    # Gradio applies its own check on incoming FileData paths (only files in its upload folder are
    # accepted for a request) only once the Blocks "has launched"; mounting never sets that flag, so
    # without this line any server path (/dev/zero, /etc/passwd) was accepted as an uploaded image.
    demo.has_launched = True
    if args.mcp:
        from demo.mcp_tools import install_output_flattening

        install_output_flattening(demo)
    app.state.model = model
    return app


def guarded(app, args: argparse.Namespace):
    """``app`` behind ``server.guard.Guard``: the body cap and deadline, failed-login throttling."""
    from server.protection import guard, guard_settings

    return guard(app, guard_settings(args))


def main(argv: list[str] | None = None) -> int:
    from ediff_core.tools.accel import tune_cpu_allocator
    tune_cpu_allocator()  # process-wide (glibc heap thresholds, docs/performance.md): set by the entry point
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    args = parse_args(argv)
    import uvicorn

    from ediff_core.core.request import RequestError

    from server.guard import header_timeout_protocol

    try:
        app = build_app(args)
    except (RequestError, FileNotFoundError, NotADirectoryError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"eDiff-I demo on http://{args.host}:{args.port}  (API: /v1, /health, /openapi.json)", flush=True)
    uvicorn.run(guarded(app, args), host=args.host, port=args.port, log_level="warning", timeout_graceful_shutdown=2, http=header_timeout_protocol(args.header_timeout),
                timeout_keep_alive=args.idle_timeout, limit_concurrency=args.max_connections)
    return 0


if __name__ == "__main__":
    sys.exit(main())
