"""The page in a real browser: headless Chromium (the distribution's, driven by Playwright) against a live server.

Runs in CI always (``.ci/run`` installs Chromium); elsewhere it is skipped only when Chromium is missing.
``SEDENSENET_SCREENSHOT=path.png`` keeps the screenshot (``docs/images/serve.png`` is made that way).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import time
from pathlib import Path

import httpx
import pytest

CHROMIUM = os.environ.get("SEDENSENET_CHROMIUM", "/usr/bin/chromium")
if not os.environ.get("CI") and not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM} (CI installs it; apt-get install chromium)", allow_module_level=True)

from playwright.sync_api import sync_playwright  # noqa: E402

from .conftest import DATA_NAME, TRAIN_CLASSES  # noqa: E402


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield b
        b.close()


def wait_until(page, predicate: str, seconds: float = 60) -> None:
    """Poll ``predicate`` with ``page.evaluate`` (the page's CSP forbids the eval that wait_for_function uses)."""
    deadline = time.monotonic() + seconds
    while not page.evaluate(predicate):
        assert time.monotonic() < deadline, f"timed out waiting for {predicate}"
        time.sleep(0.1)


def test_page_classifies_explains_refuses_and_stays_on_its_origin(
    browser, live_server: str, image_dir: Path, tmp_path: Path
) -> None:
    good = image_dir / "猫 1.png"
    bad = tmp_path / "notes.png"
    bad.write_text("not an image at all\n", encoding="utf-8")
    context = browser.new_context(viewport={"width": 1280, "height": 860}, accept_downloads=True)
    page = context.new_page()
    requests: list[str] = []
    page.on("request", lambda r: requests.append(r.url))
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))

    page.goto(live_server + "/")
    wait_until(page, "() => document.querySelector('#status').textContent.includes('ready')")
    page.set_input_files("#file-input", [str(good), str(bad)])
    page.wait_for_selector(".result[data-label]", timeout=30_000)
    page.wait_for_selector(".result.refused .error", timeout=30_000)
    wait_until(page, "() => [...document.querySelectorAll('.result .heatmap')].some(i => i.naturalWidth > 0)")

    expected = httpx.post(
        f"{live_server}/v1/predict?top_k=5", files=[("file", (good.name, good.read_bytes(), "image/png"))]
    ).json()["predictions"][0]
    shown = page.locator(".result[data-label]")
    assert shown.locator(".name").inner_text() == good.name
    assert shown.get_attribute("data-label") == expected["label"]
    assert float(shown.get_attribute("data-probability")) == expected["probability"]
    first = shown.locator(".topk li").first
    assert first.locator(".label").inner_text() == expected["label"]
    assert first.locator(".prob").inner_text() == f"{expected['probability'] * 100:.2f}%"
    assert shown.locator(".heatmap").evaluate("img => img.naturalWidth") > 0
    assert shown.locator(".se").is_visible()  # an SE model shows its channel weights

    refusal = page.locator(".result.refused .error").inner_text()
    assert "notes.png" in refusal and "not an image" in refusal

    with page.expect_download() as download:
        page.click("#download-csv")
    rows = list(csv.reader(io.StringIO(Path(download.value.path()).read_text(encoding="utf-8"))))
    api_csv = httpx.post(
        f"{live_server}/v1/predict?top_k=5",
        files=[("file", (good.name, good.read_bytes(), "image/png"))],
        headers={"accept": "text/csv"},
    ).text
    api_rows = list(csv.reader(io.StringIO(api_csv)))
    assert rows[0] == api_rows[0] == ["path", "label", "probability", "top_k", "error"]
    assert api_rows[1] in rows[1:]
    assert ["notes.png", "", "", "", "not an image (cannot identify image file)"] in rows[1:]

    screenshot = tmp_path / "serve.png"
    page.screenshot(path=str(screenshot))
    assert screenshot.stat().st_size > 0
    if os.environ.get("SEDENSENET_SCREENSHOT"):
        shutil.copyfile(screenshot, os.environ["SEDENSENET_SCREENSHOT"])

    page.set_viewport_size({"width": 390, "height": 844})  # a phone: nothing wider than the screen
    assert page.evaluate("document.documentElement.scrollWidth") <= 390

    off_origin = [u for u in requests if not u.startswith((live_server + "/", "data:", "blob:"))]
    assert off_origin == []
    assert errors == []
    context.close()


def test_card_shows_the_test_figures_with_label_and_interval_and_no_path(
    browser, live_server: str, evaluated_run: Path, copied_checkpoint: Path
) -> None:
    """The server runs a copy of the checkpoint alone (``live_server``), so the figures come from the file."""
    test = json.loads((evaluated_run / "test" / "metrics.json").read_text(encoding="utf-8"))
    page = browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(live_server + "/")
    wait_until(page, "() => document.querySelector('#status').textContent.includes('ready')")
    page.click("#card summary")
    shown = page.locator(".split[data-split=test]")
    assert shown.locator(".split-label").inner_text().startswith(test["label"] + " · 12 images")
    assert page.locator(".split").first.get_attribute("data-split") == "test"  # test first, validation after
    for metric, value, ci in (
        ("accuracy", test["accuracy"], test["intervals"]["accuracy"]),
        ("sensitivity", test["binary"]["sensitivity"], test["intervals"]["recall"][TRAIN_CLASSES[0]]),
        ("specificity", test["binary"]["specificity"], test["intervals"]["recall"][TRAIN_CLASSES[1]]),
    ):
        row = shown.locator(f"tr[data-metric={metric}]")
        assert float(row.locator(".value").inner_text()) == pytest.approx(value, abs=5e-4)
        bounds = re.fullmatch(r"\[(\S+), (\S+)\]", row.locator(".interval").inner_text())
        assert bounds is not None and [float(b) for b in bounds.groups()] == pytest.approx(ci, abs=5e-4)
    low, high = test["intervals"]["accuracy"]
    assert low < test["accuracy"] < high  # an interval, not a point
    assert TRAIN_CLASSES[0] in shown.locator("tr[data-metric=sensitivity] th").inner_text()
    headline = page.locator("#headline").inner_text()
    assert headline.startswith(f"accuracy {test['accuracy']:.3f} [") and headline.endswith(test["label"])
    decision = page.locator("#card dd.decision").inner_text()
    assert f"{TRAIN_CLASSES[0]} when its probability ≥ {test['threshold']:.3f}" in decision and "youden" in decision
    calibration = page.locator("#card dd.calibration").inner_text()
    assert calibration.startswith(f"temperature {test['calibration']['temperature']:.3f} (fitted on validation)")
    assert f"{DATA_NAME} (32 training, 12 validation, 12 test images)" in page.locator("#card-fields").inner_text()

    text = page.evaluate("document.documentElement.outerHTML") + page.locator("body").inner_text()
    for path in (evaluated_run.parent.parent, evaluated_run, copied_checkpoint.parent, Path.cwd()):
        assert str(path) not in text
    card_text = page.locator("#card").inner_text() + page.locator("header").inner_text()
    assert "/" not in card_text and "\\" not in card_text  # no path of any form on the card
    assert errors == []
    page.close()
