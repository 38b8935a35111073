"""The page at GET / in a real headless browser: Debian's chromium driven by Playwright (never a
downloaded browser). Choose a clip, see it answered with bars per level and a marker on the map;
the screenshot is kept (tests/artifacts/serve_page.png, or $CG_RAY_ARTIFACTS)."""

import os
import shutil

import pytest
from serve_helpers import running_server, tiny_model

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = os.environ.get(
    "CG_RAY_ARTIFACTS", os.path.join(os.path.dirname(os.path.abspath(__file__)), "artifacts")
)


@pytest.mark.slow
def test_the_page_locates_a_chosen_video_on_the_map(tmp_path_factory):
    if not os.path.exists(CHROMIUM):
        pytest.fail(f"{CHROMIUM} is missing: `make test` installs Debian's chromium (make browser)")
    playwright = pytest.importorskip("playwright.sync_api")
    model = tiny_model(str(tmp_path_factory.mktemp("page")))
    row = next(r for r in model["rows"] if r["city"] == "Chicago")
    profile = tmp_path_factory.mktemp("chromium-profile")
    with running_server(model["ckpt"]) as server, playwright.sync_playwright() as p:
        browser = p.chromium.launch_persistent_context(
            str(profile),
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
            viewport={"width": 1280, "height": 860},
        )
        try:
            page = browser.new_page()
            outside = []
            page.on(
                "request",
                lambda r: (
                    outside.append(r.url) if not r.url.startswith((server.url, "blob:", "data:")) else None
                ),
            )
            page.goto(server.url + "/")
            page.wait_for_selector("#map[data-ready='1']", timeout=30_000)
            page.set_input_files("#file", row["path"])
            page.wait_for_selector(".level[data-level='city'] .row.pick", timeout=60_000)

            assert page.inner_text("#answer-line").startswith("Most likely")
            assert "Chicago" in page.inner_text("#answer-line")
            for level in ("city", "state", "country", "continent"):
                rows = page.query_selector_all(f".level[data-level='{level}'] .row")
                assert 1 <= len(rows) <= 5
                assert page.query_selector(f".level[data-level='{level}'] .row.pick .bar div")
            assert page.evaluate("document.getElementById('player').src").startswith("blob:")
            # The marker: drawn at Chicago (41.9N, 87.6W) on the equirectangular map, in the
            # accent colour.
            marker = page.get_attribute("#map", "data-marker")
            x, y, city = marker.split(",")
            assert city == "Chicago"
            assert abs(int(x) - (180 - 87.63) / 360 * 1080) < 3 and abs(int(y) - (90 - 41.88) / 180 * 540) < 3
            pixel = page.evaluate(
                f"Array.from(document.getElementById('map').getContext('2d')"
                f".getImageData({x}, {y}, 1, 1).data)"
            )
            assert pixel[:3] == [0xD6, 0x33, 0x6C], pixel
            # Land is drawn from the package's mask: a pixel in the Sahara is land-coloured.
            sahara = page.evaluate(
                "Array.from(document.getElementById('map').getContext('2d')"
                ".getImageData(Math.round(195/360*1080), Math.round(67/180*540),"
                " 1, 1).data)"
            )
            assert sahara[:3] == [0xC9, 0xD3, 0xBF], sahara
            assert "The map could not" not in page.inner_text("#status")
            assert outside == [], f"the page asked for outside addresses: {outside}"

            os.makedirs(ARTIFACTS, exist_ok=True)
            shot = os.path.join(ARTIFACTS, "serve_page.png")
            page.screenshot(path=shot, full_page=True)
            print(f"screenshot: {shot}")
            assert os.path.getsize(shot) > 10_000

            # An upload the server refuses shows its message on the page.
            bad = tmp_path_factory.mktemp("bad") / "notes.txt"
            bad.write_text("not a video\n")
            page.set_input_files("#file", str(bad))
            page.wait_for_selector("#status.error", timeout=30_000)
            assert "not a video" in page.inner_text("#status")
        finally:
            browser.close()
    shutil.rmtree(profile, ignore_errors=True)
