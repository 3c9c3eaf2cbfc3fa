"""The reliability suites of issue #7 (fault injection, hostile input, security, load).

Every test under tests/faults/ carries the ``faults`` marker (run them alone with
``pytest -m faults`` or ``pytest tests/faults``). Tests also marked ``faults_full`` are the
exhaustive variants: they are deselected unless ``MSMTREC_FULL_FAULTS=1``, which also
switches the property-based tests to their larger "full" Hypothesis profile. The default
(CI) selection and the full run are documented in docs/RELIABILITY.md.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.faults import FULL, FaultRun, assert_no_orphans
from helpers.processes import ProcessGroup

HERE = Path(__file__).parent


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, dropped = [], []
    for item in items:
        if HERE not in Path(str(item.path)).parents:
            keep.append(item)
            continue
        item.add_marker(pytest.mark.faults)
        if item.get_closest_marker("faults_full") and not FULL:
            dropped.append(item)
        else:
            keep.append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = keep


@pytest.fixture
def procs(tmp_path):
    """Like the ``processes`` fixture, and afterwards asserts that nothing outlived it."""
    group = ProcessGroup(tmp_path / "logs")
    try:
        yield group
    finally:
        group.stop_all()
    assert_no_orphans(group, tmp_path)


@pytest.fixture
def make_run(tmp_path, procs):
    def make(**kwargs) -> FaultRun:
        return FaultRun.create(tmp_path, procs, **kwargs)

    return make
