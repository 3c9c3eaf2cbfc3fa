"""One scenario-name rule for the aggregator, the registry and the tools; a pure core import."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from msmtrec.identity import check_scenario_name, is_scenario_name
from msmtrec.registry import RegistryError, validate_scenario
from servicekit.auth import TokenTable


@pytest.mark.parametrize("name", ["NL", "a", "x-1", "S_2", "9", "A" * 64])
def test_valid_names_pass_everywhere(name: str) -> None:
    assert is_scenario_name(name)
    assert check_scenario_name(name) == name
    assert validate_scenario(name) == name
    TokenTable({name: "t" * 32})


@pytest.mark.parametrize(
    "name", ["", "-rf", "_x", "a/b", "..", "a b", "NL\n", "A" * 65, "é", None, 3]
)
def test_invalid_names_fail_everywhere(name: object) -> None:
    """The registry once accepted a leading '-' and the aggregator a trailing newline."""
    assert not is_scenario_name(name)
    with pytest.raises(ValueError, match="invalid scenario name"):
        check_scenario_name(name)
    with pytest.raises(RegistryError, match="invalid scenario name"):
        validate_scenario(name)  # type: ignore[arg-type]
    if isinstance(name, str):
        with pytest.raises(ValueError, match="invalid scenario name"):
            TokenTable({name: "t" * 32})


def test_importing_the_core_leaves_the_environment_alone() -> None:
    """Process defaults belong to the entry points (msmtrec_app.cli), not to an import."""
    code = (
        "import json, os; before = dict(os.environ);"
        "import msmtrec, msmtrec.spec, msmtrec.registry, msmtrec.simulation;"
        "print(json.dumps(dict(os.environ) == before))"
    )
    env = {"PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) is True
