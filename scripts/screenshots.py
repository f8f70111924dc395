"""Screenshots of the demo's four tabs at a desktop and a phone size, from a real ``python app.py``
in Debian's Chromium: ``python scripts/screenshots.py [--out docs/screenshots] [-- APP ARGS]``.

Each tab is shown as a visitor first sees it (its example's cached result); the script also prints,
per tab and size, where the Generate button and the result image lie against the first screen.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from demo.page_geometry import CHROMIUM, CHROMIUM_ARGS, SIZES, TABS, first_screen, open_tab  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from live_server import start_app  # noqa: E402

def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--out", default="docs/screenshots")
    ap.add_argument("app_args", nargs="*")
    args = ap.parse_args()
    from playwright.sync_api import sync_playwright

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    app = start_app(args.app_args)
    report = {}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            for size, (w, h) in SIZES.items():
                page = browser.new_page(viewport={"width": w, "height": h}, device_scale_factor=1)
                page.set_default_timeout(60_000)
                page.goto(app.url + "/")
                page.get_by_role("tab", name=TABS["t2i"]).wait_for()
                for prefix, name in TABS.items():
                    open_tab(page, name)
                    page.locator(f"#{prefix}-generate").wait_for(state="visible")
                    page.wait_for_timeout(800)
                    page.evaluate("window.scrollTo(0, 0)")
                    page.screenshot(path=str(out / f"{prefix}_{size}.png"))
                    report[f"{prefix}_{size}"] = first_screen(page, prefix)
                page.close()
            browser.close()
    finally:
        app.stop()
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
