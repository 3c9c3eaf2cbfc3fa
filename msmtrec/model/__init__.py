"""The templated multi-task MMoE."""

from msmtrec._lazy import lazy_exports

_EXPORTS = {
    "PRESETS": "msmtrec.model.config",
    "ModelConfig": "msmtrec.model.config",
    "preset": "msmtrec.model.config",
    "MultiTaskMMoE": "msmtrec.model.mmoe",
    "build_model": "msmtrec.model.mmoe",
    "count_parameters": "msmtrec.model.mmoe",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
