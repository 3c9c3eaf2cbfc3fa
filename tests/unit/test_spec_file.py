"""Dataset spec files: built-ins, TOML/YAML parsing, and errors that name the key."""

from pathlib import Path

import pytest

from msmtrec.data.schema import ALIEXPRESS
from msmtrec.data.spec_file import SpecError, load_spec, parse_spec

MINIMAL = {"name": "x", "categorical": [{"name": "u", "vocab_size": 5}],
           "tasks": [{"name": "click", "label": "click"}]}  # fmt: skip


def test_builtin_aliexpress_is_the_aliexpress_schema() -> None:
    spec = load_spec("aliexpress")
    assert spec == ALIEXPRESS and spec.to_dict() == ALIEXPRESS.to_dict()


def test_builtin_tenrec() -> None:
    spec = load_spec("tenrec")
    assert spec.tasks == ("click", "like") and spec.task_parents == (None, "click")
    assert [t.name for t in spec.private_tables] == ["user_id"]
    assert spec.table_of("item_id").hashed and spec.num_numerical == 0


def test_shared_table_and_yaml(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text(
        "name: logs\ntables: [{name: item, size: 100, hashed: true}]\n"
        "categorical: [{name: item_id, table: item}, {name: hist_1, table: item}]\n"
        "numerical: [{name: price, normalization: standard, mean: 1.0, std: 2.0}]\n"
        "tasks: [{name: ctr, label: click}, {name: ctcvr, label: buy, parent: ctr}]\n"
    )
    s = load_spec(path)
    assert s.feature_tables == (0, 0) and len(s.tables) == 1
    assert s.numerical_stats == ((1.0, 2.0),)


@pytest.mark.parametrize(
    ("change", "key"),
    [
        ({"categorical": [{"name": "u", "vocab_size": 0}]}, "categorical[0].vocab_size"),
        ({"categorical": [{"name": "u", "vocab_size": 3, "hash_buckets": 3}]}, "categorical[0]"),
        ({"categorical": [{"name": "u", "table": "nope"}]}, "categorical[0].table"),
        ({"tasks": []}, "tasks"),
        ({"tasks": [{"name": "a", "label": "a", "parent": "b"}]}, "tasks[0].parent"),
        ({"colour": "red"}, "colour"),
        ({"numerical": [{"name": "p", "normalization": "standard"}]}, "numerical[0]"),
        ({"scenarios": {"source": "column"}}, "scenarios"),
    ],
)
def test_errors_name_the_key(change: dict, key: str) -> None:
    with pytest.raises(
        SpecError,
        match=r"my\.toml: invalid dataset spec: .*" + key.replace("[", r"\[").replace("]", r"\]"),
    ):
        parse_spec({**MINIMAL, **change}, "my.toml")


def test_missing_file_and_bad_toml(tmp_path: Path) -> None:
    with pytest.raises(SpecError, match="not a built-in spec"):
        load_spec(tmp_path / "none.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [")
    with pytest.raises(SpecError, match=r"bad\.toml: not valid TOML"):
        load_spec(bad)
