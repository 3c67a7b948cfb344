"""Test helper: open an HTML report in real headless Chromium (Debian chromium + chromium-driver, via Selenium)
and return what a reviewer's browser saw: console errors, every network request, a screenshot."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

CHROMIUM, CHROMEDRIVER = "/usr/bin/chromium", "/usr/bin/chromedriver"
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--window-size=1280,2400")


@dataclass
class PageVisit:
    console_errors: list[str]
    requests: list[str]
    title: str
    screenshot: Path


def require_browser() -> None:
    """Skip without Chromium, unless AMDET_AUDIT_REQUIRE_BROWSER is set (CI sets it: there it must run)."""
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not Path(p).exists()]
    if missing and not os.environ.get("AMDET_AUDIT_REQUIRE_BROWSER"):
        pytest.skip(f"headless browser test needs {', '.join(missing)} (Debian: apt install chromium chromium-driver)")
    assert not missing, f"AMDET_AUDIT_REQUIRE_BROWSER is set but {missing} are not installed"


def visit(page: Path, screenshot: Path, profile: Path) -> PageVisit:
    """Load ``page`` (a local file) in headless Chromium and record the visit."""
    from selenium import webdriver

    require_browser()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (*FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(executable_path=CHROMEDRIVER))
    try:
        uri = page.resolve().as_uri()
        driver.get(uri)
        title = driver.title
        driver.save_screenshot(str(screenshot))
        console = [e["message"] for e in driver.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        requests = []
        for entry in driver.get_log("performance"):
            message = json.loads(entry["message"])["message"]
            params = message.get("params", {})
            if message["method"] == "Network.requestWillBeSent" and params.get("documentURL") == uri:
                requests.append(params["request"]["url"])  # what the page itself loads (not the blank tab)
    finally:
        driver.quit()
    keep = os.environ.get("AMDET_AUDIT_SCREENSHOT_DIR")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(screenshot, Path(keep) / screenshot.name)
    return PageVisit(console_errors=console, requests=requests, title=title, screenshot=screenshot)
