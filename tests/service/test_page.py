"""The web page at / in a real headless Chromium (Debian's chromium, driven by Playwright).

The page must work with the public API only: upload, options, processing -> fetch polling,
server errors, downloads. The main test runs the real model on a real photo.
"""

from __future__ import annotations

import base64
import io
import re
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from tests.conftest import (
    PHOTOS,
    LiveServer,
    real_settings,
    requires_real_model,
    subject_image,
)

ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHROMIUM_ARGS = [
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
RESULT_TIMEOUT_MS = 180_000  # the real model on two shared CPU cores, plus page work


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    executable = chromium_path()
    if executable is None:
        pytest.skip(
            "NO CHROMIUM: the web page's browser tests did NOT run. Install Debian's "
            "chromium (`apt-get install chromium`, or `make setup`); CI always has it."
        )
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    page = context.new_page()
    # The server's Content-Security-Policy must not block anything the page does.
    blocked: list[str] = []
    page.on(
        "console",
        lambda message: (
            blocked.append(message.text) if "Content Security Policy" in message.text else None
        ),
    )
    yield page
    context.close()
    assert not blocked, blocked


def wait_for_end(page) -> str:
    """Wait until the page shows a result or an error; returns which."""
    # A selector, not wait_for_function: that compiles its predicate with eval, which the
    # page's Content-Security-Policy forbids.
    page.wait_for_selector(
        "body[data-state=done], body[data-state=error]", state="attached", timeout=RESULT_TIMEOUT_MS
    )
    return page.evaluate("document.body.dataset.state")


DOWNLOADS = ("#download-cutout", "#download-mask")


def broken_visible_images(page) -> list[str]:
    """The ids (or sources) of visible <img> elements that show no picture."""
    return page.evaluate(
        """() => [...document.images]
            .filter((img) => img.checkVisibility() && !(img.complete && img.naturalWidth > 0))
            .map((img) => img.id || img.getAttribute("src") || "(no src)")"""
    )


def download_enabled(page, selector: str) -> bool:
    """A download control is enabled when it links somewhere and is not marked disabled."""
    return page.get_attribute(selector, "aria-disabled") != "true" and bool(
        page.get_attribute(selector, "href")
    )


def assert_empty_state(page) -> None:
    """Nothing to show and nothing to download: the drop-zone prompt, no broken image."""
    assert page.is_visible("#empty") and page.is_hidden("#stage")
    assert broken_visible_images(page) == []
    for selector in DOWNLOADS:
        assert page.is_visible(selector) and not download_enabled(page, selector), selector


def download(page, selector: str):
    with page.expect_download() as info:
        page.click(selector)
    dl = info.value
    return dl.suggested_filename, Image.open(io.BytesIO(Path(dl.path()).read_bytes()))


@pytest.mark.browser
@pytest.mark.real_model
@requires_real_model
def test_page_removes_background_with_real_model(page, tmp_path):
    photo = PHOTOS / "animal-1.jpg"
    width, height = Image.open(photo).size
    with LiveServer(real_settings(tmp_path / "home")) as server:
        page.goto(server.url + "/")
        assert page.title().startswith("alphacut")
        assert_empty_state(page)
        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "web-page-empty.png"), full_page=True)
        for field in (
            "alpha_matting",
            "alpha_matting_foreground_threshold",
            "alpha_matting_background_threshold",
            "alpha_matting_erode_size",
            "post_process_mask",
            "only_mask",
            "inverse_mask",
            "format",
            "quality",
            "use_bg_color",
            "bg_image",
            "crop",
            "crop_margin",
            "scale",
            "position",
            "key",
            "model",
            "instant_response",
        ):
            assert page.is_visible(f"#{field}"), field
        page.set_input_files("#file", str(photo))
        state = wait_for_end(page)
        assert state == "done", page.text_content("#error")

        assert page.is_visible("#result") and page.is_visible("#before")
        assert page.is_hidden("#empty") and broken_visible_images(page) == []
        assert all(download_enabled(page, selector) for selector in DOWNLOADS)
        assert page.eval_on_selector("#result", "img => [img.naturalWidth, img.naturalHeight]") == [
            width,
            height,
        ]
        assert "single" not in page.get_attribute("#stage", "class")  # before/after shown
        assert float(page.text_content("#generation-time").split()[0]) > 0
        page.eval_on_selector(
            "#slider", "el => { el.value = 30; el.dispatchEvent(new Event('input')); }"
        )
        assert "--pos: 30%" in page.get_attribute("#stage", "style")

        name, cutout = download(page, "#download-cutout")
        assert name.endswith(".png") and cutout.format == "PNG"
        assert cutout.mode == "RGBA" and cutout.size == (width, height)
        alpha = np.asarray(cutout)[..., 3]
        assert 0.1 < (alpha > 127).mean() < 0.9  # a subject, not an empty or full mask
        mask_name, mask = download(page, "#download-mask")
        assert mask_name.endswith(".mask.png") and mask.size == (width, height)
        assert np.array_equal(np.asarray(mask.convert("RGBA"))[..., 0], alpha)

        page.eval_on_selector(
            "#slider", "el => { el.value = 42; el.dispatchEvent(new Event('input')); }"
        )
        page.screenshot(path=str(ARTIFACTS / "web-page.png"), full_page=True)


@pytest.mark.browser
def test_page_polls_fetch_for_processing_jobs(page, live_server, tiny_settings):
    server = live_server(tiny_settings)
    answers: list[dict] = []
    fetches: list[str] = []
    page.on("request", lambda r: fetches.append(r.url) if "/api/v5/fetch/" in r.url else None)
    page.on(
        "response",
        lambda r: answers.append(r.json()) if r.url.endswith("/api/v5/removebg_mask") else None,
    )
    page.goto(server.url + "/")
    page.check("#instant_response")
    page.select_option("#format", "webp")
    # Drop a file on the drop zone, as a user dragging it from their desktop would.
    buffer = io.BytesIO()
    subject_image()[0].save(buffer, format="PNG")
    page.evaluate(
        """(b64) => {
        const bytes = Uint8Array.from(atob(b64), (c) => c.charCodeAt(0));
        const data = new DataTransfer();
        data.items.add(new File([bytes], "subject.png", {type: "image/png"}));
        document.getElementById("drop").dispatchEvent(
            new DragEvent("drop", {dataTransfer: data, bubbles: true, cancelable: true}));
    }""",
        base64.b64encode(buffer.getvalue()).decode(),
    )
    assert wait_for_end(page) == "done", page.text_content("#error")
    assert answers[0]["status"] == "processing" and answers[0]["meta"]["format"] == "webp"
    assert fetches and fetches[-1].endswith(f"/api/v5/fetch/{answers[0]['id']}")
    assert page.eval_on_selector("#result", "img => img.naturalWidth") == 200
    name, cutout = download(page, "#download-cutout")
    assert name.endswith(".webp") and cutout.format == "WEBP" and cutout.mode == "RGBA"

    # A new request clears the old result at once: nothing to download while it runs.
    held: list = []
    page.route("**/api/v5/removebg_mask", lambda route: held.append(route))
    page.click("#run")
    while not held:
        page.wait_for_timeout(50)  # lets Playwright hand the request to the route
    assert page.evaluate("document.body.dataset.state") == "working"
    assert_empty_state(page)
    held[0].continue_()
    assert wait_for_end(page) == "done", page.text_content("#error")
    assert all(download_enabled(page, selector) for selector in DOWNLOADS)


@pytest.mark.browser
def test_page_shows_server_errors_and_uses_the_key(page, live_server, tiny_settings, file_server):
    base, root = file_server
    subject_image()[0].save(root / "web-subject.png")
    server = live_server(tiny_settings, api_keys=("web-key",))
    page.goto(server.url + "/")
    page.fill("#url", f"{base}/web-subject.png")
    page.click("#url-form button")
    assert wait_for_end(page) == "error"
    assert page.text_content("#error") == "invalid or missing API key"
    assert_empty_state(page)  # the failed request left nothing to show or download

    page.fill("#key", "web-key")
    page.dispatch_event("#key", "change")
    page.fill("#url", f"{base}/web-missing.png")
    page.click("#url-form button")
    assert wait_for_end(page) == "error"
    assert "HTTP 404" in page.text_content("#error")

    # Paste a URL anywhere on the page; jpg without a background is refused with a message.
    page.select_option("#format", "jpg")
    page.evaluate(
        """(url) => {
        const data = new DataTransfer();
        data.setData("text", url);
        document.body.dispatchEvent(
            new ClipboardEvent("paste", {clipboardData: data, bubbles: true}));
    }""",
        f"{base}/web-subject.png",
    )
    assert wait_for_end(page) == "error"
    assert "format jpg cannot store transparency" in page.text_content("#error")

    # With a background colour and a crop the request succeeds; the result has another size,
    # so it is shown alone, and there is no alpha left to derive a mask from.
    page.check("#use_bg_color")
    page.check("#crop")
    page.click("#run")
    assert wait_for_end(page) == "done", page.text_content("#error")
    assert page.is_hidden("#error")
    assert "single" in page.get_attribute("#stage", "class")
    assert broken_visible_images(page) == [] and download_enabled(page, "#download-cutout")
    assert not download_enabled(page, "#download-mask")
    name, cutout = download(page, "#download-cutout")
    assert name.endswith(".jpg") and cutout.format == "JPEG" and cutout.width < 200


def test_page_is_served_at_root_and_can_be_turned_off(live_server, tiny_settings, tmp_path):
    server = live_server(tiny_settings)
    page = httpx.get(server.url + "/")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert 'src="ui/app.js"' in page.text
    for asset, kind in (("app.js", "javascript"), ("style.css", "text/css")):
        response = httpx.get(f"{server.url}/ui/{asset}")
        assert response.status_code == 200 and kind in response.headers["content-type"]
    # Nothing outside the page's own files is fetched: no CDN, no external fonts or scripts.
    static = Path(__file__).resolve().parents[2] / "src/alphacut/service/static"
    external = re.compile(
        r"(src|href)\s*=\s*[\"']?(https?:)?//|url\(\s*[\"']?(https?:)?//|"
        r"@import|from\s+[\"']https?:|fetch\([\"']https?:"
    )
    for path in static.iterdir():
        assert not external.search(path.read_text()), path.name
    off = live_server(tiny_settings, web_ui=False, home=tmp_path / "off")
    response = httpx.get(off.url + "/")
    assert response.status_code == 404 and response.json()["status"] == "error"
