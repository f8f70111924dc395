"""The four generation endpoints as MCP tools (``python app.py --mcp``), through Gradio's MCP server.

Gradio serves every named endpoint as a tool at ``/gradio_api/mcp/`` (streamable HTTP) and
``/gradio_api/mcp/sse`` (SSE), describing a tool by its function's docstring and each parameter by
the docstring's ``Args:`` lines. ``describe_tools`` writes those docstrings for ``/generate``,
``/compare_encoders``, ``/style_transfer`` and ``/paint_with_words`` from one table, using the
REST API's field descriptions (``server.schemas``) where they exist, so MCP clients see what each
parameter means and its range.
"""

from __future__ import annotations

from typing import Any

from ediff_core.core.conditioning import ENCODER_MODES
from ediff_core.core.request import MAX_GUIDANCE, MAX_IMAGES, MAX_SEED, MAX_STEPS
from ediff_core.core.samplers import SAMPLERS

TOOLS = {
    "generate": "Text to image with eDiff-I (an ensemble of sigma-routed expert denoisers, T5 + CLIP text conditioning). Returns the images as PNG files with their settings embedded.",
    "compare_encoders": "The same prompt and seed with CLIP text only, T5 only and both encoders (eDiff-I section 5.2), side by side.",
    "style_transfer": "Text to image in the style of a reference image, through its CLIP image embedding (eDiff-I section 5.3).",
    "paint_with_words": "Paint with words (eDiff-I section 4.3): a colour sketch whose colours each paint one phrase of the prompt.",
}

PARAMETERS = {
    "prompt": "what to draw, in the model's vocabulary (ediff-mini knows Shapes World: colours, shapes, counts, positions, backgrounds, styles)",
    "negative_prompt": "used in classifier-free guidance's negative branch (empty = none)",
    "seed": f"random seed, 0 to {MAX_SEED}; image k uses seed + k",
    "steps": f"base sampler steps, 1 to {MAX_STEPS} (the model's default if empty)",
    "guidance": f"classifier-free guidance scale, 0 to {MAX_GUIDANCE:g} (1 = off)",
    "sampler": ", ".join(SAMPLERS),
    "encoders": f"text encoders: {', '.join(ENCODER_MODES)}",
    "num_images": f"images to make, 1 to {MAX_IMAGES}",
    "attention_maps": "also return cross-attention maps of the prompt's words",
    "style_image": "the reference image (PNG, JPEG or WebP; a URL or a file)",
    "style_strength": "how strongly the reference's CLIP embedding counts, 0 to 3 (0 = off)",
    "sketch": "the colour sketch (PNG; a URL or a file), painted with the Shapes World colours",
    "phrases": 'which phrase of the prompt each colour paints: JSON {"#d72626": "red circle", "#2355d7": "blue star@0.5"} or "#RRGGBB=words" lines (@ sets a strength)',
    "pww_weight": "paint-with-words strength w', 0 to 2",
}


def docstring(tool: str, fn: Any) -> str:
    """``TOOLS[tool]`` plus an ``Args:`` line for each of ``fn``'s parameters that has a description."""
    import inspect

    names = [n for n in inspect.signature(fn).parameters if n in PARAMETERS]
    return TOOLS[tool] + "\n\nArgs:\n" + "\n".join(f"    {n}: {PARAMETERS[n]}" for n in names)


def describe_tools(demo: Any) -> list[str]:
    """Sets the MCP descriptions of the four named endpoints of ``demo``; returns the tools described.

    Must run before the MCP server is created (``gr.mount_gradio_app(..., mcp_server=True)``).
    """
    described = []
    for block_fn in demo.fns.values():
        name = getattr(block_fn, "api_name", None)
        if name in TOOLS and block_fn.fn is not None:
            block_fn.fn.__doc__ = docstring(name, block_fn.fn)
            block_fn.api_description = None  # Gradio then reads the docstring
            described.append(name)
    return described


def flatten_outputs(data: list[Any]) -> list[Any]:
    """Each file of an endpoint's outputs as its own item (gallery entries to their image).

    Gradio 6.31's MCP server hands a multi-output, queued endpoint's whole result tuple to its
    postprocessing as ONE item, which then becomes one text block with the files' dicts in it;
    flattened, every PNG becomes MCP image content (plus its URL) and the rest stays text.
    """
    out: list[Any] = []
    for item in data:
        if isinstance(item, (tuple, list)):
            out.extend(flatten_outputs(list(item)))
        elif isinstance(item, dict) and isinstance(item.get("image"), dict):
            out.append(item["image"])  # a gallery entry {"image": FileData, "caption": ...}
        elif item is not None:
            out.append(item)
    return out


def install_output_flattening(demo: Any) -> None:
    """Routes the MCP server's output postprocessing of ``demo`` through ``flatten_outputs``."""
    server = getattr(demo, "mcp_server_obj", None)
    if server is None:
        return
    postprocess = server.postprocess_output_data
    server.postprocess_output_data = lambda data, root_url: postprocess(flatten_outputs(list(data)), root_url)
