"""A multi-label model's page in headless Chromium (the distribution's, driven by Playwright): the decided labels as
chips, every label's bar with its threshold marked, and the Grad-CAM control choosing a label.

The app runs in this process under uvicorn on a thread (no second Python to start), on a tiny checkpoint.
"""

from __future__ import annotations

import csv
import io
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

CHROMIUM = os.environ.get("SEDENSENET_CHROMIUM", "/usr/bin/chromium")
if not os.environ.get("CI") and not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (CI installs it; apt-get install chromium)", allow_module_level=True)

import uvicorn  # noqa: E402
from playwright.sync_api import sync_playwright  # noqa: E402

from sedensenet.serve import create_app  # noqa: E402
from sedensenet.serve.model import NO_STORED_EVALUATION  # noqa: E402

from .conftest import LABEL_TEMPERATURES, LABELS, PICTURE_PRESENT, free_port, picture_bytes  # noqa: E402
from .test_browser import wait_until  # noqa: E402


@pytest.fixture(scope="module")
def multilabel_server(multilabel_checkpoint: Path) -> Iterator[str]:
    """The multi-label checkpoint served by uvicorn on a thread of this process."""
    port = free_port()
    app = create_app(multilabel_checkpoint, backend="eager", device="cpu")
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while not (server.started and httpx.get(f"{url}/readyz", timeout=2).status_code == 200):
        assert thread.is_alive() and time.monotonic() < deadline, "the multi-label server did not start"
        time.sleep(0.05)
    yield url
    server.should_exit = True
    thread.join(timeout=30)


def test_page_shows_decided_labels_as_chips_and_each_labels_bar_with_its_threshold(
    multilabel_server: str, tmp_path: Path
) -> None:
    picture = tmp_path / "胸片.png"
    picture.write_bytes(picture_bytes())
    upload = [("file", (picture.name, picture.read_bytes(), "image/png"))]
    expected = httpx.post(f"{multilabel_server}/v1/predict", files=upload).json()["predictions"][0]
    assert sorted(expected["labels"]) == sorted(n for n, p in zip(LABELS, PICTURE_PRESENT, strict=True) if p)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 800}, accept_downloads=True)
        requests: list[str] = []
        page.on("request", lambda r: requests.append(r.url))
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))

        page.goto(multilabel_server + "/")
        wait_until(page, "() => document.querySelector('#status').textContent.includes('ready')")
        assert page.locator("#status").inner_text().endswith(f"{len(LABELS)} labels · ready")
        page.click("#card summary")  # the card: no evaluation stored, each label's threshold
        assert page.locator("#card-figures .note").inner_text().endswith(NO_STORED_EVALUATION)
        fields = page.locator("#card-fields").inner_text()
        for score, t in zip(expected["scores"], LABEL_TEMPERATURES, strict=True):  # each threshold and temperature
            assert f"{score['label']} (≥ {score['threshold']:.3f}" + (f", temperature {t:.3f})" if t else ")") in fields
        page.set_input_files("#file-input", [str(picture)])
        page.wait_for_selector(".result .chips", timeout=30_000)
        wait_until(page, "() => [...document.querySelectorAll('.result .heatmap')].some(i => i.naturalWidth > 0)")

        assert page.locator(".result .chip").all_inner_texts() == expected["labels"]
        bars = page.locator(".result .label-bars li")
        assert bars.count() == len(LABELS)
        for i, score in enumerate(expected["scores"]):
            bar = bars.nth(i)
            assert bar.get_attribute("data-label") == score["label"] == bar.locator(".label").inner_text()
            assert bar.get_attribute("data-present") == str(score["present"]).lower()
            assert bar.locator(".prob").inner_text() == f"{score['probability'] * 100:.2f}%"
            track, tick = bar.locator(".track").bounding_box(), bar.locator(".threshold").bounding_box()
            assert tick is not None and track is not None and tick["height"] >= track["height"]
            at = (tick["x"] + tick["width"] / 2 - track["x"]) / track["width"]  # the tick's centre on the track
            assert at == pytest.approx(score["threshold"], abs=0.01)
            fill = bar.locator(".fill").bounding_box()
            assert fill is not None and fill["width"] / track["width"] == pytest.approx(score["probability"], abs=0.01)

        select = page.locator(".result select.target")
        assert select.locator("option").evaluate_all("os => os.map(o => o.value)") == LABELS
        assert page.locator(".result").get_attribute("data-target") == expected["labels"][0]
        other = next(s["label"] for s in expected["scores"] if not s["present"])
        select.select_option(other)  # the Grad-CAM control: an absent label's heat-map
        wait_until(page, f"() => document.querySelector('.result').dataset.target === {other!r}")
        assert other in page.locator(".result .caption").inner_text()

        with page.expect_download() as download:
            page.click("#download-csv")
        rows = list(csv.reader(io.StringIO(Path(download.value.path()).read_text(encoding="utf-8"))))
        api_csv = httpx.post(f"{multilabel_server}/v1/predict", files=upload, headers={"accept": "text/csv"}).text
        assert rows == list(csv.reader(io.StringIO(api_csv)))  # the page's CSV is predict's, header and row

        assert [u for u in requests if not u.startswith((multilabel_server + "/", "data:", "blob:"))] == []
        assert errors == []
        browser.close()
