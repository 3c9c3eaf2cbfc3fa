"""Data: feature schema and dataset specs, the spec-driven loader and its out-of-core stream,
raw AliExpress and Tenrec preparers, synthetic generators and their data families, oracle
side files."""

from msmtrec._lazy import lazy_exports

_EXPORTS = {
    "prepare_aliexpress": "msmtrec.data.aliexpress_raw",
    "ScenarioData": "msmtrec.data.dataset",
    "ScenarioSplits": "msmtrec.data.dataset",
    "DataValidationError": "msmtrec.data.loader",
    "list_scenarios": "msmtrec.data.loader",
    "load_scenario": "msmtrec.data.loader",
    "load_split": "msmtrec.data.loader",
    "write_split": "msmtrec.data.loader",
    "ALIEXPRESS": "msmtrec.data.schema",
    "FeatureSchema": "msmtrec.data.schema",
    "aliexpress_schema": "msmtrec.data.schema",
    "ParquetStream": "msmtrec.data.stream",
    "load_spec": "msmtrec.data.spec_file",
    "prepare_tenrec": "msmtrec.data.tenrec_raw",
    "TenrecSynthConfig": "msmtrec.data.synth_tenrec",
    "synthesize_tenrec": "msmtrec.data.synth_tenrec",
    "SynthConfig": "msmtrec.data.synth",
    "generate": "msmtrec.data.synth",
    "synthesize": "msmtrec.data.synth",
    "FAMILIES": "msmtrec.data.families",
    "FAMILY_STRENGTHS": "msmtrec.data.families",
    "family_config": "msmtrec.data.families",
    "synthesize_family": "msmtrec.data.families",
    "FieldPairConfig": "msmtrec.data.synth_fieldpair",
    "load_oracle": "msmtrec.data.oracle",
}
__all__ = sorted(_EXPORTS)
__getattr__, __dir__ = lazy_exports(__name__, globals(), _EXPORTS)
