"""The web page in a real headless Chromium (Debian's ``chromium`` + ``chromium-driver``, driven by
selenium; nothing is downloaded): upload an image, see top-k with and without the enhancer and the enhanced
image; corrupt an image in the "try a corruption" panel and see clean, corrupted and enhanced images with
both top-k and the enhancer's heaviest operations; an error is shown, not swallowed; robustness reports are
listed and open as HTML."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from dyntta.contract import CORRUPTIONS, OP_WEIGHTS
from tests.serve.conftest import CLASSES, SIZE, LiveGateway
from tests.serve.helpers import fmnist_raw, png_bytes
from tests.serve.test_gateway import wait_job

CHROMIUM = Path(os.environ.get("DYNTTA_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER = Path(os.environ.get("DYNTTA_CHROMEDRIVER", "/usr/bin/chromedriver"))

pytestmark = pytest.mark.skipif(
    not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()),
    reason=f"needs Debian's chromium and chromedriver ({CHROMIUM}, {CHROMEDRIVER}): "
    "apt-get install -y chromium chromium-driver (CI installs them)",
)


@pytest.fixture(scope="module")
def browser() -> Iterator:
    from selenium import webdriver
    from selenium.webdriver.chrome.options import Options
    from selenium.webdriver.chrome.service import Service

    os.environ.setdefault("SE_OFFLINE", "true")  # selenium manager must not fetch drivers or browsers
    options = Options()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-background-networking",
        "--disable-dev-shm-usage",
        "--disable-extensions",
        "--disable-sync",
        "--no-first-run",
        "--disable-default-apps",
        "--window-size=1280,1000",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(60)
    yield driver
    driver.quit()


def wait(driver, condition, timeout: float = 60.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(condition)


def test_upload_shows_both_predictions_and_the_enhanced_image(browser, gateway: LiveGateway, tmp_path: Path):
    from selenium.webdriver.common.by import By

    raw, _ = fmnist_raw("test", 1)
    image = tmp_path / "shoe.png"
    image.write_bytes(png_bytes(raw[0]))
    browser.get(gateway.url + "/")
    wait(browser, lambda d: "ready" in d.find_element(By.ID, "ready").text)
    browser.find_element(By.ID, "file").send_keys(str(image))
    browser.find_element(By.ID, "top-k").clear()
    browser.find_element(By.ID, "top-k").send_keys("3")
    browser.find_element(By.ID, "classify-btn").click()
    wait(browser, lambda d: d.find_element(By.ID, "status").get_attribute("data-done") == "1")
    for table in ("plain-results", "enhanced-results"):
        rows = browser.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr")
        assert len(rows) == 3
        assert all(row.find_element(By.TAG_NAME, "td").text in CLASSES for row in rows)
    assert "recognizer" in browser.find_element(By.ID, "plain-model").text
    assert "dyntta" in browser.find_element(By.ID, "enhanced-model").text
    width = wait(
        browser,
        lambda d: d.execute_script(
            "const i = document.getElementById('enhanced-image'); return i.complete && i.naturalWidth;"
        ),
    )
    assert width == SIZE

    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    browser.find_element(By.ID, "file").send_keys(str(text))
    browser.find_element(By.ID, "classify-btn").click()
    wait(browser, lambda d: "415" in d.find_element(By.ID, "status").text)
    assert browser.find_element(By.ID, "status").get_attribute("class") == "error"


def test_reports_are_listed_and_open(browser, gateway: LiveGateway):
    from selenium.webdriver.common.by import By

    with gateway.client() as client:
        job = wait_job(
            client,
            client.post(
                "/v1/robustness", data={"corruptions": "brightness", "severities": "1,2", "num_images": "20"}
            ).json()["id"],
        )
    assert job["status"] == "done", job
    browser.get(gateway.url + "/")
    link = wait(
        browser, lambda d: d.find_element(By.CSS_SELECTOR, f'#jobs-table tr[data-job-id="{job["id"]}"] a.report-link')
    )
    link.click()
    wait(browser, lambda d: d.find_elements(By.CSS_SELECTOR, "table.heatmap"))
    assert job["id"] in browser.find_element(By.TAG_NAME, "h1").text
    assert "brightness" in browser.page_source


def test_try_a_corruption_shows_three_images_both_predictions_and_the_ops(
    browser, gateway: LiveGateway, tmp_path: Path
):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.select import Select

    raw, _ = fmnist_raw("test", 2)
    image = tmp_path / "trouser.png"
    image.write_bytes(png_bytes(raw[1]))
    browser.get(gateway.url + "/")
    # the choices come from the gateway: every corruption of the contract, grouped
    wait(browser, lambda d: len(d.find_elements(By.CSS_SELECTOR, "#pg-corruption optgroup option")) == len(CORRUPTIONS))
    browser.find_element(By.ID, "pg-file").send_keys(str(image))
    Select(browser.find_element(By.ID, "pg-corruption")).select_by_value("gaussian_noise")
    Select(browser.find_element(By.ID, "pg-severity")).select_by_value("5")
    browser.find_element(By.ID, "pg-top-k").clear()
    browser.find_element(By.ID, "pg-top-k").send_keys("3")
    browser.find_element(By.ID, "pg-btn").click()
    wait(browser, lambda d: d.find_element(By.ID, "pg-status").get_attribute("data-done") == "1")
    for img in ("pg-clean", "pg-corrupted", "pg-enhanced"):
        width = wait(
            browser,
            lambda d, i=img: d.execute_script(
                f"const i = document.getElementById('{i}'); return i.complete && i.naturalWidth;"
            ),
        )
        assert width == SIZE, img
    assert "severity 5" in browser.find_element(By.ID, "pg-corrupted-caption").text
    for table in ("pg-plain-results", "pg-enhanced-results"):
        rows = browser.find_elements(By.CSS_SELECTOR, f"#{table} tbody tr")
        assert len(rows) == 3
        assert all(row.find_element(By.TAG_NAME, "td").text in CLASSES for row in rows)
    ops = browser.find_elements(By.CSS_SELECTOR, "#pg-ops tbody tr")
    assert ops or OP_WEIGHTS in browser.find_element(By.ID, "pg-ops-note").text  # weights, or why there are none

    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    browser.find_element(By.ID, "pg-file").send_keys(str(text))
    browser.find_element(By.ID, "pg-btn").click()
    wait(browser, lambda d: "415" in d.find_element(By.ID, "pg-status").text)
    assert browser.find_element(By.ID, "pg-status").get_attribute("class") == "error"
