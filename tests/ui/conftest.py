"""Browser tests' shared settings: how long an `expect` waits for the page, and what a failed test's report shows."""

from __future__ import annotations

from pathlib import Path

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


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    """A failed browser test's report says what the page showed: its toasts' text, its last script errors and
    console errors, and a screenshot under tests/artifacts/failed-<test>.png (CI prints only the report)."""
    report = yield
    page = getattr(item, "funcargs", {}).get("page")
    if report.when == "call" and report.failed and page is not None:
        try:
            toasts = page.locator(".toast-body").all_inner_texts()
            shot = Path(__file__).resolve().parents[1] / "artifacts" / f"failed-{item.name}.png"
            shot.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(shot))
            errors = [str(error) for error in page.page_errors()][-5:]
            console = [f"{m.text} ({m.location.get('url', '')})" for m in page.console_messages()
                       if m.type == "error"][-10:]
            report.sections.append(("page at failure", f"toasts: {toasts!r}\nscript errors: {errors!r}\n"
                                                       f"console errors: {console!r}\nscreenshot: {shot}"))
        except Exception as error:  # the page itself is gone: the report keeps the test's own failure
            report.sections.append(("page at failure", f"could not be read: {error!r}"))
    return report
