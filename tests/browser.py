"""The browser harness: a live server on 127.0.0.1, Debian's headless Chromium driven by Playwright,
and one check for any page (axe-core, Content-Security-Policy, sideways scrolling, target sizes).

Loaded by conftest.py as a plugin, so any test module (the console's pages too) can take the
``live_server``, ``browser`` and ``audit`` fixtures. Tests marked ``browser`` run only when
PORTAL_TEST_BROWSER names the Chromium to use (`.ci/run` sets it); otherwise they are deselected.
"""

from __future__ import annotations

import os
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import make_server

from portal.extensions import db

BROWSER = os.environ.get("PORTAL_TEST_BROWSER", "")
SCREENSHOTS = Path(__file__).resolve().parent.parent / "build" / "screenshots"
MIN_TARGET_PX = 44
# Controls that must be at least 44 x 44 CSS pixels. Links inside running text are exempt (WCAG 2.5.8).
# Radio buttons are reached through their labels (.choice label), which are measured instead.
TARGETS = (
    "button, input:not([type=hidden]):not([type=radio]), select, .button, .languages a, .error-summary a, .site-footer a,"
    " .brand, .staff-brand, .staff-nav a, .action-link, .choice label"
)
CHROMIUM_ARGS = [
    "--no-sandbox",  # CI runs as root
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
_MEASURE = """targets => {
  const out = {scroll: document.documentElement.scrollWidth - window.innerWidth, small: []};
  for (const el of document.querySelectorAll(targets)) {
    const box = el.getBoundingClientRect();
    const style = getComputedStyle(el);
    if (!box.width || style.visibility === "hidden" || box.right < 0) continue;  // skip-link parked off screen
    if (box.width < 44 || box.height < 44) out.small.push(`${el.outerHTML.slice(0, 80)}: ${box.width}x${box.height}`);
  }
  return out;
}"""


def served(app: Flask) -> Iterator[LiveServer]:
    """A module fixture's server: ``app`` served while the tests run, its connections closed after."""
    with LiveServer(app) as live:
        yield live
    with app.app_context():
        db.engine.dispose()


class LiveServer:
    """The app served by werkzeug on a free 127.0.0.1 port, in a thread of the test process.

    The test keeps the app itself, so it can reach the database behind the pages (to expire a
    session, say) the way the console engineer's tests reach theirs.
    """

    def __init__(self, app: Flask) -> None:
        self.app = app
        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> LiveServer:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._server.shutdown()
        self._thread.join(timeout=10)


@dataclass
class PageAudit:
    """Checks pages as a visitor's browser sees them, and keeps a screenshot of those asked for."""

    axe: Any
    problems: list[str] = field(default_factory=list)

    def watch(self, page: Any) -> Any:
        """Record what the browser refuses or fails to load on ``page`` from now on."""

        def on_console(message: Any) -> None:
            if "Content Security Policy" in message.text or "Content-Security-Policy" in message.text:
                self.problems.append(f"CSP: {message.text}")

        def on_response(response: Any) -> None:
            if response.request.resource_type != "document" and response.status >= 400:
                self.problems.append(f"{response.status} for {response.url}")

        page.on("console", on_console)
        page.on("response", on_response)
        page.on("requestfailed", lambda request: self.problems.append(f"failed: {request.url}"))
        return page

    def check(self, page: Any, name: str | None = None) -> None:
        """Zero axe violations, nothing refused by the CSP, no sideways scroll, big enough targets."""
        page.wait_for_load_state("load")
        results = self.axe.run(page)
        assert results.violations_count == 0, f"{page.url}\n{results.generate_report()}"
        measured = page.evaluate(_MEASURE, TARGETS)
        assert measured["scroll"] <= 0, f"{page.url} scrolls sideways by {measured['scroll']} px"
        assert measured["small"] == [], f"{page.url}: targets under 44 x 44 px: {measured['small']}"
        assert self.problems == [], f"{page.url}: {self.problems}"
        if name:
            SCREENSHOTS.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=SCREENSHOTS / f"{re.sub(r'[^a-z0-9-]', '-', name)}.png", full_page=True)


@pytest.fixture(scope="session")
def browser() -> Iterator[Any]:
    """Debian's Chromium, headless, started once for the whole run."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=BROWSER, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="session")
def axe() -> Any:
    """axe-core as axe-playwright-python ships it (no download at run time)."""
    from axe_playwright_python.sync_playwright import Axe

    return Axe()


@pytest.fixture
def audit(axe: Any) -> PageAudit:
    return PageAudit(axe)
