"""The operators' dashboard: static HTML, CSS and JavaScript, no build step, no CDN.

Served live by the status API (``/`` → ``/dashboard``; the page polls ``/v1/status``,
``/v1/rounds`` and ``/v1/clients`` of its own origin), and written as one self-contained
file for a finished ``msmtrec simulate`` run (:func:`static_report`: the same page with the
stylesheet, the script and the run's ``results.json`` inlined, so it opens from disk with no
server and no network). Charts and the "who learns from whom" heatmap are inline SVG drawn
by ``static/dashboard.js``; nothing is fetched from anywhere else.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

STATIC_DIR = Path(__file__).parent / "static"
STYLESHEET_TAG = '<link rel="stylesheet" href="dashboard/static/dashboard.css">'
SCRIPT_TAG = '<script src="dashboard/static/dashboard.js"></script>'


def index_html() -> str:
    """The live page (assets referenced relative to ``/dashboard``)."""
    return (STATIC_DIR / "index.html").read_text(encoding="utf-8")


def _script_json(data: Any) -> str:
    """JSON safe inside a <script> element: no ``</script>`` or ``<!--`` can close it early."""
    text = json.dumps(data, allow_nan=False, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def static_report(results: dict[str, Any], title: str = "msmtrec simulation report") -> str:
    """One HTML file showing a finished simulation (``SimulationResult.to_dict()``).

    NaN/inf metrics are written as null (JSON has neither), which the page shows as n/a.
    """
    page = index_html()
    if STYLESHEET_TAG not in page or SCRIPT_TAG not in page:  # template and code move together
        raise RuntimeError("dashboard index.html lost its asset tags")
    css = (STATIC_DIR / "dashboard.css").read_text(encoding="utf-8")
    js = (STATIC_DIR / "dashboard.js").read_text(encoding="utf-8")
    data = _script_json(_finite(results))
    page = page.replace("<title>msmtrec federation</title>", f"<title>{_escape(title)}</title>")
    page = page.replace(STYLESHEET_TAG, f"<style>\n{css}</style>")
    return page.replace(
        SCRIPT_TAG,
        f"<script>window.MSMTREC_REPORT = {data};</script>\n<script>\n{js}</script>",
    )


def write_static_report(results: dict[str, Any], path: Path) -> Path:
    path.write_text(static_report(results), encoding="utf-8")
    return path


def _finite(value: Any) -> Any:
    if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
        return None
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
