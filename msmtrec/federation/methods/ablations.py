"""The ablations of ``pfmsmtrec`` (ALGORITHM.md §7): variants of its configuration."""

from msmtrec.federation.config import FederationConfig
from msmtrec.federation.methods.pfmsmtrec import METHOD as PF
from msmtrec.federation.methods.pfmsmtrec import PFMSMTREC_V1_FORMS
from msmtrec.federation.methods.registry import Method, register

_PF = PF.defaults
ABLATIONS = (
    ("pfmsmtrec-no-template", "w/o parameter template (plain experts, personalized aggregation)",
     _PF.with_(template="none")),
    ("pfmsmtrec-no-fedbn", "w/o FedBN (BatchNorm averaged)", _PF.with_(fedbn=False)),
    ("pfmsmtrec-no-conflict", "w/o conflict coordination (g = mean Δ)",
     _PF.with_(conflict="none")),
    ("pfmsmtrec-no-personal", "w/o personalized aggregation (a_c = b_c = 1)",
     _PF.with_(personalize=False, init_weight=1.0)),
    ("pfmsmtrec-no-tower", "w/o tower aggregation (towers local)",
     _PF.with_(tower_aggregation=False)),
    ("pfmsmtrec-mu0", "μ = 0 (no personalization regularizer)", _PF.with_(mu=0.0)),
    ("pfmsmtrec-no-shrink", "template_l2 = 0 (no shrinkage of W_S towards W_G)",
     _PF.with_(template_l2=0.0)),
    ("pfmsmtrec-v1", "the default before issue #11: three-part template, FedHCA²'s forms",
     FederationConfig("pfmsmtrec", **PFMSMTREC_V1_FORMS)),
)  # fmt: skip

for _name, _description, _defaults in ABLATIONS:
    register(Method(name=_name, description=_description, defaults=_defaults))
