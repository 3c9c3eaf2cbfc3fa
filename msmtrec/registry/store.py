"""``ModelRegistry``: the publish and read sides of one registry directory, in one class."""

from __future__ import annotations

from msmtrec.registry.publish import _Publisher
from msmtrec.registry.read import _Reader


class ModelRegistry(_Publisher, _Reader):
    """Publish and read per-scenario model versions under ``root`` (see the docstring of
    ``msmtrec.registry``).

    ``retention``: how many newest versions of a scenario to keep; older ones are pruned after
    each publish (the one ``LATEST`` points to is never pruned).
    """
