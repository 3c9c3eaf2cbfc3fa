"""``up`` once trained: wait until the gateway serves every scenario's final model, print
example predictions, the rounds' summary and the URLs, then serve until stopped. A part of
:class:`~msmtrec_app.commands.up.session.Up`."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aggregator.records import RoundRecord
from msmtrec_app.commands.up.common import UpError, say
from msmtrec_app.commands.up.ports import Endpoints
from msmtrec_app.commands.up.prepare import EXAMPLE_ROWS, example_instances
from msmtrec_app.commands.up.reporting import Progress, summary_lines
from msmtrec_app.supervisor import ServiceProcess


class Serving:
    """The gateway's first predictions, the summary, the URLs, serving."""

    # state of the Up run this part works on (see msmtrec_app.commands.up.session.Up)
    args: argparse.Namespace
    run_dir: Path
    children: list[ServiceProcess]
    endpoints: Endpoints | None
    scenarios: list[str]
    progress_lines: Progress | None
    _rounds_polled: float
    data_dir: Path | None
    predictions: dict[str, Any]
    get: Callable[..., Any]
    tick: Callable[[], None]
    blame: Callable[[str, str], UpError]
    wait_for: Callable[..., Any]
    rounds: Callable[[], list[RoundRecord] | None]

    def wait_gateway(self) -> dict[str, str]:
        """Until the gateway serves every scenario's final version (the registry's LATEST)."""
        from msmtrec.registry import ModelRegistry

        ep = self.endpoints
        assert ep is not None
        registry = ModelRegistry(self.run_dir / "registry")
        final = {s: registry.latest_version(s) for s in self.scenarios}
        missing = [s for s, v in final.items() if v is None]
        if missing:
            raise UpError(f"clients finished but never published a model for {missing}")

        def serving() -> dict[str, str] | None:
            body = self.get(f"{ep.gateway}/v1/scenarios")
            served = {e["scenario"]: e.get("version") for e in body["scenarios"] if e["loaded"]}
            return final if all(served.get(s) == v for s, v in final.items()) else None

        return self.wait_for(
            f"the gateway to serve {final}", serving, self.args.startup_timeout, blame="gateway"
        )

    def predict_examples(self) -> None:
        import httpx

        ep = self.endpoints
        assert ep is not None and self.data_dir is not None
        say()
        say(f"example predictions from the gateway ({EXAMPLE_ROWS} rows of each scenario's "
            "test file):")  # fmt: skip
        for s in self.scenarios:
            experiment = getattr(self, "experiment", None)
            schema = experiment.schema() if experiment is not None else None
            instances, labels = example_instances(self.data_dir, s, schema=schema)
            body_path = self.run_dir / "examples" / f"{s}.json"
            body_path.write_text(json.dumps({"instances": instances}) + "\n")
            try:
                response = httpx.post(
                    f"{ep.gateway}/v1/scenarios/{s}/predict",
                    json={"instances": instances},
                    timeout=30,
                )
            except httpx.HTTPError as exc:
                raise self.blame(
                    "gateway", f"— POST /v1/scenarios/{s}/predict failed: {exc!r}"
                ) from None
            if response.status_code != 200:
                raise self.blame(
                    "gateway",
                    f"— POST /v1/scenarios/{s}/predict answered {response.status_code}: "
                    f"{response.text[:300]}",
                )
            body = response.json()
            self.predictions[s] = body
            preds = "  ".join(
                f"{task} " + " ".join(f"{p:.4f}" for p in values)
                for task, values in body["predictions"].items()
            )
            truth = ", ".join(f"{k} " + " ".join(map(str, v)) for k, v in labels.items())
            say(f"  {s:<4} {body['model_version']}  {preds}   (labels: {truth})")

    def summary(self) -> None:
        rounds = self.rounds()
        if rounds is None:
            raise self.blame("aggregator", "— its status API did not answer /v1/rounds")
        for line in summary_lines(rounds, self.scenarios):
            say(line)

    def print_urls(self) -> None:
        ep = self.endpoints
        assert ep is not None
        first = self.scenarios[0]
        example = self.run_dir / "examples" / f"{first}.json"
        say()
        say(f"status API  {ep.status}/v1/status   (/v1/rounds /v1/clients /metrics /docs)")
        say(f"dashboard   {ep.status}/dashboard")
        say(f"gateway     {ep.gateway}/v1/scenarios (POST /v1/scenarios/{{scenario}}/predict)")
        say(f"logs        {self.run_dir / 'logs'}/   state: {self.run_dir / 'up.json'}")
        say("try:")
        say(f"  curl -s {ep.status}/v1/rounds")
        say(f"  curl -s {ep.status}/v1/clients")
        say(
            f"  curl -s -X POST {ep.gateway}/v1/scenarios/{first}/predict "
            f"-H 'content-type: application/json' -d @{example}"
        )

    def serve(self) -> None:
        n = len(self.scenarios)
        say()
        say(f"serving (aggregator status API and gateway); Ctrl-C stops the aggregator, "
            f"{n} client{'s' if n != 1 else ''} (already finished) and the gateway")  # fmt: skip
        while True:
            self.tick()
            time.sleep(0.5)
