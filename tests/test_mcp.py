"""``python app.py --mcp``: the four generation endpoints as MCP tools, through the ``mcp`` client
package over real streamable HTTP (and SSE) on loopback, against the tiny random model."""

from __future__ import annotations

import asyncio
import base64

import pytest

pytest.importorskip("mcp")

from mcp import ClientSession  # noqa: E402
from mcp.client.sse import sse_client  # noqa: E402
from mcp.client.streamable_http import streamable_http_client  # noqa: E402

from live_server import shared_app  # noqa: E402

pytestmark = pytest.mark.serve

TOOLS = {"generate", "compare_encoders", "style_transfer", "paint_with_words"}


@pytest.fixture(scope="module")
def mcp_url(tiny_model):
    return shared_app("--model", str(tiny_model), "--mcp").url + "/gradio_api/mcp/"


async def _session(url: str, fn):
    async with streamable_http_client(url) as (read, write, _):
        async with ClientSession(read, write) as session:
            await session.initialize()
            return await fn(session)


def test_the_four_tools_are_listed_with_parameter_descriptions(mcp_url):
    tools = asyncio.run(_session(mcp_url, lambda s: s.list_tools())).tools
    by_name = {t.name: t for t in tools}
    assert TOOLS <= set(by_name), sorted(by_name)
    gen = by_name["generate"]
    assert "Text to image" in gen.description
    props = gen.inputSchema["properties"]
    assert {"prompt", "seed", "steps", "guidance", "sampler", "encoders"} <= set(props)
    assert "seed" in props["seed"]["description"] and "1 to 200" in props["steps"]["description"]
    assert "colour" in by_name["paint_with_words"].inputSchema["properties"]["phrases"]["description"]
    assert "reference" in by_name["style_transfer"].inputSchema["properties"]["style_image"]["description"]


def test_a_generate_call_returns_an_image(mcp_url):
    async def call(session):
        return await session.call_tool("generate", {"prompt": "a red circle", "seed": 1, "steps": 3})

    result = asyncio.run(_session(mcp_url, call))
    assert not result.isError, result.content
    images = [c for c in result.content if c.type == "image"]
    assert images and base64.b64decode(images[0].data).startswith(b"\x89PNG"), [c.type for c in result.content]


def test_the_sse_transport_lists_the_tools_too(mcp_url):
    async def listed():
        async with sse_client(mcp_url + "sse") as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                return await session.list_tools()

    assert TOOLS <= {t.name for t in asyncio.run(listed()).tools}


@pytest.mark.parametrize("flags, env", [(["--mcp", "--auth", "alice:wonder"], {}), ([], {"EDIFF_MCP": "1", "EDIFF_AUTH": "alice:wonder"})])
def test_mcp_with_a_login_is_refused_at_start_up_naming_both(flags, env, monkeypatch, capsys):
    """Gradio's MCP route is not behind the login (it lists the tools to anyone), so the pair is refused."""
    from app import parse_args

    for name in ("EDIFF_MCP", "EDIFF_AUTH"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exit_:
        parse_args(flags)
    err = capsys.readouterr().err
    assert exit_.value.code == 2, err[-800:]
    assert "--mcp cannot be combined with --auth" in err and "$EDIFF_AUTH" in err, err[-800:]
