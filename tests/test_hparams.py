import subprocess
import sys

import pytest
import yaml

from lottery import cli, hparams
from tests.conftest import PROJECT, default_params, with_overrides


def test_default_params_describe_the_paper_lenet_experiment():
    hp = hparams.load(PROJECT / "params.yaml")
    assert (hp.model.name, hp.train.optimizer, hp.train.lr, hp.train.batch_size) == ("lenet_300_100", "adam", 0.0012, 60)
    assert hp.rounds >= 8
    assert 0.8**hp.rounds <= 0.17


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model.name": "lenet_5000"}, "model.name = 'lenet_5000': unknown"),
        ({"prune.rate": 1.5}, "prune.rate = 1.5: must be in (0, 1)"),
        ({"prune.rate": 0}, "prune.rate = 0.0: must be in (0, 1)"),
        ({"prune.output_rate": -0.1}, "prune.output_rate = -0.1: must be in (0, 1)"),
        ({"train.iterations": -5}, "train.iterations = -5: must be >= 1"),
        ({"train.iterations": "many"}, "train.iterations = 'many': must be int"),
        ({"train.batch_size": 60.5}, "train.batch_size = 60.5: must be int"),
        ({"train.lr": True}, "train.lr = True: must be float"),
        ({"seed": "zero"}, "seed = 'zero': must be int"),
        ({"rewind.iteration": 10**9}, "rewind.iteration = 1000000000: must be below train.iterations"),
        ({"data.source": "ftp"}, "data.source = 'ftp': unknown"),
        ({"train.optimzer": "sgd"}, "train.optimzer: unknown key"),
        ({"rounds": {"1": {"prev": 0}, "3": {"prev": 2}}}, "rounds: keys ['1', '3'] must be the strings '1'..'2'"),
        ({"rounds": {"1": {"prev": 0}, "2": {"prev": 0}}}, "rounds.2 = {'prev': 0}: must be {prev: 1}"),
    ],
)
def test_bad_values_raise_one_line_naming_the_key(overrides, message):
    with pytest.raises(hparams.ParamsError) as err:
        hparams.from_dict(with_overrides(default_params(), overrides))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("section, key", [("train", "lr"), ("prune", "rate"), ("data", "dataset")])
def test_missing_key_is_named(section, key):
    raw = default_params()
    del raw[section][key]
    with pytest.raises(hparams.ParamsError, match=rf"^{section}\.{key}: missing key$"):
        hparams.from_dict(raw)


def test_missing_section_is_named():
    raw = default_params()
    del raw["prune"]
    with pytest.raises(hparams.ParamsError, match=r"^prune: missing section$"):
        hparams.from_dict(raw)


def test_lineage_hash_ignores_tracking_report_and_rounds_but_not_training():
    base = hparams.from_dict(default_params())
    same = hparams.from_dict(
        with_overrides(default_params(), {"tracking.experiment": "other", "report.tolerance": 0.1, "rounds": hparams.rounds_section(3)})
    )
    other = hparams.from_dict(with_overrides(default_params(), {"train.lr": 0.1}))
    assert base.lineage_hash == same.lineage_hash
    assert base.lineage_hash != other.lineage_hash


def test_set_rounds_rewrites_only_the_rounds_section(tmp_path):
    params = tmp_path / "params.yaml"
    original = (PROJECT / "params.yaml").read_text()
    params.write_text(original)
    cli.set_rounds(params, 3)
    text = params.read_text()
    assert yaml.safe_load(text)["rounds"] == {"1": {"prev": 0}, "2": {"prev": 1}, "3": {"prev": 2}}
    assert hparams.load(params).rounds == 3
    before_rounds = original.split("\nrounds:")[0]
    assert text.startswith(before_rounds)  # comments and every other section kept as written


def test_set_rounds_refuses_zero_and_keeps_the_file(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((PROJECT / "params.yaml").read_text())
    before = params.read_text()
    with pytest.raises(hparams.ParamsError, match="rounds = 0"):
        cli.set_rounds(params, 0)
    assert params.read_text() == before


def test_stage_with_bad_params_fails_in_one_line_before_touching_models(tmp_path):
    (tmp_path / "models" / "init").mkdir(parents=True)
    sentinel = tmp_path / "models" / "init" / "init.pt"
    sentinel.write_bytes(b"previous result")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(with_overrides(default_params(), {"prune.rate": 2.0})))
    result = subprocess.run(
        [sys.executable, str(PROJECT / "stages" / "init.py")], cwd=tmp_path, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert result.stderr.strip() == "error: prune.rate = 2.0: must be in (0, 1)"
    assert sentinel.read_bytes() == b"previous result"
    assert sorted(p.name for p in (tmp_path / "models").rglob("*")) == ["init", "init.pt"]


def test_round_argument_outside_the_rounds_is_refused(tmp_path):
    (tmp_path / "params.yaml").write_text((PROJECT / "params.yaml").read_text())
    result = subprocess.run(
        [sys.executable, str(PROJECT / "stages" / "prune.py"), "--round", "99"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    assert "--round = 99: must be in 1.." in result.stderr
    assert not (tmp_path / "models").exists()
