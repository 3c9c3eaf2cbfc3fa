import pytest

from msmtrec.data.schema import ALIEXPRESS
from msmtrec.federation.config import METHODS, resolve_method
from msmtrec.federation.groups import (
    Group,
    ParameterGroups,
    Policy,
    UnknownParameterError,
    classify,
)
from msmtrec.model import build_model, preset


def _state(template="additive3", head="direct"):
    return build_model(
        ALIEXPRESS, preset("small", template=template, ctcvr_head=head), 0
    ).state_dict()


@pytest.mark.parametrize("template", ["additive3", "two_part", "none"])
@pytest.mark.parametrize("head", ["direct", "esmm"])
def test_every_tensor_is_classified(template, head):
    for name in _state(template, head):
        classify(name)  # raises if unknown


def test_unknown_tensor_is_an_error_not_a_default():
    with pytest.raises(UnknownParameterError, match="matches no rule"):
        classify("experts.extra_scale")


@pytest.mark.parametrize("method", [m for m in METHODS if m != "central"])
def test_bn_counters_never_leave_a_client(method):
    cfg = resolve_method(method)
    sent = cfg.parameter_groups().sent_names(_state(cfg.template))
    assert not [n for n in sent if n.endswith("num_batches_tracked")]


KEEPS_BN = [
    "fedbn",
    "pfmsmtrec",
    "pfmsmtrec-no-template",
    "pfmsmtrec-no-conflict",
    "pfmsmtrec-no-personal",
    "pfmsmtrec-no-tower",
    "pfmsmtrec-mu0",
    "pfmsmtrec-no-shrink",
]


@pytest.mark.parametrize("method", KEEPS_BN)
def test_bn_and_task_weights_never_leave_the_client(method):
    cfg = resolve_method(method)
    sent = cfg.parameter_groups().sent_names(_state(cfg.template))
    assert sent, "the method shares something"
    for n in sent:
        assert classify(n) not in (Group.BN, Group.BN_COUNTER, Group.TASK, Group.EMBEDDING), n


def test_pfmsmtrec_table():
    groups = resolve_method("pfmsmtrec").parameter_groups()
    assert groups.policy("experts.layers.0.weight_g") is Policy.FEDAVG
    assert groups.policy("experts.layers.1.bias_s") is Policy.PERSONAL_EXPERT
    assert groups.policy("experts.layers.0.weight_t") is Policy.KEEP
    assert groups.policy("experts.norms.0.running_mean") is Policy.KEEP
    assert groups.policy("towers.ctcvr.head.weight") is Policy.PERSONAL_TOWER
    assert groups.policy("towers.ctr.layers.0.norm.weight") is Policy.KEEP
    assert groups.policy("gates.ctr.weight") is Policy.KEEP
    assert groups.policy("embedding.weight") is Policy.KEEP


def test_local_sends_nothing_fedavg_sends_all_but_embeddings():
    state = _state("none")
    assert resolve_method("local").parameter_groups().sent_names(state) == []
    sent = set(resolve_method("fedavg").parameter_groups().sent_names(state))
    kept = {n for n in state if n not in sent}
    assert {classify(n) for n in kept} == {Group.EMBEDDING, Group.BN_COUNTER}


def test_counters_and_task_weights_cannot_be_given_a_sending_policy():
    with pytest.raises(ValueError):
        ParameterGroups({Group.BN_COUNTER: Policy.FEDAVG})
    with pytest.raises(ValueError):
        ParameterGroups({Group.TASK: Policy.FEDAVG})


def test_policy_table_round_trips():
    g = resolve_method("pfmsmtrec").parameter_groups()
    assert ParameterGroups.from_dict(g.to_dict()) == g
