"""A real browser (Debian's Chromium through Playwright) against a real ``python app.py``:
type a prompt and generate; paint on the canvas with a palette brush, map the colour to a
phrase, and generate; at a desktop and a phone size every tab shows Generate and a whole result
in the first screen (issue #29); the vocabulary notice; cached examples. Screenshots go to
artifacts/ (gitignored)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import httpx
import pytest
from PIL import Image

from demo.page_geometry import CHROMIUM, CHROMIUM_ARGS, SIZES, TABS, first_screen, open_tab
from live_server import shared_app

pytestmark = pytest.mark.browser

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "artifacts"
BLUE = (35, 85, 215)


@pytest.fixture(scope="module")
def app(tiny_model):
    return shared_app("--model", str(tiny_model), "--max-queue", "16", "--max-running", "16", "--max-per-client", "16", "--client-budget", "1e9")


@pytest.fixture(scope="module")
def browser():
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: apt-get install -y chromium (scripts/setup.sh does it)")
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield b
        b.close()


def _open(app, browser, width: int, height: int):
    pg = browser.new_page(viewport={"width": width, "height": height})
    pg.set_default_timeout(60_000)
    pg.goto(app.url + "/")
    pg.get_by_role("tab", name="Text to image").wait_for()
    return pg


@pytest.fixture(scope="module")
def page(app, browser):
    pg = _open(app, browser, 1400, 1000)
    yield pg
    pg.close()


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
    # The tab opens on its example: a sketch with a red circle mapped to "red circle" (row 1).
    assert page.locator('#pww-mapping [role=gridcell][data-row="0"][data-col="1"]').inner_text().strip() == "red circle"
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
    assert [(p["colour"], p["phrase"]) for p in meta["paint"]["phrases"]] == [("#d72626", "red circle"), ("#2355d7", "blue star")]
    assert meta["paint"]["sketch_size"] == [256, 256]


def _assert_first_screen(page, prefix: str, size: str) -> dict:
    """Generate inside the window, and the result picture whole (>= 95 % seen, nothing clipping it)
    and large: >= 384 px on the desktop, >= 256 px and most of the width on the phone."""
    width, height = SIZES[size]
    page.evaluate("window.scrollTo(0, 0)")
    geo = first_screen(page, prefix)
    assert geo["button"] is not None and geo["button"]["bottom"] <= height, (prefix, size, geo["button"])
    assert geo["image"] is not None, (prefix, size)
    assert geo["image_visible"] >= 0.95, (prefix, size, geo)
    assert geo["image"]["width"] >= (384 if size == "desktop" else max(256, 0.75 * width)), (prefix, size, geo["image"])
    return geo


@pytest.mark.parametrize("size", list(SIZES))
def test_every_tab_shows_generate_and_a_whole_result_in_the_first_screen(app, browser, size):
    """Issue #29: at 1366×768 and 390×844, on every tab as it opens (its example's cached result)
    and after a real run of text to image, Generate and the whole result need no scrolling."""
    page = _open(app, browser, *SIZES[size])
    try:
        for prefix, name in TABS.items():
            open_tab(page, name)
            page.locator(f"#{prefix}-generate").wait_for(state="visible")
            page.locator(".ediff-compare img" if prefix == "enc" else f"#{prefix}-gallery img").first.wait_for(state="visible")
            page.wait_for_timeout(300)  # layout settles after the tab switch
            _assert_first_screen(page, prefix, size)
            page.screenshot(path=str(ARTIFACTS / f"first_screen_{prefix}_{size}.png"))
        open_tab(page, TABS["t2i"])
        page.locator("#t2i-prompt textarea").fill("two blue stars")
        page.locator("#t2i-prompt textarea").press("Enter")  # Enter submits
        page.get_by_text("done in").first.wait_for()
        page.wait_for_timeout(300)
        _assert_first_screen(page, "t2i", size)
    finally:
        page.close()


def test_the_notice_names_words_the_model_does_not_know(page):
    page.get_by_role("tab", name="Text to image").click()
    box = page.locator("#t2i-prompt textarea")
    box.fill("a red cat on a sofa")
    notice = page.locator("#t2i-notice")
    notice.get_by_text("cat").wait_for()
    text = notice.inner_text()
    assert "cat" in text and "sofa" in text and "red" not in text.split("does not know", 1)[1], text
    box.fill("a red circle")
    page.wait_for_function("() => !document.querySelector('#t2i-notice').innerText.includes('does not know')")


def test_a_word_chip_adds_its_word_to_the_prompt(page):
    page.get_by_role("tab", name="Text to image").click()
    box = page.locator("#t2i-prompt textarea")
    box.fill("a red")
    page.locator("#t2i-words .ediff-chip", has_text="heart").first.click()
    assert box.input_value() == "a red heart"


def test_an_example_click_shows_its_cached_result_without_a_model_run(app, page):
    page.get_by_role("tab", name="Text to image").click()
    before = httpx.get(f"{app.url}/health", timeout=10).json()["scheduler"]["admitted"]
    src = page.locator("#t2i-gallery img").first.get_attribute("src")
    page.locator("#t2i-examples").get_by_text("an orange heart on a striped background").first.click()
    page.wait_for_function("(old) => { const i = document.querySelector('#t2i-gallery img'); return i && i.getAttribute('src') !== old; }", arg=src)
    assert page.locator("#t2i-prompt textarea").input_value() == "an orange heart on a striped background"
    page.locator("#t2i-status").get_by_text("no model run").wait_for()
    assert httpx.get(f"{app.url}/health", timeout=10).json()["scheduler"]["admitted"] == before
