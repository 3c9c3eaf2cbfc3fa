"""Model registry: a directory that scenario clients publish to and the gateway serves from.

Layout (one directory per scenario, one immutable directory per version)::

    <root>/<scenario>/LATEST                      name of the version readers should use
    <root>/<scenario>/<version>/model.safetensors full personalized state_dict
    <root>/<scenario>/<version>/metadata.json     schema, model config, round, metrics, sha256
    <root>/<scenario>/.lock                       serializes publishers of one scenario
    <root>/<scenario>/.tmp-*                      a version being written (never read)

Why it is built this way:

* **Readers only follow ``LATEST``.** A version is written into a dot-named temp directory,
  fsynced, renamed to its final name, and only then is ``LATEST`` replaced (temp file +
  ``os.replace`` + directory fsync). A crash at any point leaves either the old pointer or the
  new one, never a pointer to half a version.
* **Versions sort chronologically** as strings: ``v<seq>-r<round>-<sha8>`` with a per-scenario
  counter taken under an exclusive ``flock``, so two publishes in the same second (or a
  federation restarted at round 1) still get distinct, ordered ids. ``sha8`` is the start of
  the *content* digest (names, dtypes, shapes, bytes of the tensors): the file's own sha256
  is recorded for integrity, but it is not a fingerprint of the model, because safetensors
  writes its header metadata in no fixed order.
* **Publishing the served weights again for the same round is a no-op** that returns the
  served version (a client restarted after the last round), so duplicates never push older
  useful versions out of the retention window.
* **No pickle.** Weights are safetensors; ``load`` verifies the sha256 recorded at publish
  time, rebuilds the model from the recorded schema and config and loads the state strictly.
* Pure file-system code (no sockets), so ``msmtrec simulate --publish-to`` and the networked
  scenario clients write the same registry.
Modules, one job each: ``layout`` (names, version ids, errors), ``files`` (durable writes),
``metadata`` (``VersionInfo``, ``LoadedModel``, strict-JSON metadata), ``publish`` (the write
side), ``read`` (the read side), ``store`` (``ModelRegistry``, both sides) and
``simulation_hook``. Every name is re-exported here: ``from msmtrec.registry import ...``.
"""

from __future__ import annotations

from msmtrec.registry.layout import (
    DEFAULT_RETENTION,
    FORMAT_VERSION,
    LATEST_FILE,
    LOCK_FILE,
    METADATA_FILE,
    PUBLISH_POLICIES,
    TMP_PREFIX,
    VERSION_RE,
    WEIGHTS_FILE,
    NoVersionError,
    RegistryError,
    validate_scenario,
    validate_version,
    version_sequence,
)
from msmtrec.registry.metadata import LoadedModel, VersionInfo, preset_name, validation_auc
from msmtrec.registry.simulation_hook import publisher_for_simulation
from msmtrec.registry.store import ModelRegistry

__all__ = [
    "DEFAULT_RETENTION",
    "FORMAT_VERSION",
    "LATEST_FILE",
    "LOCK_FILE",
    "METADATA_FILE",
    "PUBLISH_POLICIES",
    "TMP_PREFIX",
    "VERSION_RE",
    "WEIGHTS_FILE",
    "LoadedModel",
    "ModelRegistry",
    "NoVersionError",
    "RegistryError",
    "VersionInfo",
    "preset_name",
    "publisher_for_simulation",
    "validate_scenario",
    "validate_version",
    "validation_auc",
    "version_sequence",
]
