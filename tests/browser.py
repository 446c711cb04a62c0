"""Open a page in a real headless Chromium (Debian's chromium + chromium-driver, driven by Selenium) and
read back what a person would see: whether every image decoded, what the console said, which text is
visible, and a screenshot. Used by tests/test_study_page.py and docs/screenshot.py."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

CHROMIUM = os.environ.get("ACCUMBENCH_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("ACCUMBENCH_CHROMEDRIVER", "/usr/bin/chromedriver")
# As root, in a sandbox with no network: no sandboxing, no GPU, and none of Chromium's background
# connections (refused here, many at a time, and noise in the console).
FLAGS = ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-extensions", "--disable-default-apps")


def available() -> bool:
    """Chromium, its driver and Selenium are all installed."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return False
    return all(Path(p).is_file() or shutil.which(p) for p in (CHROMIUM, CHROMEDRIVER))


@dataclass
class PageView:
    images: list[dict]  # per <img>: src prefix, alt, complete, naturalWidth, naturalHeight
    console: list[dict]  # the browser's console entries (level, message)
    visible_text: str  # document.body.innerText: what is rendered, not what is hidden in <details>
    title: str
    screenshot: bytes = field(repr=False)
    answer_bottom: float = 0.0  # where the first '.answer' ends, in CSS pixels from the top (0: none)
    viewport_height: float = 0.0  # window.innerHeight: what shows without scrolling

    @property
    def errors(self) -> list[dict]:
        return [entry for entry in self.console if entry["level"] == "SEVERE"]


def view(path: Path, width: int = 1280, height: int = 2400) -> PageView:
    """Load the file in Chromium, wait for it to finish loading, and read it back."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--window-size={width},{height}")
    profile = tempfile.mkdtemp(prefix="accumbench-chromium-")
    options.add_argument(f"--user-data-dir={profile}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    try:
        driver.set_page_load_timeout(60)
        driver.get(Path(path).resolve().as_uri())
        WebDriverWait(driver, 60).until(lambda d: d.execute_script("return document.readyState") == "complete")
        images = driver.execute_script(
            "return Array.from(document.images).map(i => ({src: i.src.slice(0, 30), alt: i.alt, complete: i.complete, "
            "naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight}))")
        answer = driver.execute_script(
            "const a = document.querySelector('.answer'); return a ? a.getBoundingClientRect().bottom : 0")
        return PageView(images=images, console=driver.get_log("browser"),
                        visible_text=driver.execute_script("return document.body.innerText"), title=driver.title,
                        screenshot=driver.get_screenshot_as_png(), answer_bottom=answer,
                        viewport_height=driver.execute_script("return window.innerHeight"))
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)
