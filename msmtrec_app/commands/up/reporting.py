"""What ``msmtrec up`` tells its user, and ``up.json`` for scripts and tests.

Progress comes from the aggregator's status API, read as its own response models
(:class:`~aggregator.views.StatusView`, :class:`~aggregator.records.RoundRecord`): rounds
opening and closing, what each client trained and how its personalized model evaluated.
The children's logs reach the console only for problems (warnings, errors, tracebacks), or
entirely with ``--verbose``; nothing is parsed out of them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from aggregator.records import RoundRecord, fmt_auc
from aggregator.views import StatusView

LOG_LINE = re.compile(r"^\d\d:\d\d:\d\d(?:[.,]\d+)? (\w+) [\w.]+: (.*)$")
PROBLEMS = ("WARNING", "ERROR", "CRITICAL")


def show_line(role: str, line: str, verbose: bool) -> str | None:
    """What of a child's log line reaches the console (None: nothing): every line with
    ``verbose``, else warnings, errors and unstructured output such as tracebacks."""
    if not line.strip():
        return None
    if verbose:
        return line
    m = LOG_LINE.match(line)
    if m is None:
        # tracebacks and other unstructured output are errors worth seeing
        return line if role != "gateway" or "Traceback" in line or "Error" in line else None
    level, message = m.groups()
    if level not in PROBLEMS:
        return None
    if role == "client" and "UNAVAILABLE" in message and "retrying" in message:
        return None  # a client that started before the aggregator listens; it retries
    return f"{level}: {message}"


def _valid_aucs(record: RoundRecord, scenario: str) -> str | None:
    client = record.clients.get(scenario)
    if client is None or not client.eval:
        return None
    valid = client.eval.get("valid") or {}
    return " ".join(f"{task} {fmt_auc(m.auc)}" for task, m in valid.items()) or "n/a"


@dataclass
class Progress:
    """Turns successive status API answers into console lines, each said once."""

    scenarios: Sequence[str]
    seen_rounds: int = 0
    announced_open: int = 0
    _evaluated: set[tuple[int, str]] = field(default_factory=set)

    def lines(self, status: StatusView, records: Sequence[RoundRecord]) -> Iterator[str]:
        total = status.total_rounds
        for rec in records:
            if rec.round > self.seen_rounds:
                yield (
                    f"[aggregator] round {rec.round}/{total} closed ({rec.closed_by}) in "
                    f"{rec.duration_seconds:.1f} s: {len(rec.participants)}/"
                    f"{len(self.scenarios)} clients, {rec.bytes_in / 1e6:.1f} MB in, "
                    f"{rec.bytes_out / 1e6:.1f} MB out"
                    + "".join(
                        f"{', ε spent' if i == 0 else ''} {s} {e:.3f}"
                        for i, (s, e) in enumerate(sorted(rec.dp_epsilon.items()))
                    )
                )
                for s in rec.participants:
                    c = rec.clients[s]
                    loss = (c.metrics or {}).get("train_loss")
                    shown = f" (loss {loss:.4f})" if loss is not None else ""
                    yield (
                        f"[client {s}] round {rec.round}/{total} trained {c.num_samples} "
                        f"samples{shown}"
                    )
                self.seen_rounds = rec.round
            for s in self.scenarios:
                aucs = _valid_aucs(rec, s)
                if aucs is not None and (rec.round, s) not in self._evaluated:
                    self._evaluated.add((rec.round, s))
                    yield (
                        f"[client {s}] personalized model after round {rec.round}: valid AUC {aucs}"
                    )
        if status.phase == "open" and status.round > self.announced_open:
            self.announced_open = status.round
            joined = " ".join(sorted(status.joined))
            yield f"[aggregator] round {status.round}/{total} open: {joined}"


def summary_lines(records: Sequence[RoundRecord], scenarios: Sequence[str]) -> Iterator[str]:
    """Test AUC of every scenario's personalized model after the last round."""
    if not records:
        return
    last = records[-1]
    yield ""
    yield f"personalized models after round {last.round} (test AUC, per scenario):"
    for s in scenarios:
        client = last.clients.get(s)
        test = ((client.eval if client else None) or {}).get("test") or {}
        cells = "  ".join(f"{task} {fmt_auc(m.auc)}" for task, m in test.items())
        yield f"  {s:<4} {cells or 'not reported'}"
