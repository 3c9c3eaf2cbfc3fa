"""Container health probe: ``GET`` one URL, exit 0 on a 2xx answer and 1 otherwise.

Why a module of its own that imports only the standard library: Docker runs the image's
HEALTHCHECK every few seconds in every container, and going through the ``msmtrec`` console
script would import torch and every service's settings each time (seconds of CPU and a few
hundred MB per probe, on every container). The image therefore runs
``python -m msmtrec_app.commands.healthcheck``, which costs a few milliseconds; ``msmtrec
healthcheck`` is the same probe for humans and scripts.

The URL comes from ``--url``, else ``MSMTREC_HEALTH_URL``, else the gateway's (and the
aggregator status API's) default ``http://127.0.0.1:8080/healthz``. An empty
``MSMTREC_HEALTH_URL`` means the service has no HTTP endpoint (a scenario client): the probe
then only reports that the process is running.
"""

from __future__ import annotations

import argparse
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence

ENV = "MSMTREC_HEALTH_URL"
DEFAULT_URL = "http://127.0.0.1:8080/healthz"


def probe(url: str, timeout: float) -> tuple[bool, str]:
    """(healthy, one line saying why). Never raises: a probe must answer, not crash."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = response.status
            body = response.read(200).decode("utf-8", "replace").strip()
    except urllib.error.HTTPError as exc:
        return False, f"{url}: HTTP {exc.code}"
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        return False, f"{url}: {reason}"
    return 200 <= status < 300, f"{url}: HTTP {status} {body}"


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--url",
        default=None,
        help=f"URL to GET (default: env {ENV}, else {DEFAULT_URL}; empty: nothing to probe)",
    )
    parser.add_argument("--timeout", type=float, default=3.0, help="seconds (default 3)")
    parser.add_argument("--quiet", action="store_true", help="print nothing")


def run(args: argparse.Namespace) -> int:
    url = args.url if args.url is not None else os.environ.get(ENV, DEFAULT_URL)
    if not url:
        if not args.quiet:
            print(f"{ENV} is empty: this service has no HTTP endpoint; the process is running")
        return 0
    if not url.startswith(("http://", "https://")):
        print(f"healthcheck: not an http(s) URL: {url!r}", file=sys.stderr)
        return 1
    ok, line = probe(url, args.timeout)
    if not args.quiet:
        print(line if ok else f"unhealthy: {line}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "healthcheck",
        help="GET a health URL and exit 0 when it answers 2xx (the images' HEALTHCHECK)",
        description="The container health probe. Docker images run the same code as "
        "`python -m msmtrec_app.commands.healthcheck`, which skips the heavy imports.",
    )
    _add_arguments(p)
    p.set_defaults(func=run)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m msmtrec_app.commands.healthcheck")
    _add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
