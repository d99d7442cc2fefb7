"""Browser tests' shared setting: how long an `expect` waits for the page."""

from __future__ import annotations

import pytest

# Playwright's `expect` waits 5 s by default. On a loaded 2-core CI machine (the server, Chromium and pytest share
# the cores) an answer the page is waiting for can take longer, and a check failed for that alone. A check that
# holds returns as soon as it holds, so only a failing one waits the whole time.
EXPECT_TIMEOUT_MS = 15_000


@pytest.fixture(scope="session", autouse=True)
def patient_expect() -> None:
    try:
        from playwright.sync_api import expect
    except ImportError:  # no Playwright: the browser tests skip themselves
        return
    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
