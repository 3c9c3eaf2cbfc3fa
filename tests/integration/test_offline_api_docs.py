"""``/docs`` and ``/redoc`` of the gateway and the status API reference no other host.

The pages and every asset they name are served by the service itself (servicekit.api_docs);
the browser test in tests/e2e/test_offline_api_docs_browser.py renders them with the
network cut.
"""

from __future__ import annotations

import re
from urllib.parse import urljoin, urlsplit

import httpx
import pytest
from helpers.status_api import running_service

URL_ATTR = re.compile(r"""(?:src|href|url)\s*[=:(]\s*['"]([^'"]+)['"]""", re.IGNORECASE)
ABSOLUTE = re.compile(r"""['"(](?:https?:)?//[^'")\s]+""")


def local_assets(page: str, base: str) -> list[str]:
    """Every URL the page's HTML names, resolved; fails on one that names another host."""
    assert ABSOLUTE.findall(page) == [], "the docs page names another host"
    urls = [urljoin(base + "/", u) for u in URL_ATTR.findall(page)]
    for u in urls:
        assert urlsplit(u).hostname == "127.0.0.1", u
    return urls


@pytest.mark.parametrize("kind", ["gateway", "status"])
@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_and_their_assets_are_served_locally(kind, page, tmp_path):
    with running_service(kind, tmp_path) as base, httpx.Client(base_url=base, timeout=10) as client:
        resp = client.get(page)
        assert resp.status_code == 200 and resp.headers["content-type"].startswith("text/html")
        assets = local_assets(resp.text, base + page)
        wanted = {"/docs": ("swagger-ui-bundle.js", "swagger-ui.css"), "/redoc": ("redoc",)}
        for name in wanted[page]:
            assert any(name in u for u in assets), (name, assets)
        for u in assets:
            got = client.get(u)
            assert got.status_code == 200 and len(got.content) > 0, u
        assert "/openapi.json" in resp.text
        assert client.get("/openapi.json").json()["openapi"].startswith("3.")
