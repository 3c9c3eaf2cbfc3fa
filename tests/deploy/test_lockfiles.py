"""Reproducible installs: the lock files pin every dependency, agree with pyproject.toml, and
are what ./dev, the Dockerfile and CI install.

* ``requirements/runtime.lock`` (the image) and ``requirements/dev.lock`` (``./dev``, CI):
  ``uv pip compile`` output (``./dev lock``), every line ``name==version``; torch is not in
  them (installed alone at its pyproject pin, CPU build) and no CUDA library is either;
* each pyproject requirement is pinned at a version its specifier allows, and the runtime
  pins are the dev pins;
* the environment ``./dev`` made holds exactly the locked versions (so two clean builds from
  one commit hold the same versions);
* the Dockerfile installs the runtime lock and takes PIP_INDEX_URL / PIP_EXTRA_INDEX_URL.
"""

from __future__ import annotations

import re
import sys
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

REPO = Path(__file__).resolve().parents[2]
LOCKS = REPO / "requirements"
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)")


def read_lock(name: str) -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (LOCKS / name).read_text().splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        match = PIN.match(line)
        assert match, f"{name}: not an exact pin: {line!r}"
        pins[canonicalize_name(match.group(1))] = match.group(2)
    return pins


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


@pytest.mark.parametrize(("lock", "extras"), [("runtime.lock", ()), ("dev.lock", ("dev",))])
def test_lock_pins_every_requirement_at_an_allowed_version(lock, extras):
    pins = read_lock(lock)
    project = pyproject()
    wanted = [Requirement(r) for r in project["dependencies"]]
    for extra in extras:
        wanted += [Requirement(r) for r in project["optional-dependencies"][extra]]
    for req in wanted:
        name = canonicalize_name(req.name)
        if name == "torch":
            continue
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        assert name in pins, f"{lock} lacks {req}: run ./dev lock"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"{lock} pins {name}=={pins[name]}, outside {req}: run ./dev lock"
        )
    assert "torch" not in pins  # installed alone at its pin (CPU build): see ./dev
    assert not [n for n in pins if n.startswith(("nvidia-", "triton"))], "a CUDA build leaked in"


def test_runtime_pins_are_the_dev_pins():
    runtime, dev = read_lock("runtime.lock"), read_lock("dev.lock")
    assert {n: dev.get(n) for n in runtime} == runtime


def test_the_dev_environment_holds_exactly_the_locked_versions():
    if Path(sys.prefix).resolve() != (REPO / ".venv").resolve():
        pytest.skip("not running in the .venv ./dev made")
    pins = read_lock("dev.lock")
    installed = {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions()}
    differ = {n: (v, installed.get(n)) for n, v in pins.items() if installed.get(n) != v}
    assert differ == {}, f"(locked, installed): {differ}; ./dev reinstalls when the lock changes"
    torch_pin = next(r for r in pyproject()["dependencies"] if r.startswith("torch=="))
    assert installed["torch"].split("+")[0] == torch_pin.split("==")[1]


def test_dockerfile_installs_the_lock_behind_any_index():
    text = (REPO / "deploy" / "Dockerfile").read_text()
    assert re.search(r"^ARG PIP_INDEX_URL=", text, re.M)
    assert re.search(r"^ARG PIP_EXTRA_INDEX_URL=", text, re.M)
    assert "requirements/runtime.lock" in text and "pip install -r /tmp/build/runtime.lock" in text
    dev = (REPO / "dev").read_text()
    assert "LOCK=requirements/dev.lock" in dev and '-r "$LOCK"' in dev
    assert "MSMTREC_TORCH_INDEX_URL" in dev
