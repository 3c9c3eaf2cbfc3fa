"""A real headless browser for the page tests: Debian's chromium + chromium-driver via selenium.

The browser runs with the network cut: every host name but 127.0.0.1/localhost resolves to
nothing (``--host-resolver-rules``), so a page that reaches outside fails visibly, and every
request the page makes is read back from the DevTools performance log, so a test can assert
that none left 127.0.0.1. The drivers are the system's (no selenium-manager download).
Without chromium the tests skip locally and fail in CI (``.ci/run`` installs it).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import pytest

LOCAL_HOSTS = {"127.0.0.1", "localhost"}


def _find(*names: str) -> str | None:
    for n in names:
        found = shutil.which(n)
        if found:
            return found
    return None


def browser_paths() -> tuple[str, str]:
    """(chromium, chromedriver), or skip (fail under CI) when either is missing."""
    chromium = _find("chromium", "chromium-browser", "google-chrome")
    driver = _find("chromedriver", "chromium-driver")
    if chromium is None or driver is None:
        msg = "no headless browser: apt-get install chromium chromium-driver (and pip selenium)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return chromium, driver


@contextmanager
def headless_chromium(width: int = 1280, height: int = 1800) -> Iterator[object]:
    """A selenium Chrome driver on the system chromium, network limited to loopback."""
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service

    chromium, driver_path = browser_paths()
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for arg in (
        "--headless=new",
        "--no-sandbox",  # CI runs as root
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
        "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1, EXCLUDE localhost",
        "--disable-background-networking",
        "--disable-component-update",
        "--no-first-run",
        "--lang=en-US",
    ):
        opts.add_argument(arg)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=driver_path), options=opts)
    try:
        driver.set_page_load_timeout(60)
        yield driver
    finally:
        driver.quit()


def console_errors(driver) -> list[dict]:
    return [e for e in driver.get_log("browser") if e.get("level") == "SEVERE"]


def requested_urls(driver) -> list[str]:
    """Every URL the page asked for since the last call (DevTools Network events)."""
    urls = []
    for entry in driver.get_log("performance"):
        msg = json.loads(entry["message"])["message"]
        if msg.get("method") == "Network.requestWillBeSent":
            urls.append(msg["params"]["request"]["url"])
    return urls


def external(urls: list[str]) -> list[str]:
    """The URLs that would leave this machine (data: and file: stay local)."""
    out = []
    for u in urls:
        parts = urlsplit(u)
        if parts.scheme in ("data", "file", "about", "blob"):
            continue
        if parts.hostname not in LOCAL_HOSTS:
            out.append(u)
    return out


def save_artifact(driver, tmp_path: Path, name: str) -> Path:
    """A screenshot under the test's tmp dir, copied to $MSMTREC_ARTIFACTS when set."""
    path = tmp_path / name
    driver.save_screenshot(str(path))
    target = os.environ.get("MSMTREC_ARTIFACTS")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, Path(target) / name)
    return path
