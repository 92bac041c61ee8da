"""Headless Chromium for tests and screenshots: Debian's `chromium` package, driven by Playwright (never a browser
downloaded by Playwright: `apt-get install chromium` is all it needs)."""

from playwright.sync_api import Browser, Playwright

from syspackages import CHROMIUM

ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-quic",
    "--no-first-run",
]


def launch(playwright: Playwright) -> Browser:
    return playwright.chromium.launch(executable_path=CHROMIUM, args=ARGS)
