"""End-to-end test of ``memvos ui`` in headless Chromium (Debian's /usr/bin/chromium via Playwright).

Starts the server on a synthetic clip, opens the page, adds an object, clicks on it, propagates, exports
and checks the exported masks; a stale click (object deleted elsewhere) must show the server's message.
A screenshot is saved to ``out/test-artifacts/ui_browser.png``. ``scripts/setup_browser.sh`` installs
Chromium; without it (or without Playwright) the test skips, saying why.
"""

from __future__ import annotations

import json
import shutil
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "out" / "test-artifacts"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

playwright_sync = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (dev extra)")
pytest.importorskip("fastapi", reason="fastapi is not installed (ui extra)")
uvicorn = pytest.importorskip("uvicorn", reason="uvicorn is not installed (ui extra)")
if not CHROMIUM.is_file():
    pytest.skip(
        f"{CHROMIUM} is missing: run scripts/setup_browser.sh (apt-get install chromium)",
        allow_module_level=True,
    )

from memvos.cli.ui import bind  # noqa: E402
from memvos.interactive.embedding import PixelEmbedder  # noqa: E402
from memvos.interactive.server import create_app  # noqa: E402
from memvos.interactive.video import InteractiveVideo  # noqa: E402
from memvos.models.lite import LiteMemoryNetwork  # noqa: E402


@pytest.fixture
def server(tiny_clip, tmp_path) -> Iterator[tuple[str, InteractiveVideo]]:
    torch.manual_seed(0)
    model = LiteMemoryNetwork(pretrained_backbone=False).eval()
    iv = InteractiveVideo(model, PixelEmbedder.from_model(model), session_options={"precision": "fp32"})
    iv.init_state(tiny_clip.frames_dir, project_dir=tmp_path / "project")
    sock = bind(0)
    srv = uvicorn.Server(uvicorn.Config(create_app(iv), log_level="warning", lifespan="off"))
    thread = threading.Thread(target=srv.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:  # uvicorn's own start flag
        assert thread.is_alive() and time.monotonic() < deadline, "server did not start"
        time.sleep(0.02)
    host, port = sock.getsockname()[:2]
    assert host == "127.0.0.1"
    yield f"http://{host}:{port}", iv
    srv.should_exit = True
    thread.join(timeout=10)
    sock.close()


def test_click_propagate_export_in_chromium(server, tiny_clip) -> None:
    url, iv = server
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright_sync.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_FLAGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 700})
            page.on("dialog", lambda d: d.accept())
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url + "/")
            page.wait_for_function("document.body.dataset.state === 'ready'", timeout=20_000)
            assert "8 frames, 96×64" in page.inner_text("#video-info")

            page.click("#add-object")
            page.wait_for_selector("#objects li[data-id='1']")
            page.fill("#objects li[data-id='1'] .object-name", "square")
            page.press("#objects li[data-id='1'] .object-name", "Enter")

            # a positive click on the square (id 1 in the ground truth) at (14, 20) in frame pixels
            assert tiny_clip.labels[0, 20, 14] == 1
            box = page.locator("#view").bounding_box()
            assert box is not None and box["width"] > 96  # scaled up on screen
            page.mouse.click(
                box["x"] + (14 + 0.5) * box["width"] / 96, box["y"] + (20 + 0.5) * box["height"] / 64
            )
            page.wait_for_function("document.body.dataset.actions === '1'")
            assert page.evaluate("window.memvosUI.annotated") == [0]
            shown = page.evaluate("window.memvosUI.labels[20 * 96 + 14]")
            assert shown == 1  # the overlay the page shows has the object under the click

            page.select_option("#direction", "both")
            page.click("#propagate")
            page.wait_for_function("document.body.dataset.propagation === 'done'", timeout=120_000)
            assert page.evaluate("window.memvosUI.propagated.length") == 8
            assert "done: 8 frames" in page.inner_text("#progress-text")

            page.click("#export")
            page.wait_for_function("document.body.dataset.export === 'done'", timeout=60_000)
            assert page.locator("#download-masks").count() == 1
            page.click("#next")
            page.wait_for_function("document.body.dataset.rendered.startsWith('1:')")
            page.click("#prev")
            page.wait_for_function("document.body.dataset.rendered.startsWith('0:')")
            page.screenshot(path=str(ARTIFACTS / "ui_browser.png"))

            # bad input: the object is deleted behind the page's back, then clicked with
            req = urllib.request.Request(url + "/api/objects/1", method="DELETE", headers={"Origin": url})
            with urllib.request.urlopen(req) as resp:
                assert resp.status == 200
            page.mouse.click(box["x"] + 30, box["y"] + 30)
            page.wait_for_function("document.body.dataset.actions === '2'")
            assert "unknown object 1" in page.inner_text("#message-text")
            page.screenshot(path=str(ARTIFACTS / "ui_browser_error.png"))
            assert not errors, errors
        finally:
            browser.close()

    masks_dir = iv.project.root / "export" / "masks"
    files = sorted(masks_dir.glob("*.png"))
    assert [f.stem for f in files] == tiny_clip.names
    for f in files:
        im = Image.open(f)
        assert im.mode == "P" and im.size == (96, 64)
    first = np.asarray(Image.open(files[0]))
    near = first[17:24, 11:18]
    assert (near == 1).mean() > 0.5, near  # the object is there around the click
    assert (iv.project.root / "export" / "overlay.mp4").stat().st_size > 0
    saved = json.loads((iv.project.root / "project.json").read_text())
    assert saved["objects"] == []  # the deletion persisted; the export above has the object
    shutil.copy(files[0], ARTIFACTS / "ui_browser_mask_00000.png")
