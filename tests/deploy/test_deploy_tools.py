"""The small deployment tools: the container health probe, ``deploy init-data``,
``deploy dev-secrets`` and the pieces of ``msmtrec up`` that need no processes."""

from __future__ import annotations

import http.server
import os
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from aggregator.records import RoundRecord
from aggregator.views import StatusView
from msmtrec.data.schema import ALIEXPRESS
from msmtrec.data.synth import SynthConfig, synthesize
from msmtrec_app.cli import main
from msmtrec_app.commands.deploy import dev_secrets, init_data
from msmtrec_app.commands.up import (
    DEFAULT_PORTS,
    UpError,
    example_instances,
    resolve_ports,
    show_line,
)
from msmtrec_app.commands.up.reporting import Progress

REPO = Path(__file__).resolve().parents[2]


# ---------------------------------------------------------------------------- healthcheck
@pytest.fixture
def http_server() -> Iterator[str]:
    """A real HTTP server on 127.0.0.1: /healthz → 200, /readyz → 503."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            code = {"/healthz": 200, "/readyz": 503}.get(self.path, 404)
            self.send_response(code)
            self.end_headers()
            self.wfile.write(b'{"status": "ok"}' if code == 200 else b"{}")

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def probe(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The probe exactly as the image's HEALTHCHECK runs it."""
    return subprocess.run(
        [sys.executable, "-m", "msmtrec_app.commands.healthcheck", *args],
        capture_output=True, text=True, timeout=60, cwd=REPO,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


def test_healthcheck_exit_codes(http_server):
    assert probe("--url", f"{http_server}/healthz").returncode == 0
    failed = probe("--url", f"{http_server}/readyz")
    assert failed.returncode == 1 and "HTTP 503" in failed.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    refused = probe("--url", f"http://127.0.0.1:{closed}/healthz", "--timeout", "2")
    assert refused.returncode == 1 and "unhealthy" in refused.stderr
    assert probe(env={"MSMTREC_HEALTH_URL": f"{http_server}/healthz"}).returncode == 0
    assert probe(env={"MSMTREC_HEALTH_URL": ""}).returncode == 0  # no endpoint to probe
    assert probe("--url", "file:///etc/passwd").returncode == 1


def test_healthcheck_is_light_and_also_a_cli_command(http_server):
    """Docker runs it every few seconds: it must not import torch or the services."""
    code = (
        "import runpy, sys; sys.argv = ['x', '--url', sys.argv[1]];"
        "\ntry: runpy.run_module('msmtrec_app.commands.healthcheck', run_name='__main__')"
        "\nexcept SystemExit as e: code = e.code"
        "\nheavy = [m for m in ('torch', 'fastapi', 'grpc', 'numpy') if m in sys.modules]"
        "\nprint(code, heavy)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, f"{http_server}/healthz"],
        capture_output=True, text=True, timeout=60, cwd=REPO,
    )  # fmt: skip
    assert out.stdout.strip().splitlines()[-1] == "0 []", out.stdout + out.stderr
    assert main(["healthcheck", "--url", f"{http_server}/healthz", "--quiet"]) == 0


# ------------------------------------------------------------------------------ init-data
def test_init_data_writes_missing_scenarios_and_leaves_real_data_alone(tmp_path):
    data = tmp_path / "data"
    synthesize(data, SynthConfig(scenarios=("NL",), train_rows=50, test_rows=20, seed=7))
    real = (data / "NL" / "train.csv").read_bytes()
    (data / "ES").mkdir()  # an empty mount point counts as "no data"
    result = init_data(data, SynthConfig(scenarios=("NL", "ES", "FR"), train_rows=60,
                                         test_rows=20))  # fmt: skip
    assert result == {"NL": "present", "ES": "written", "FR": "written"}
    assert (data / "NL" / "train.csv").read_bytes() == real
    for s in ("ES", "FR"):
        for split in ("train", "test"):
            path = data / s / f"{split}.csv"
            assert path.is_file() and stat.S_IMODE(path.stat().st_mode) == 0o644
    assert not [p for p in data.iterdir() if p.name.startswith(".init-data-")]
    # a second run changes nothing
    again = init_data(data, SynthConfig(scenarios=("NL", "ES", "FR"), train_rows=60,
                                        test_rows=20))  # fmt: skip
    assert set(again.values()) == {"present"}


def test_init_data_refuses_half_a_scenario(tmp_path, capsys):
    (tmp_path / "NL").mkdir(parents=True)
    (tmp_path / "NL" / "train.csv").write_text("search_id\n")
    with pytest.raises(ValueError, match="train file without a test file"):
        init_data(tmp_path, SynthConfig(scenarios=("NL",), train_rows=10, test_rows=5))
    code = main(["deploy", "init-data", "--data", str(tmp_path), "--scenarios", "NL"])
    assert code == 1 and "add the missing file" in capsys.readouterr().err


def test_init_data_cli(tmp_path, capsys):
    code = main(["deploy", "init-data", "--data", str(tmp_path), "--scenarios", "NL", "ES",
                 "--train-rows", "40", "--test-rows", "10"])  # fmt: skip
    assert code == 0
    out = capsys.readouterr().out
    assert "NL: no data mounted; wrote synthetic data" in out
    assert main(["deploy", "init-data", "--data", str(tmp_path), "--scenarios", "NL"]) == 0
    assert "NL: using the data found in" in capsys.readouterr().out


# ---------------------------------------------------------------------------- dev-secrets
def test_dev_secrets_layout_permissions_and_refusal_to_overwrite(tmp_path, capsys):
    out = tmp_path / "secrets"
    paths = dev_secrets(out, ["NL", "ES"])
    tokens = yaml.safe_load((out / "tokens" / "tokens.yaml").read_text())
    assert set(tokens) == {"NL", "ES"} and tokens["NL"] != tokens["ES"]
    assert (out / "tokens" / "NL.token").read_text().strip() == tokens["NL"]
    for name in ("ca.pem", "server.pem", "server.key"):
        assert name in paths
    for directory in (out, out / "tokens", out / "tls"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700
    for name, path in paths.items():
        # the CA key signs, is mounted nowhere: the owner's only; the rest the containers read
        assert stat.S_IMODE(path.stat().st_mode) == (0o600 if name == "ca.key" else 0o644), name
    assert stat.S_IMODE((out / "tls" / "ca.key").stat().st_mode) == 0o600
    from cryptography import x509

    cert = x509.load_pem_x509_certificate((out / "tls" / "server.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {"aggregator", "msmtrec-aggregator"} <= set(names.get_values_for_type(x509.DNSName))
    assert main(["deploy", "dev-secrets", "--out", str(out)]) == 1
    assert "--force" in capsys.readouterr().err
    assert main(["deploy", "dev-secrets", "--out", str(out), "--force"]) == 0


# ------------------------------------------------------------------------------------ up
def test_resolve_ports_falls_back_only_for_defaults():
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", DEFAULT_PORTS["gateway"]))
        except OSError:
            pytest.skip("the default gateway port is taken by something else here")
        s.listen()
        notes: list[str] = []
        ports = resolve_ports("127.0.0.1", {"grpc": 0, "status": 0, "gateway": None}, notes)
        assert ports["gateway"] != DEFAULT_PORTS["gateway"]
        assert len(set(ports.values())) == 3
        assert notes and "busy" in notes[0]
        with pytest.raises(UpError, match="--gateway-port"):
            resolve_ports("127.0.0.1", {"gateway": DEFAULT_PORTS["gateway"]}, [])


def test_example_instances_are_gateway_instances(tmp_path):
    synthesize(tmp_path, SynthConfig(scenarios=("NL",), train_rows=30, test_rows=10))
    instances, labels = example_instances(tmp_path, "NL", 3)
    assert len(instances) == 3 and set(labels) == set(ALIEXPRESS.labels)
    assert list(instances[0]) == list(ALIEXPRESS.feature_columns)
    assert all(type(instances[0][c]) is int for c in ALIEXPRESS.categorical)
    assert all(type(instances[0][c]) is float for c in ALIEXPRESS.numerical)
    with pytest.raises(UpError, match="no test file"):
        example_instances(tmp_path, "XX")


def test_console_shows_problems_only_and_progress_comes_from_the_status_api():
    """Children's logs reach the console for problems only (or all with --verbose); the
    per-round progress is built from the aggregator's status API, not parsed from logs."""
    trained = "12:00:01 INFO scenario_client: NL: round 1/5 trained 18000 samples in 2.1 s"
    assert show_line("client", trained, False) is None
    assert show_line("client", trained, True) == trained
    joined = "12:00:01 INFO scenario_client: NL: joined (waiting for clients)"
    assert show_line("client", joined, False) is None
    assert show_line("client", joined, True) == joined
    retry = "12:00:01 WARNING scenario_client: GetConfig: UNAVAILABLE (refused); retrying in 1 s"
    assert show_line("client", retry, False) is None
    error = "12:00:01 ERROR aggregator: cannot start the aggregator: port in use"
    assert show_line("aggregator", error, False) == (
        "ERROR: cannot start the aggregator: port in use"
    )
    assert show_line("client", "Traceback (most recent call last):", False) is not None


def _record(n: int, eval_nl: bool) -> RoundRecord:
    timing = dict.fromkeys(
        (
            "download_seconds", "evaluation_seconds", "local_training_seconds", "upload_seconds",
            "client_other_seconds", "close_latency_seconds", "aggregation_seconds",
            "local_training_seconds_max", "transfer_seconds_max",
        ),
        0.1,
    )  # fmt: skip
    nl = {"participated": True, "num_samples": 900, "metrics": {"train_loss": 0.25}}
    if eval_nl:
        nl["eval"] = {"valid": {"ctr": {"auc": 0.7123, "n": 10}, "ctcvr": {"auc": None}}}
    return RoundRecord.model_validate(
        {
            "round": n, "opened_at": 0.0, "closed_at": 2.0, "duration_seconds": 2.0,
            "closed_by": "all_submitted", "deadline_extensions": 0,
            "resumed_after_restart": False, "participants": ["NL"], "not_submitted": ["ES"],
            "num_samples": 900, "bytes_in": 2_000_000, "bytes_out": 3_000_000,
            "aggregation_seconds": 0.1, "timing": {"critical_client": "NL", **timing},
            "state_checksum": "x", "clients": {"NL": nl, "ES": {"participated": False}},
        }
    )  # fmt: skip


def test_up_progress_lines_come_from_the_status_api_models_each_said_once():
    status = StatusView.model_validate(
        {
            "phase": "open", "round": 2, "completed_rounds": 1, "total_rounds": 3,
            "deadline_unix": None, "deadline_in_seconds": None, "min_clients": 1,
            "scenarios": ["ES", "NL"], "joined": ["NL", "ES"], "live": ["NL"], "submitted": [],
            "waiting_for": "", "resumed_from_round": None, "method": "pfmsmtrec",
            "preset": "small", "seed": 0, "spec_digest": "d", "payload_bytes": 1,
            "state_checksum": "s", "strategy_checksum": "t",
        }
    )  # fmt: skip
    progress = Progress(["NL", "ES"])
    first = list(progress.lines(status, [_record(1, eval_nl=False)]))
    assert first == [
        "[aggregator] round 1/3 closed (all_submitted) in 2.0 s: 1/2 clients, 2.0 MB in, "
        "3.0 MB out",
        "[client NL] round 1/3 trained 900 samples (loss 0.2500)",
        "[aggregator] round 2/3 open: ES NL",
    ]
    # the evaluation arrives later, attached to the same record: said once, when it arrives
    later = list(progress.lines(status, [_record(1, eval_nl=True)]))
    assert later == ["[client NL] personalized model after round 1: valid AUC ctr 0.7123 ctcvr n/a"]
    assert list(progress.lines(status, [_record(1, eval_nl=True)])) == []
