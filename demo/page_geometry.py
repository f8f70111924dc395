"""Where things lie on the demo page in a real browser (Playwright): the tabs, the Generate
button and the result image against the first screen. Used by ``scripts/screenshots.py`` and the
browser tests (issue #29: Generate and a whole result inside the first screen at both sizes).
"""

from __future__ import annotations

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"]
SIZES = {"desktop": (1366, 768), "phone": (390, 844)}
TABS = {"t2i": "Text to image", "enc": "Encoders", "style": "Style transfer", "pww": "Paint with words"}


def open_tab(page, name: str) -> None:
    """Clicks a tab, through Gradio's "More tabs" menu where a narrow window folds it there."""
    tab = page.get_by_role("tab", name=name)
    if tab.count() and tab.is_visible():
        tab.click()
        return
    page.locator("button[aria-label='More tabs']:visible").first.click()
    page.locator(".overflow-dropdown button:visible", has_text=name).first.click()


def first_screen(page, prefix: str) -> dict:
    """Where a tab's Generate button and its (first) result picture lie. ``image`` is the square the
    picture is drawn in (from the <img> box and its object-fit); ``image_visible`` the share of it
    inside the window and inside every ancestor that clips (overflow other than visible), i.e. what
    a visitor sees without scrolling."""
    return page.evaluate(
        """(prefix) => {
        const vw = window.innerWidth, vh = window.innerHeight;
        const rect = (r) => ({top: r.top, bottom: r.bottom, left: r.left, right: r.right, width: r.width, height: r.height});
        const button = document.querySelector(`#${prefix}-generate`);
        const sel = prefix === "enc" ? ".ediff-compare img" : `#${prefix}-gallery img`;  // enc: the first of its three
        const img = [...document.querySelectorAll(sel)].find((i) => i.offsetParent !== null);
        if (!img) return {viewport: [vw, vh], button: button && rect(button.getBoundingClientRect()), image: null, image_visible: 0};
        const r = img.getBoundingClientRect();
        const fit = getComputedStyle(img).objectFit;
        const ratio = (img.naturalWidth || 1) / (img.naturalHeight || 1);
        let w = r.width, h = r.height;
        if (fit === "contain" || fit === "scale-down") { if (w / h > ratio) w = h * ratio; else h = w / ratio; }
        else if (fit === "cover") { if (w / h > ratio) h = w / ratio; else w = h * ratio; }
        const drawn = {left: r.left + (r.width - w) / 2, top: r.top + (r.height - h) / 2, width: w, height: h};
        drawn.right = drawn.left + w; drawn.bottom = drawn.top + h;
        let clip = {left: 0, top: 0, right: vw, bottom: vh};
        for (let el = img.parentElement; el; el = el.parentElement) {
            const cs = getComputedStyle(el);
            if (cs.overflowX !== "visible" || cs.overflowY !== "visible") {
                const a = el.getBoundingClientRect();
                clip = {left: Math.max(clip.left, a.left), top: Math.max(clip.top, a.top), right: Math.min(clip.right, a.right), bottom: Math.min(clip.bottom, a.bottom)};
            }
        }
        const seen = Math.max(0, Math.min(drawn.right, clip.right) - Math.max(drawn.left, clip.left)) * Math.max(0, Math.min(drawn.bottom, clip.bottom) - Math.max(drawn.top, clip.top));
        return {viewport: [vw, vh], button: button && rect(button.getBoundingClientRect()), image: drawn, image_visible: seen / Math.max(1, w * h)};
    }""",
        prefix,
    )
