"""The browser: a headless Chromium (Debian's, never a downloaded one) per test module.

Not one per session: Playwright's sync API keeps an event loop running in the test's thread
while the browser is up, and the other modules' tests run their own event loops there."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.browser.support import ARGS, CHROMIUM


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
