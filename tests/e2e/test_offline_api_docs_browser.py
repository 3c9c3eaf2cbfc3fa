"""``/docs`` (Swagger UI) and ``/redoc`` render in a real browser with the network cut.

Headless chromium resolves no host but 127.0.0.1 (helpers.browser): a page that still
pulled its scripts from a CDN would render blank and log errors. Both services, both pages:
the operations appear, no request leaves 127.0.0.1, the console has no error.
"""

from __future__ import annotations

import pytest
from helpers.browser import console_errors, external, headless_chromium, requested_urls
from helpers.processes import wait_until
from helpers.status_api import running_service

# what each page draws once it has read /openapi.json
RENDERED = {"/docs": ".opblock", "/redoc": "[data-section-id^='operation']"}


@pytest.mark.parametrize("kind", ["gateway", "status"])
def test_docs_render_offline(kind, tmp_path):
    with running_service(kind, tmp_path) as base, headless_chromium(1200, 900) as driver:
        for page, selector in RENDERED.items():
            driver.get(base + page)
            wait_until(
                lambda sel=selector: driver.find_elements("css selector", sel),
                30, f"{kind} {page} to render its operations",
            )  # fmt: skip
        urls = requested_urls(driver)
        errors = console_errors(driver)
    assert any(u.endswith("/openapi.json") for u in urls), urls
    assert external(urls) == []
    assert errors == []
