"""`ardiff serve` in a real browser (Debian's Chromium, driven by Playwright): the page draws a
grid, streams frames that the test reads back from the page, switches the prompt mid-stream,
shows bad requests as errors while the server goes on, and tells a story. It prints the
first-frame latency (press of Start to the frame decoded on screen) and takes the README's
screenshots (into $ARDIFF_SCREENSHOTS when set).

Slow (about a minute on 2 cores). With a few-step video student (shipped `moving-fmnist-fast`, or
the model directory in $ARDIFF_SERVE_STUDENT) it streams the student and checks that the first
frame is on screen within 2 s; otherwise it streams the teacher `moving-fmnist` and only prints
the latency."""

import base64
import io
import os
import shutil
import socket
import threading
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ardiff.models.resolve import shipped_model_names

pytestmark = pytest.mark.slow
FIRST_FRAME_BUDGET_S = 2.0


@pytest.fixture(scope="module")
def chromium() -> str:
    """The system browser (checked here, not at import, so the default run deselects quietly)."""
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        pytest.skip("needs Debian's chromium (apt-get install chromium; make test-slow installs it)")
    return path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def student() -> str | None:
    if "moving-fmnist-fast" in shipped_model_names():
        return "moving-fmnist-fast"
    path = os.environ.get("ARDIFF_SERVE_STUDENT")
    return str(Path(path).resolve()) if path else None


@pytest.fixture(scope="module")
def server(student):
    uvicorn = pytest.importorskip("uvicorn")
    from ardiff.serve.app import create_app
    from ardiff.serve.studio import ModelAccess, Studio

    roots = [Path(student).parent] if student and "/" in student else []
    studio = Studio(ModelAccess(roots), device="cpu")
    studio.preload("fmnist-fast", student or "moving-fmnist")
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(studio), host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started and time.time() < deadline:
        time.sleep(0.05)
    assert server.started, "the server did not start"
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(30)


@pytest.fixture(scope="module")
def page(chromium, server):
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        offsite = []
        page.on("request", lambda r: offsite.append(r.url) if not r.url.startswith((server, "data:")) else None)
        page.goto(server)
        page.wait_for_selector("body[data-ready='1']")
        yield page
        assert offsite == [], f"the page fetched from elsewhere: {offsite}"
        browser.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory) -> Path:
    out = os.environ.get("ARDIFF_SCREENSHOTS")
    return Path(out) if out else tmp_path_factory.mktemp("screenshots")


def decode(data_url: str) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(base64.b64decode(data_url.split(",", 1)[1]))))


def assert_error_shown(page, button: str, error_id: str, fragment: str) -> None:
    """Press ``button`` (its handler clears the error line first) and find ``fragment`` in the error shown."""
    page.click(button)
    page.wait_for_function(f"document.getElementById('{error_id}').textContent.length > 0")
    assert fragment in page.inner_text(f"#{error_id}")


def test_images_view_draws_a_grid_and_shows_bad_requests(page, shots):
    page.click("#tab-images")
    page.select_option("#images-model", "fmnist-fast")
    page.fill("#images-per-class", "2")
    page.click("#images-run")
    page.wait_for_function("document.getElementById('images-time').textContent.includes('images in')")
    assert "20 images in" in page.inner_text("#images-time")
    grid = decode(page.get_attribute("#images-grid", "src"))
    assert grid.ndim == 3 and grid.shape[0] > 100 and grid.std() > 10  # a captioned grid, not a blank
    page.screenshot(path=str(shots / "serve-images.png"), full_page=True)

    for setup, fragment in [
        ("document.getElementById('images-steps').value = 0", "steps: 0 is out of range"),
        ("const s = document.getElementById('images-model'); const o = document.createElement('option');"
         "o.value = '/etc'; s.appendChild(o); s.value = '/etc'", "outside the directories"),
    ]:
        page.evaluate(setup)
        assert_error_shown(page, "#images-run", "images-error", fragment)
    # The server went on: a good request draws again.
    page.select_option("#images-model", "fmnist-fast")
    page.fill("#images-steps", "4")
    page.fill("#images-per-class", "1")
    page.click("#images-run")
    page.wait_for_function("document.getElementById('images-time').textContent.includes('10 images in')")
    assert page.inner_text("#images-error") == ""


def test_stream_view_streams_switches_and_reports_the_first_frame(page, shots, student):
    model = student or "moving-fmnist"
    page.click("#tab-stream")
    # Bad requests first: shown on the page, the server goes on.
    page.select_option("#stream-model", model)
    for field, value, fragment in [("#stream-frames-count", "10000", "frames: 10000 is out of range"),
                                   ("#stream-prompts", "0:sneaker, 7:bag", "not on a block boundary")]:
        page.fill("#stream-frames-count", "32")
        page.fill("#stream-prompts", "0:sneaker")
        page.fill(field, value)
        assert_error_shown(page, "#stream-start", "stream-error", fragment)
    page.fill("#stream-frames-count", "32")
    page.fill("#stream-prompts", "0:sneaker")
    page.select_option("#stream-now-class", "trouser")
    page.click("#stream-start")
    page.wait_for_function("document.querySelectorAll('#stream-frames figure').length >= 8", timeout=60_000)
    page.click("#stream-switch-now")
    page.wait_for_function("document.getElementById('stream-status').textContent.startsWith('done')",
                           timeout=120_000)
    page.screenshot(path=str(shots / "serve-stream.png"), full_page=True)

    frames = page.eval_on_selector_all("#stream-frames figure", "fs => fs.map(f => [+f.dataset.frame, "
                                       "f.dataset.prompt, f.querySelector('img').src])")
    assert [f[0] for f in frames] == list(range(32))
    switched = page.input_value("#stream-prompts")  # the schedule as the server applied it
    assert switched.startswith("0:sneaker, ") and switched.endswith(":trouser")
    at = int(switched.split(", ")[1].split(":")[0])
    assert 8 <= at < 32 and [f[1] for f in frames] == ["sneaker"] * at + ["trouser"] * (32 - at)
    pixels = np.stack([decode(f[2]) for f in frames])
    assert pixels.shape == (32, 32, 32) and pixels.std(axis=(1, 2)).min() > 1  # every frame drawn
    latency = float(page.get_attribute("#stream-latency", "data-seconds"))
    fps = page.inner_text("#stream-fps")
    print(f"\n{model}: first frame on screen {latency:.2f} s after Start; {fps} frames/s; switch at frame {at}")
    if student:
        assert latency <= FIRST_FRAME_BUDGET_S, f"first frame after {latency:.2f} s (budget {FIRST_FRAME_BUDGET_S} s)"
    assert page.get_attribute("#stream-download", "href").endswith("/video.mp4")


def test_story_view_tells_a_random_story(page, shots):
    from ardiff.data.fashion_mnist import load_fashion_mnist

    try:
        load_fashion_mnist(None, "test")
    except FileNotFoundError:
        pytest.skip("random stories need Fashion-MNIST (apt-get install dataset-fashion-mnist)")
    page.click("#tab-story")
    page.fill("#story-index", "3")
    page.click("#story-random")
    page.wait_for_function("document.querySelectorAll('#story-table tr[data-frame]').length === 6", timeout=120_000)
    assert page.inner_text("#story-error") == ""
    assert "mean faithfulness ARM" in page.inner_text("#story-summary")
    assert len(page.query_selector_all("#story-table img.acdc")) == 6
    page.screenshot(path=str(shots / "serve-story.png"), full_page=True)
    # A story outside the grammar is an error on the page.
    page.fill("#story-text", "Once upon a time. It flies.")
    assert_error_shown(page, "#story-run", "story-error", "story-world introduction")
