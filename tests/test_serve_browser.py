"""The ``leyolo serve`` page in headless Chromium: pick an image, boxes drawn to scale, nothing loaded from elsewhere.

Uses Debian's Chromium (``apt-get install -y chromium``; Playwright's own browser download is not
available here) driven by Playwright through ``executable_path``; skips when either is missing.
The uploaded image is grayscale, so every coloured pixel on the canvas is a drawn box or label.
"""

from __future__ import annotations

import os
import shutil

import cv2
import pytest
from shared_data import synthetic_image

CHROMIUM = shutil.which("chromium") or next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser")
                                             if os.path.exists(p)), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no Chromium installed (apt-get install -y chromium)")
sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (no browser download needed)")
pytest.importorskip("fastapi", reason="leyolo serve needs its extra: pip install -e '.[serve]'")
httpx = pytest.importorskip("httpx")

from test_serve import ServerProcess, make_noisy_weights  # noqa: E402

FLAGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
WIDTH, HEIGHT = 1000, 700  # shown narrower than this: the page must scale the boxes

# functions, not expressions: Playwright evaluates a bare expression with eval(), which the page's CSP forbids
MODEL_SHOWN = "() => document.getElementById('model').textContent.includes('leyolo-n')"
CANVAS_STATS = """() => {
  const c = document.getElementById("canvas");
  const d = c.getContext("2d").getImageData(0, 0, c.width, c.height).data;
  let coloured = 0;
  for (let i = 0; i < d.length; i += 4) {
    if (Math.max(d[i], d[i + 1], d[i + 2]) - Math.min(d[i], d[i + 1], d[i + 2]) > 60) coloured++;
  }
  return {coloured, width: c.width, height: c.height, shown: c.getBoundingClientRect().width};
}"""
COLOURED_NEAR = """([x, y]) => {
  const d = document.getElementById("canvas").getContext("2d").getImageData(x - 3, y - 3, 7, 7).data;
  for (let i = 0; i < d.length; i += 4) {
    if (Math.max(d[i], d[i + 1], d[i + 2]) - Math.min(d[i], d[i + 1], d[i + 2]) > 60) return true;
  }
  return false;
}"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve-browser")
    proc = ServerProcess(make_noisy_weights(root / "noisy.safetensors"), root / "server.log")
    yield proc
    proc.stop()


def test_page_uploads_an_image_and_draws_scaled_boxes(server, tmp_path):
    gray = cv2.cvtColor(synthetic_image(5, HEIGHT, WIDTH), cv2.COLOR_BGR2GRAY)
    image = tmp_path / "street.jpg"
    assert cv2.imwrite(str(image), gray)  # a one-channel JPEG: decoded as R = G = B
    expected = httpx.post(server.url + "/v1/detect", content=image.read_bytes(),
                          headers={"content-type": "image/jpeg"}, timeout=30).json()["detections"]
    assert expected, "the test model found nothing to draw"

    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        try:
            page = browser.new_page(viewport={"width": 760, "height": 1000}, device_scale_factor=1)
            requested: list[str] = []
            problems: list[str] = []
            page.on("request", lambda r: requested.append(r.url))
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.goto(server.url + "/")
            page.wait_for_function(MODEL_SHOWN)
            page.set_input_files("#file", str(image))
            page.wait_for_selector("body[data-state=done]", timeout=30_000)
            page.screenshot(path=str(tmp_path / "page.png"), full_page=True)

            assert int(page.get_attribute("#canvas", "data-boxes")) == len(expected)
            assert page.text_content("#status").startswith(f"{len(expected)} detection")
            assert "infer" in page.text_content("#timing")
            assert page.locator("#detections li").count() == len(expected)
            stats = page.evaluate(CANVAS_STATS)
            assert stats["width"] == round(stats["shown"]) < WIDTH  # canvas = shown size (x1 device pixel)
            assert stats["coloured"] > 500, stats
            scale = stats["width"] / WIDTH
            inside = [d for d in expected if 6 < d["box"][0] < WIDTH - 6][:5]
            for d in inside:  # each box's left edge, at mid-height, lands where the scaled box says
                x1, y1, _, y2 = d["box"]
                assert page.evaluate(COLOURED_NEAR, [round(x1 * scale), round((y1 + y2) / 2 * scale)]), d
        finally:
            browser.close()
    assert requested and all(url.startswith(server.url) for url in requested), requested
    assert not problems, problems
    assert (tmp_path / "page.png").stat().st_size > 10_000


def test_webcam_frames_are_detected(server, tmp_path):
    """Chromium's fake camera (a test pattern) through the webcam button: frames go out, boxes come back."""
    flags = [*FLAGS, "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=flags)
        try:
            page = browser.new_page(viewport={"width": 760, "height": 900})
            page.goto(server.url + "/")
            page.wait_for_function(MODEL_SHOWN)
            page.click("#webcam")
            page.wait_for_function("() => document.body.dataset.state === 'done' && "
                                   "document.getElementById('status').textContent.includes('640×480')",
                                   timeout=30_000)
            assert page.text_content("#webcam") == "Stop webcam"
            page.screenshot(path=str(tmp_path / "webcam.png"))
            page.click("#webcam")
            assert page.text_content("#webcam") == "Use webcam"
        finally:
            browser.close()
    assert "POST /v1/detect 200" in server.log_text()
