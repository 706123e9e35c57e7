"""The browser: one headless Chromium (Debian's, never a downloaded one) for the session."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.browser.support import ARGS, CHROMIUM


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            yield chromium
        finally:
            chromium.close()
