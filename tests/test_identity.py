"""The lineage identity schema names every configuration as the code before it did."""

import json
from pathlib import Path

import pytest

from tests.conftest import default_params, with_overrides
from lottery import hparams, identity, validation

# Written by the code before the schema (`Hparams.params_hash` as of b4f2c99): the default
# params, and one variant for each rule that keeps a key in or out of a lineage's name.
RECORDED = json.loads((Path(__file__).parent / "data" / "lineage_names.json").read_text())


def recorded_params(overrides):
    overrides = dict(overrides)
    if "rounds" in overrides:
        overrides["rounds"] = hparams.rounds_section(overrides["rounds"])
    return validation.from_dict(with_overrides(default_params(), overrides))


@pytest.mark.parametrize("name", sorted(RECORDED))
def test_schema_keeps_every_recorded_name(name):
    assert identity.params_hash(recorded_params(RECORDED[name]["overrides"])) == RECORDED[name]["params_hash"]


def test_recorded_variants_change_the_name_where_they_change_results():
    # The record itself must tell the rules apart: a key that is named changes the hash.
    default = RECORDED["default"]["params_hash"]
    unchanged = {"adam_momentum_ignored", "init_glorot_explicit", "device_cpu_test_every_nondet", "data_local_source",
                 "augmentation_none_mnist", "controls", "rounds_3_report", "default"}
    for name, entry in RECORDED.items():
        assert (entry["params_hash"] == default) == (name in unchanged), name


def test_a_later_schema_version_renames_every_lineage(monkeypatch):
    hp = recorded_params({})
    assert "schema" not in identity.of(hp)
    monkeypatch.setattr(identity, "SCHEMA_VERSION", 2)
    assert identity.of(hp)["schema"] == 2
    assert identity.params_hash(hp) != RECORDED["default"]["params_hash"]
