"""The report of a small audited run, opened from disk in headless Chromium (Selenium).

Drives the system's ``chromium`` and ``chromedriver`` (Debian packages); nothing is
downloaded. Without them the module is skipped, unless ``FEDSPEECH_REQUIRE_BROWSER=1`` (set
by ``.ci/run``, which installs them), where their absence is a failure.
"""

from __future__ import annotations

import csv
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import soundfile as sf

from tests.helpers import simulate

pytestmark = [pytest.mark.slow, pytest.mark.browser]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver")
REQUIRED = os.environ.get("FEDSPEECH_REQUIRE_BROWSER") == "1"

SIMULATE = [
    *("--synth-speakers", "12", "--synth-takes", "1", "--clients", "3", "--fraction", "1"),
    *("--share", "gradient", "--batch-size", "1", "--rounds", "2", "--capture-clients", "2"),
    *("--audit", "--audit-iterations", "60", "--audit-threads", "1"),
]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory, tiny_cache: Path) -> Path:
    """A 2-round run audited after each round: 4 samples, and its report (written by
    ``simulate --audit`` itself)."""
    out = tmp_path_factory.mktemp("report") / "run"
    simulate(out, *SIMULATE, env={"FEDSPEECH_CACHE": str(tiny_cache)})
    assert (out / "report" / "index.html").is_file()
    return out


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if CHROMIUM is None or DRIVER is None:
        message = (
            "needs Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
        )
        if REQUIRED:
            pytest.fail(message + "; FEDSPEECH_REQUIRE_BROWSER=1 is set")
        pytest.skip(message)
    # Selenium Manager must not look for a browser or driver on the network.
    os.environ["SE_OFFLINE"] = "true"
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"):
        options.add_argument(arg)
    options.add_argument("--window-size=1280,1000")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(executable_path=DRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def _wait(driver: Any, script: str, timeout: float = 20.0) -> Any:
    """Poll ``script`` (a JS expression) until it is truthy; return its value."""
    end = time.monotonic() + timeout
    while True:
        value = driver.execute_script(f"return {script};")
        if value or time.monotonic() > end:
            return value
        time.sleep(0.1)


def _stoi_order(run_dir: Path, best_first: bool) -> list[str]:
    with open(run_dir / "audit" / "leakage.csv", newline="") as fh:
        rows = [r for r in csv.DictReader(fh) if r["capture"]]
    keyed = [
        (float(r["stoi"]), i, f"sample-{r['capture']}_{r['index']}") for i, r in enumerate(rows)
    ]
    keyed.sort(key=lambda k: ((-k[0] if best_first else k[0]), k[1]))
    return [name for _, _, name in keyed]


def test_the_report_plays_shows_and_sorts_in_a_real_browser(run_dir: Path, browser: Any) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    page = run_dir / "report" / "index.html"
    browser.get(page.resolve().as_uri())
    assert _wait(browser, "document.readyState === 'complete'")

    # Every <audio> loads its WAV and reports its length (within 1 %).
    audio = browser.find_elements(By.TAG_NAME, "audio")
    assert len(audio) == 12  # 4 samples x (original, from features, from gradients)
    assert _wait(
        browser,
        "Array.from(document.querySelectorAll('audio')).every(a => a.readyState >= 1 || a.error)",
    )
    states = browser.execute_script(
        "return Array.from(document.querySelectorAll('audio'))"
        ".map(a => [a.getAttribute('src'), a.duration, a.error ? a.error.code : null]);"
    )
    for src, duration, error in states:
        assert error is None, (src, error)
        info = sf.info(str((page.parent / src).resolve()))
        assert (
            abs(duration - info.frames / info.samplerate) <= 0.01 * info.frames / info.samplerate
        ), src

    # Every image loads (spectrograms load lazily: scrolled to, as a reader would); every
    # image and audio player is labelled.
    browser.execute_script("Array.from(document.images).forEach(i => i.scrollIntoView());")
    assert _wait(
        browser, "Array.from(document.images).every(i => i.complete && i.naturalWidth > 0)"
    )
    browser.execute_script("window.scrollTo(0, 0);")
    images = browser.execute_script(
        "return Array.from(document.images).map(i => [i.getAttribute('src'), i.complete, "
        "i.naturalWidth, i.getAttribute('alt')]);"
    )
    assert len(images) >= 5  # utility, leakage per round, summary, 4 spectrograms
    for src, complete, width, alt in images:
        assert complete and width > 0, src
        assert alt, src
    unlabelled = browser.execute_script(
        "return Array.from(document.querySelectorAll('audio')).filter(a => "
        "!document.getElementById(a.getAttribute('aria-labelledby'))).length;"
    )
    assert unlabelled == 0

    # Sorting by STOI reorders the cards, best first, then worst first.
    def order() -> list[str]:
        return [
            c.get_attribute("id") for c in browser.find_elements(By.CSS_SELECTOR, "#cards > li")
        ]

    audit_order = order()
    Select(browser.find_element(By.ID, "sort-key")).select_by_value("stoi")
    best = order()
    assert best == _stoi_order(run_dir, best_first=True)
    browser.find_element(By.ID, "sort-dir").click()
    worst = order()
    assert worst == _stoi_order(run_dir, best_first=False)
    assert best != worst and sorted(best) == sorted(audit_order)

    # No console errors; a screenshot that is not blank.
    errors = [e for e in browser.get_log("browser") if e.get("level") == "SEVERE"]
    assert errors == []
    browser.execute_script("window.scrollTo(0, 0);")
    shot = run_dir / "report" / "screenshot.png"
    assert browser.save_screenshot(str(shot))
    import matplotlib.image

    pixels = matplotlib.image.imread(str(shot))
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert float(pixels[..., :3].std()) > 0.05  # not one flat colour

    # A phone-width window: nothing wider than the screen but the tables' own scrollers.
    browser.set_window_size(390, 844)
    widths = browser.execute_script(
        "return [document.documentElement.scrollWidth, document.documentElement.clientWidth];"
    )
    assert widths[0] <= widths[1] + 1, widths
    browser.set_window_size(1280, 1000)
