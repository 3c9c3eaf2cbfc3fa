"""Wire refusal reasons: one enum in the contract, raised by the aggregator, matched by the client.

Static checks over the sources (AST), so that a reason spelled as a string literal, a reason
raised but missing from the contract, a contract reason nobody raises, or a client branch on
something other than a contract reason fails here rather than in a federation at run time.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from aggregator.errors import Refusal
from msmtrec_proto.federation.v1 import federation_pb2 as pb
from msmtrec_proto.refusals import STATUS, Reason, parse_reason, to_proto

REPO = Path(__file__).resolve().parents[2]
DOCS = REPO / "docs" / "FEDERATION.md"


def _sources(package: str) -> list[tuple[Path, ast.Module]]:
    return [(p, ast.parse(p.read_text(), str(p))) for p in sorted((REPO / package).glob("*.py"))]


def _reason_attr(node: ast.expr) -> str | None:
    """``NAME`` of a ``Reason.NAME`` expression, else None."""
    is_reason = isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
    return node.attr if is_reason and node.value.id == "Reason" else None  # type: ignore[union-attr]


def _is_reason_side(node: ast.expr) -> bool:
    """``<x>.reason`` or ``_reason(<error>)``: the reason a client received."""
    if isinstance(node, ast.Attribute):
        return node.attr == "reason"
    return isinstance(node, ast.Call) and getattr(node.func, "id", None) == "_reason"


def _reasons_of(expr: ast.expr, constants: dict[str, ast.expr], where: str) -> set[str]:
    """The contract reasons ``expr`` stands for; fails on anything else (a string, say)."""
    if (name := _reason_attr(expr)) is not None:
        assert name in Reason.__members__, f"{where}: Reason.{name} is not in the contract"
        return {name}
    if isinstance(expr, ast.Name) and expr.id in constants:
        return _reasons_of(constants[expr.id], constants, where)
    if isinstance(expr, ast.Call) and getattr(expr.func, "id", None) == "frozenset":
        return _reasons_of(expr.args[0], constants, where)
    if isinstance(expr, ast.Set | ast.Tuple | ast.List):
        return set().union(*(_reasons_of(e, constants, where) for e in expr.elts))
    raise AssertionError(f"{where}: a reason branch on {ast.unparse(expr)!r}")


def test_the_python_enum_is_the_contract_enum() -> None:
    proto = {n for n in pb.RefusalReason.keys() if not n.endswith("_UNSPECIFIED")}  # noqa: SIM118
    assert {f"REFUSAL_REASON_{r.name}" for r in Reason} == proto
    for r in Reason:
        assert r.value == r.name.lower().replace("_", "-")
        assert pb.RefusalReason.Name(to_proto(r)) == f"REFUSAL_REASON_{r.name}"
    assert set(STATUS) == set(Reason), "every reason has its status code"
    assert parse_reason(b"wrong-round") is Reason.WRONG_ROUND
    assert parse_reason("no-such-reason") is None and parse_reason("") is None


def test_a_reason_outside_the_contract_cannot_be_raised() -> None:
    with pytest.raises(TypeError, match="Reason of the contract"):
        Refusal("wrong-round", "a string is not a reason")  # type: ignore[arg-type]
    refusal = Refusal(Reason.TOO_LARGE, "big")
    assert (refusal.code, refusal.reason.value) == ("RESOURCE_EXHAUSTED", "too-large")


def test_every_reason_raised_by_the_aggregator_is_in_the_enum_and_every_one_is_raised() -> None:
    raised: set[str] = set()
    for path, tree in _sources("aggregator"):
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "Refusal":
                name = _reason_attr(node.args[0]) if node.args else None
                where = f"{path.name}:{node.lineno}"
                assert name is not None, f"{where}: raise Refusal(Reason.<NAME>, ...)"
                assert name in Reason.__members__, f"{where}: Reason.{name} is not in the contract"
                raised.add(name)
    assert raised == set(Reason.__members__), (
        f"contract reasons never raised: {sorted(set(Reason.__members__) - raised)}"
    )


def test_every_client_branch_on_a_reason_matches_contract_reasons() -> None:
    """Each ``….reason in X`` / ``….reason is X`` / ``== X`` in the client compares against
    Reason members (directly or through module constants made only of them), never a string."""
    branches = 0
    for path, tree in _sources("scenario_client"):
        constants = {
            t.id: node.value
            for node in tree.body
            if isinstance(node, ast.Assign)
            for t in node.targets
            if isinstance(t, ast.Name)
        }

        for node in ast.walk(tree):
            if not isinstance(node, ast.Compare):
                continue
            sides = [node.left, *node.comparators]
            if not any(_is_reason_side(side) for side in sides):
                continue
            where = f"{path.name}:{node.lineno}"
            for other in (side for side in sides if not _is_reason_side(side)):
                assert _reasons_of(other, constants, where), f"{where}: branch handles no reason"
            branches += 1
    assert branches >= 5, f"found only {branches} reason branches in scenario_client"


def test_the_documented_table_lists_exactly_the_contract_reasons() -> None:
    text = DOCS.read_text()
    table = text[text.index("| status | reason | when |") :].split("\n\n", 1)[0]
    documented: dict[str, str] = {}
    for line in table.splitlines()[2:]:
        code, reasons = (c.strip() for c in line.strip("|").split("|")[:2])
        for r in re.findall(r"`([a-z-]+)`", reasons):
            documented[r] = code
    assert documented == {r.value: STATUS[r] for r in Reason}
