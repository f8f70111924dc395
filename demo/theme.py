"""How the demo looks: the Gradio theme, the page's CSS and script, its favicon.

Gradio 6 takes these at mount time, so ``app.py`` passes ``page_options()`` to
``gr.mount_gradio_app``. The CSS uses the theme's variables only, so light and dark mode both read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr

ASSETS = Path(__file__).resolve().parent / "assets"
FAVICON = ASSETS / "favicon.png"  # a Shapes World yellow star at night, 64×64
SYSTEM_FONTS = ["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "sans-serif"]
MONO_FONTS = ["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"]
PHONE_MAX_PX = 767  # below this width the columns stack and the result moves up under the prompt


def theme() -> gr.themes.Base:
    """Indigo and pink on slate (the Space's colours), system fonts: nothing fetched from the web."""
    return gr.themes.Soft(primary_hue="indigo", secondary_hue="pink", neutral_hue="slate", font=SYSTEM_FONTS, font_mono=MONO_FONTS).set(
        block_title_text_weight="600",
        button_primary_text_color="white",
        button_primary_text_color_dark="white",
    )


# Results: a generated image is 64×64; drawn as a whole square (never cropped), large, and
# upscaled without blur. Several images make a grid of whole squares.
CSS = f"""
.ediff-header h1 {{ margin: 0 0 .2rem 0; font-size: 1.6rem; }}
.ediff-header p {{ margin: 0; color: var(--body-text-color-subdued); }}
.ediff-result img, .ediff-result canvas {{ image-rendering: pixelated; }}
.ediff-result .grid-wrap {{ height: auto !important; max-height: none !important; overflow: visible !important; }}
.ediff-result .grid-container {{ width: clamp(256px, calc(100vh - 300px), 100%); max-width: 100%; }}
.ediff-result .thumbnail-item {{ aspect-ratio: 1 / 1; height: auto !important; }}
.ediff-result .thumbnail-item img {{ object-fit: contain !important; width: 100%; height: 100%; }}
.ediff-image {{ aspect-ratio: 1 / 1; }}
.ediff-image img {{ object-fit: contain !important; width: 100%; height: 100%; }}
.ediff-status p {{ margin: 0; min-height: 1.4em; }}
.ediff-notice {{ color: var(--color-accent); }}
.ediff-notice p {{ margin: 0; }}
.ediff-chips {{ display: flex; flex-direction: column; gap: .35rem; }}
.ediff-chips .kind {{ font-size: var(--text-sm); color: var(--body-text-color-subdued); margin-right: .3rem; }}
.ediff-chip {{ font-size: var(--text-sm); padding: .1rem .55rem; margin: .1rem; border-radius: 999px; cursor: pointer;
  border: 1px solid var(--border-color-primary); background: var(--background-fill-secondary); color: var(--body-text-color); }}
.ediff-chip:hover {{ border-color: var(--color-accent); background: var(--color-accent-soft); }}
.ediff-prompt-row {{ align-items: stretch; }}
.ediff-prompt textarea {{ min-height: 2.7em; }}
@media (max-width: {PHONE_MAX_PX}px) {{
  .ediff-header h1 {{ font-size: 1.25rem; }}
  .ediff-header p {{ font-size: var(--text-sm); line-height: 1.35; }}
  .ediff-tab-row {{ flex-direction: column; }}
  .ediff-tab-row > .ediff-controls {{ display: contents; }}
  .ediff-tab-row > .ediff-controls > * {{ order: 3; }}
  .ediff-tab-row > .ediff-controls > .ediff-first {{ order: 1; }}
  .ediff-tab-row > .ediff-results {{ order: 2; }}
  .ediff-result .grid-container {{ width: 100%; }}
}}
"""

# A word chip appends its word to the prompt of its own tab; the "input" event updates Gradio's value.
SCRIPT = """
<script>
document.addEventListener("click", (event) => {
  const chip = event.target.closest(".ediff-chip");
  if (!chip) return;
  const scope = chip.closest(".tabitem") || document;
  const box = scope.querySelector(".ediff-prompt textarea");
  if (!box) return;
  const text = box.value.trimEnd();
  box.value = text ? text + " " + chip.dataset.word : chip.dataset.word;
  box.dispatchEvent(new Event("input", { bubbles: true }));
  box.focus();
});
</script>
"""


def page_options() -> dict[str, Any]:
    """Keyword arguments for ``gr.mount_gradio_app``: theme, CSS, head script, favicon."""
    return {"theme": theme(), "css": CSS, "head": SCRIPT, "favicon_path": str(FAVICON)}
