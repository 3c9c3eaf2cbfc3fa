"""In-process federation: every scenario of a data directory is a client in one process.

Runs the same :class:`~msmtrec.federation.client.ClientRuntime` and
:class:`~msmtrec.federation.strategy.Strategy` as the networked deployment, prints one line
per round, selects the round by mean validation AUC (never by test) and reports the test
metrics of that round per scenario × task.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from msmtrec.data.dataset import ScenarioSplits
from msmtrec.data.schema import ALIEXPRESS, FeatureSchema
from msmtrec.device import host_tensors
from msmtrec.federation.client import ClientRuntime
from msmtrec.federation.config import DEFAULT_METHOD, FederationConfig, ResolvesExperiment
from msmtrec.federation.methods import get_method
from msmtrec.federation.sampling import round_participants
from msmtrec.federation.strategy import Strategy
from msmtrec.model.config import ModelConfig
from msmtrec.training.config import PrivacyConfig
from msmtrec.training.history import Log, RoundRecord, round_line
from msmtrec.training.history import fmt_metric as _fmt
from msmtrec.training.metrics import TaskMetrics, mean_auc
from msmtrec.training.trainer import TrainConfig


@dataclass
class SimulationConfig(ResolvesExperiment):
    data_dir: Path
    method: str = DEFAULT_METHOD
    rounds: int = 10
    preset: str = "small"
    seed: int = 0
    scenarios: tuple[str, ...] | None = None
    valid_fraction: float = 0.1
    train: TrainConfig = field(default_factory=TrainConfig)
    model_overrides: dict[str, Any] = field(default_factory=dict)
    federation_overrides: dict[str, Any] = field(default_factory=dict)
    # the dataset spec the data follows (`--spec`): columns, embedding tables, tasks
    schema: FeatureSchema = ALIEXPRESS
    progress: bool = False
    # Evaluate a scenario on test only in rounds where its validation AUC reached a new best
    # (the only rounds per-scenario selection reads; the others record None and no mean).
    # Saves the test pass of most rounds in long benchmark grids.
    lazy_test: bool = False
    # Where the clients train (auto, cpu, cuda[:N]) and in what precision (fp32, bf16); local
    # to this run, not part of the experiment protocol: what is aggregated is CPU float32.
    device: str = "cpu"
    precision: str = "fp32"
    # record-level DP of every client's training (docs/PRIVACY.md); the budget covers
    # `rounds`. The simulation seeds the noise from `seed` unless privacy sets its own.
    privacy: PrivacyConfig | None = None
    # > 0: stream each scenario's train split from Parquet through a shuffle buffer of this
    # many rows (msmtrec.data.stream; memory does not grow with rows); 0: load it in memory.
    # A different row order from the in-memory path, so results differ; local to this run.
    stream_buffer_rows: int = 0


def per_scenario_selection(history: list[RoundRecord]) -> dict[str, dict[str, Any]]:
    """Each scenario's own round: the one with its best mean validation AUC over tasks
    (earliest on ties), with that round's validation and test metrics. This is what a
    scenario that publishes with the ``best-valid`` policy serves; test is only read."""
    out: dict[str, dict[str, Any]] = {}
    for scenario in history[0].valid:
        best, best_score = history[-1], None
        for rec in history:
            score = mean_auc({scenario: rec.valid[scenario]})
            if score is not None and (best_score is None or score > best_score):
                best, best_score = rec, score
        out[scenario] = {
            "round": best.round,
            "valid": best.valid[scenario],
            "test": best.test[scenario],
        }
    return out


@dataclass
class SimulationResult:
    method: str
    config: dict[str, Any]
    history: list[RoundRecord]
    best_round: int

    @property
    def best(self) -> RoundRecord:
        return next(r for r in self.history if r.round == self.best_round)

    def to_dict(self) -> dict[str, Any]:
        return {
            "method": self.method,
            "config": self.config,
            "best_round": self.best_round,
            "selected_by": "mean validation AUC over scenarios x tasks",
            "test": self.best.test,
            "valid": self.best.valid,
            "mean_test_auc": self.best.mean_test_auc,
            "mean_valid_auc": self.best.mean_valid_auc,
            "per_scenario_selection": per_scenario_selection(self.history),
            "history": [asdict(r) for r in self.history],
        }

    def markdown(self) -> str:
        return results_markdown(self.method, self.best_round, self.best.test)


def results_markdown(method: str, best_round: int, test: dict[str, dict[str, TaskMetrics]]) -> str:
    """Test AUC / log-loss per scenario × task, plus the macro mean over scenarios."""
    tasks = list(next(iter(test.values())).keys())
    head = "| scenario | " + " | ".join(f"{t} AUC | {t} logloss" for t in tasks) + " |"
    sep = "|---" * (1 + 2 * len(tasks)) + "|"
    lines = [
        f"### {method}: test metrics at round {best_round} (selected on validation)",
        "",
        head,
        sep,
    ]
    for sc, per_task in test.items():
        cells = [f"{_fmt(per_task[t]['auc'])} | {_fmt(per_task[t]['logloss'])}" for t in tasks]
        lines.append(f"| {sc} | " + " | ".join(cells) + " |")
    means = []
    for t in tasks:
        aucs = [test[s][t]["auc"] for s in test if test[s][t]["auc"] is not None]
        lls = [test[s][t]["logloss"] for s in test if test[s][t]["logloss"] is not None]
        means.append(
            f"{_fmt(sum(aucs) / len(aucs) if aucs else None)} | "
            f"{_fmt(sum(lls) / len(lls) if lls else None)}"
        )
    lines.append("| **mean** (macro over scenarios) | " + " | ".join(means) + " |")
    return "\n".join(lines) + "\n"


def load_splits(
    data_dir: Path,
    scenarios: tuple[str, ...] | None,
    valid_fraction: float,
    schema: FeatureSchema = ALIEXPRESS,
    stream_buffer_rows: int = 0,
) -> dict[str, ScenarioSplits]:
    from msmtrec.data.loader import list_scenarios, load_scenario
    from msmtrec.data.stream import stream_splits

    names = scenarios or tuple(list_scenarios(data_dir))
    if not names:
        raise FileNotFoundError(f"no scenario directories with a train file under {data_dir}")
    if stream_buffer_rows > 0:
        return {
            s: stream_splits(data_dir, s, schema, valid_fraction, stream_buffer_rows) for s in names
        }
    return {s: load_scenario(data_dir, s, schema, valid_fraction) for s in names}


def run_simulation(
    config: SimulationConfig,
    splits: dict[str, ScenarioSplits] | None = None,
    log: Log = print,
    on_round: Callable[[int, dict[str, ClientRuntime]], None] | None = None,
) -> SimulationResult:
    """Run the federation in-process. ``on_round(round, clients)`` runs after each round
    (used to publish models to a registry)."""
    splits = splits or load_splits(
        config.data_dir,
        config.scenarios,
        config.valid_fraction,
        config.schema,
        config.stream_buffer_rows,
    )
    fed = config.federation()
    model_cfg = config.model_config()
    runner = get_method(fed.method).pooled_runner
    if runner is not None:  # a pooled, non-federated reference (central methods)
        if config.privacy is not None and config.privacy.enabled:
            raise ValueError(
                f"method {config.method!r} pools every scenario's data: differential privacy "
                "of what leaves a client does not apply to it"
            )
        history = runner(config, fed, model_cfg, splits, log)
    else:
        history = _run_federated(config, fed, model_cfg, splits, log, on_round)
    best = _select_round(history)
    log(
        f"selected round {best.round} by mean validation AUC {_fmt(best.mean_valid_auc)}; "
        f"mean test AUC {_fmt(best.mean_test_auc)}"
    )
    cfg = {
        "method": config.method,
        "rounds": config.rounds,
        "preset": config.preset,
        "seed": config.seed,
        "model": model_cfg.to_dict(),
        "federation": fed.to_dict(),
        "train": config.train.to_dict(),
        "valid_fraction": config.valid_fraction,
        "scenarios": list(splits),
    }
    if config.privacy is not None and config.privacy.enabled:
        cfg["privacy"] = config.privacy.to_dict()
    if config.schema != ALIEXPRESS:  # (AliExpress runs keep their results.json as before)
        cfg["dataset"] = config.schema.to_dict()
    return SimulationResult(config.method, cfg, history, best.round)


def _select_round(history: list[RoundRecord]) -> RoundRecord:
    scored = [r for r in history if r.mean_valid_auc is not None]
    if not scored:
        return history[-1]
    return max(scored, key=lambda r: (r.mean_valid_auc, -r.round))


def _run_federated(
    config: SimulationConfig,
    fed: FederationConfig,
    model_cfg: ModelConfig,
    splits: dict[str, ScenarioSplits],
    log: Log,
    on_round: Callable[[int, dict[str, ClientRuntime]], None] | None,
) -> list[RoundRecord]:
    privacy = config.privacy
    if privacy is not None and privacy.enabled and privacy.noise_seed is None:
        privacy = replace(privacy, noise_seed=config.seed)  # reproducible research runs
    clients = {
        s: ClientRuntime(
            s,
            sp,
            model_cfg,
            fed,
            config.train,
            config.seed,
            device=config.device,
            precision=config.precision,
            privacy=privacy,
            planned_rounds=config.rounds,
        )
        for s, sp in sorted(splits.items())
    }
    first = next(iter(clients.values()))
    strategy = Strategy(fed, host_tensors(first.model.state_dict()))
    for s, c in clients.items():
        c.receive(strategy.payload(s), completed_rounds=0)
    tasks = first.model.tasks
    history = []
    best_valid: dict[str, float] = {}
    for r in range(1, config.rounds + 1):
        start = time.perf_counter()
        updates, losses = [], {}
        # Partial participation: the sampled clients train; every client then receives its
        # next θ^start (a networked client that sat a round out downloads it too).
        chosen = round_participants(clients, r, config.seed, fed)
        for s in chosen:
            update, fit = clients[s].train_round(r, progress=config.progress)
            updates.append(update)
            losses[s] = fit.loss
        payloads = strategy.aggregate(updates)
        for s, c in clients.items():
            c.receive(payloads[s] if s in payloads else strategy.payload(s), completed_rounds=r)
        valid = {s: c.evaluate("valid") for s, c in clients.items()}
        if config.lazy_test:
            test = {}
            for s, c in clients.items():
                score = mean_auc({s: valid[s]})
                if score is not None and score > best_valid.get(s, float("-inf")):
                    best_valid[s] = score
                    test[s] = c.evaluate("test")
                else:
                    test[s] = {t: {"auc": None, "logloss": None} for t in tasks}
        else:
            test = {s: c.evaluate("test") for s, c in clients.items()}
        rec = RoundRecord(
            r,
            time.perf_counter() - start,
            losses,
            valid,
            test,
            mean_auc(valid),
            None if config.lazy_test else mean_auc(test),
            strategy.last_report or None,
        )
        rec.epsilon = {s: c.privacy.epsilon for s, c in clients.items() if c.privacy is not None}
        history.append(rec)
        log(round_line(rec, config.rounds, tasks))
        if on_round is not None:
            on_round(r, clients)
    return history


def write_report(result: SimulationResult, out_dir: Path, plot: bool = False) -> dict[str, Path]:
    """results.json + results.md (+ auc_per_round.png) under ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"json": out_dir / "results.json", "markdown": out_dir / "results.md"}
    paths["json"].write_text(json.dumps(result.to_dict(), indent=2))
    paths["markdown"].write_text(result.markdown())
    if plot:
        paths["plot"] = plot_history(result, out_dir / "auc_per_round.png")
    return paths


def plot_history(result: SimulationResult, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(next(iter(result.history[0].valid.values())).keys())
    fig, axes = plt.subplots(1, len(tasks), figsize=(6 * len(tasks), 4), squeeze=False)
    rounds = [r.round for r in result.history]
    for ax, task in zip(axes[0], tasks, strict=True):
        for sc in result.history[0].valid:
            vals = [r.valid[sc][task]["auc"] for r in result.history]
            ax.plot(rounds, [float("nan") if v is None else v for v in vals], marker="o", label=sc)
        ax.axvline(result.best_round, color="grey", linestyle="--", linewidth=1)
        ax.set_title(f"{result.method}: validation AUC, {task}")
        ax.set_xlabel("round")
        ax.set_ylabel("AUC")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
