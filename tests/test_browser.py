"""A real browser (Debian's Chromium through Playwright) against a real ``python app.py``:
type a prompt and generate; paint on the canvas with a palette brush, map the colour to a
phrase, and generate. Screenshots go to artifacts/ (gitignored)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
from PIL import Image

from server.testing import shared_app

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
CHROMIUM = "/usr/bin/chromium"
BLUE = (35, 85, 215)


@pytest.fixture(scope="module")
def app(tiny_model):
    return shared_app("--model", str(tiny_model), "--max-queue", "16", "--max-running", "16")


@pytest.fixture(scope="module")
def page(app):
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (scripts/setup.sh does it)")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        pg = browser.new_page(viewport={"width": 1400, "height": 1000})
        pg.set_default_timeout(60_000)
        pg.goto(app.url + "/")
        pg.get_by_role("tab", name="Text to image").wait_for()
        yield pg
        browser.close()


def _download_meta(app, page, files_id: str) -> dict:
    """Fetches the first PNG offered for download in ``files_id`` and reads its metadata."""
    href = page.locator(f"#{files_id} a[href]").first.get_attribute("href")
    url = href if href.startswith("http") else app.url + href
    r = httpx.get(url, timeout=30)
    assert r.status_code == 200
    path = ARTIFACTS / f"{files_id}.png"
    path.write_bytes(r.content)
    img = Image.open(path)
    img.load()
    return json.loads(img.text["ediff"])


def test_type_a_prompt_and_generate(app, page):
    page.get_by_role("tab", name="Text to image").click()
    page.locator("#t2i-prompt textarea").fill("a red circle and two blue stars on old paper")
    page.locator("#t2i-generate").click()
    page.locator("#t2i-gallery img").first.wait_for(state="visible")
    page.get_by_text("done in").first.wait_for()
    page.screenshot(path=str(ARTIFACTS / "browser_text_to_image.png"), full_page=True)
    meta = _download_meta(app, page, "t2i-files")
    assert meta["prompt"] == "a red circle and two blue stars on old paper"
    assert meta["experts"]["base"][0]["expert"] == "E2_3"  # the high-noise expert starts


def test_paint_on_the_canvas_map_the_colour_and_generate(app, page):
    page.get_by_role("tab", name="Paint with words").click()
    page.locator("#pww-prompt textarea").fill("a red circle and a blue star")
    editor = page.locator("#pww-editor")
    editor.get_by_role("button", name="Color").click()
    editor.locator(f'button.color[style*="rgb({BLUE[0]}, {BLUE[1]}, {BLUE[2]})"]').click()
    box = editor.locator("canvas").last.bounding_box()
    x0, y0 = box["x"] + box["width"] * 0.55, box["y"] + box["height"] * 0.4
    page.mouse.move(x0, y0)
    page.mouse.down()
    for k in range(1, 12):  # a stroke to the right, wiggling down
        page.mouse.move(x0 + 8 * k, y0 + 6 * (k % 3), steps=2)
    page.mouse.up()
    # Map the blue brush (row 5 of the palette) to a phrase of the prompt.
    page.locator('#pww-mapping [role=gridcell][data-row="5"][data-col="1"]').dblclick()
    page.keyboard.type("blue star")
    page.keyboard.press("Enter")
    page.screenshot(path=str(ARTIFACTS / "browser_paint_sketch.png"), full_page=True)
    page.locator("#pww-generate").click()
    page.locator("#pww-gallery img").first.wait_for(state="visible")
    page.screenshot(path=str(ARTIFACTS / "browser_paint_result.png"), full_page=True)
    meta = _download_meta(app, page, "pww-files")
    assert [(p["colour"], p["phrase"]) for p in meta["paint"]["phrases"]] == [("#2355d7", "blue star")]
    assert meta["paint"]["sketch_size"] == [256, 256]
