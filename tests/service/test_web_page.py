"""The service's web page in headless Chromium (Debian's, driven by Playwright): a job file
submitted through the form appears in the list, and its summary is shown; the screenshot is
kept under ``test-artifacts/`` (or ``$DASKMM_TEST_ARTIFACTS``)."""

from __future__ import annotations

import shutil

import pytest
import yaml

from tests.artifacts import ARTIFACTS
from tests.service.conftest import SLEEP_JOB, TOKENS

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.fail("Chromium is not installed: apt-get install -y chromium (.ci/run does)")
    from playwright.sync_api import sync_playwright
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-gpu"])
        yield b
        b.close()


def test_a_job_submitted_through_the_form_appears_and_shows_its_summary(server, browser):
    page = browser.new_page()
    page.goto(server.url + "/")
    page.wait_for_selector("#msg:has-text('enter a token')", timeout=30_000)
    page.fill("#token", TOKENS["alice"])
    page.click("#save")
    # the prompt goes once the token has loaded the jobs
    page.wait_for_selector("#msg:has-text('token accepted')", timeout=30_000)
    page.fill("#body", yaml.safe_dump(dict(SLEEP_JOB, name="from-the-page", plots=True)))
    page.click("#go")
    page.wait_for_selector("#msg:has-text('submitted')", timeout=30_000)
    job_id = page.inner_text("#msg").split()[-1]
    row = page.locator(f"tr.job[data-id='{job_id}']")
    row.wait_for(timeout=30_000)
    page.wait_for_selector(f"tr.job[data-id='{job_id}'] td.succeeded", timeout=240_000)
    row.click()
    page.wait_for_selector("#summary", timeout=30_000)
    text = page.inner_text("#summary")
    assert "Linear mixed model fit by REML" in text and "Days" in text
    # the job asked for plots: the page shows them under its summary
    page.wait_for_selector("#detail img", timeout=30_000)
    # the page adds the images as their list arrives: wait for three, all loaded
    page.wait_for_function("() => { const im = [...document.querySelectorAll('#detail img')];"
                           " return im.length >= 3 && im.every((i) => i.complete"
                           " && i.naturalWidth > 100); }", timeout=30_000)
    assert page.locator("#detail img").count() >= 3
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    shot = ARTIFACTS / "service_page.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    # a refused body is said on the page, with the field
    page.fill("#body", "data: sleepstudy.csv\nformula: y ~ x + (1 | g)\nfamly: poisson\n")
    page.click("#go")
    page.wait_for_selector("#msg:has-text('refused')", timeout=30_000)
    assert "unknown field 'famly'" in page.inner_text("#msg")
    page.close()


def test_a_wrong_token_is_said_on_the_page(server, browser):
    page = browser.new_page()
    page.goto(server.url + "/")
    page.fill("#token", "wrong-token-0123456789")
    page.click("#save")
    page.wait_for_selector("#msg:has-text('token refused (401)')", timeout=30_000)
    page.close()
