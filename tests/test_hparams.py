import pytest
import torch
import yaml

from lottery import cli, hparams, identity, validation
from lottery.errors import ParamsError
from tests.conftest import PROJECT, default_params, run_stage, with_overrides


def test_default_params_describe_the_paper_lenet_experiment():
    hp = validation.load(PROJECT / "params.yaml")
    assert (hp.model.name, hp.train.optimizer, hp.train.lr, hp.train.batch_size) == ("lenet_300_100", "adam", 0.0012, 60)
    assert hp.rounds >= 8
    assert 0.8**hp.rounds <= 0.17


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"model.name": "lenet_5000"}, "model.name = 'lenet_5000': unknown"),
        ({"prune.rate": 1.5}, "prune.rate = 1.5: must be in (0, 1)"),
        ({"prune.rate": 0}, "prune.rate = 0.0: must be in (0, 1)"),
        ({"prune.output_rate": -0.1}, "prune.output_rate = -0.1: must be in [0, 1) (0: the layer is left alone)"),
        ({"train.iterations": -5}, "train.iterations = -5: must be >= 1"),
        ({"train.iterations": "many"}, "train.iterations = 'many': must be int"),
        ({"train.batch_size": 60.5}, "train.batch_size = 60.5: must be int"),
        ({"train.lr": True}, "train.lr = True: must be float"),
        ({"seed": "zero"}, "seed = 'zero': must be int"),
        ({"rewind.iteration": 10**9}, "rewind.iteration = 1000000000: must be below train.iterations"),
        ({"data.source": "ftp"}, "data.source = 'ftp': unknown"),
        ({"train.test_curve": "sometimes"}, "train.test_curve = 'sometimes': unknown (expected one of ['every', 'improvements'])"),
        ({"train.optimzer": "sgd"}, "train.optimzer: unknown key"),
        (
            {"prune.strategy": "l1_filter", "prune.granularity": "channel", "prune.scope": "global"},
            "prune.scope = 'global': l1_filter ranks within each layer (use 'layerwise')",
        ),
        ({"rounds": {"1": {"prev": 0}, "3": {"prev": 2}}}, "rounds: keys ['1', '3'] must be the strings '1'..'2'"),
        ({"rounds": {"1": {"prev": 0}, "2": {"prev": 0}}}, "rounds.2 = {'prev': 0}: must be {prev: 1}"),
        ({"train.batch_size": 70_000}, "train.batch_size = 70000: larger than the training split (55000 examples)"),
        ({"data.train_subset": 50, "train.batch_size": 60}, "train.batch_size = 60: larger than the training split (50"),
        ({"data.validation_size": 60_000}, "data.validation_size = 60000: mnist has only 60000 training examples"),
    ],
)
def test_bad_values_raise_one_line_naming_the_key(overrides, message):
    with pytest.raises(ParamsError) as err:
        validation.from_dict(with_overrides(default_params(), overrides))
    assert message in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device, so train.device: cuda is valid")
def test_cuda_without_a_cuda_device_is_refused_up_front():
    with pytest.raises(ParamsError, match=r"^train.device = 'cuda': torch finds no CUDA device here"):
        validation.from_dict(with_overrides(default_params(), {"train.device": "cuda"}))


@pytest.mark.parametrize("section, key", [("train", "lr"), ("prune", "rate"), ("data", "dataset")])
def test_missing_key_is_named(section, key):
    raw = default_params()
    del raw[section][key]
    with pytest.raises(ParamsError, match=rf"^{section}\.{key}: missing key$"):
        validation.from_dict(raw)


def test_missing_section_is_named():
    raw = default_params()
    del raw["prune"]
    with pytest.raises(ParamsError, match=r"^prune: missing section$"):
        validation.from_dict(raw)


def test_identity_ignores_what_cannot_change_the_results():
    base = validation.from_dict(default_params())
    same = {
        "tracking.experiment": "other",
        "report.tolerance": 0.1,
        "rounds": hparams.rounds_section(3),
        "data.source": "download",  # every source is checked against the same digests
        "data.local_root": "/somewhere/on/another/machine",
        "train.device": "cpu",
        "train.momentum": 0.5,  # read by SGD only; the default optimizer is Adam
        "train.test_curve": "every",  # more test points on the curve; the same weights and metrics
        "early_bird.ratio": 0.3,  # the search is off
        "rewind.finetune_lr": 0.5,  # rewind.target is init
        "rewind.scratch_budget": "flops",
        "model.init": "glorot",  # 'paper' is LeNet's Glorot
    }
    for key, value in same.items():
        changed = validation.from_dict(with_overrides(default_params(), {key: value}))
        assert identity.params_hash(changed) == identity.params_hash(base), key
    differ = {"train.lr": 0.1, "seed": 1, "data.train_subset": 100, "prune.rate": 0.3, "rewind.iteration": 10}
    for key, value in differ.items():
        changed = validation.from_dict(with_overrides(default_params(), {key: value}))
        assert identity.params_hash(changed) != identity.params_hash(base), key
    sgd = {"train.optimizer": "sgd", "train.momentum": 0.9}
    assert (
        identity.params_hash(validation.from_dict(with_overrides(default_params(), sgd)))
        != identity.params_hash(validation.from_dict(with_overrides(default_params(), {**sgd, "train.momentum": 0.5})))
    )
    vgg = {"model.name": "vgg11", "model.width": 0.25}
    vgg_hash = {
        init: identity.params_hash(validation.from_dict(with_overrides(default_params(), {**vgg, "model.init": init})))
        for init in ("paper", "kaiming_normal", "glorot")
    }
    assert vgg_hash["paper"] == vgg_hash["kaiming_normal"] != vgg_hash["glorot"]  # VGG's paper init is Kaiming's
    integer_lr = validation.from_dict(with_overrides(default_params(), {"train.lr": 1}))
    assert identity.params_hash(integer_lr) == identity.params_hash(validation.from_dict(with_overrides(default_params(), {"train.lr": 1.0})))


def test_params_read_as_dvc_reads_them(tmp_path):
    from dvc.utils.serialize import parse_yaml

    text = (PROJECT / "params.yaml").read_text().replace("bn_l1: 0.0 ", "bn_l1: 1e-4 ")
    assert "bn_l1: 1e-4" in text
    (tmp_path / "params.yaml").write_text(text)
    hp = validation.load(tmp_path / "params.yaml")
    assert hp.train.bn_l1 == 1e-4 == parse_yaml(text, "params.yaml")["train"]["bn_l1"]


def test_yaml_scalars_mean_what_they_mean_to_dvc():
    from dvc.utils.serialize import parse_yaml

    from lottery import yaml12

    scalars = ["1e-4", "1E4", "-2.", "+.5", ".5e4", ".inf", "-.inf", "1_000", "017", "0o17", "0x1F", "0b101", "on",
               "off", "yes", "no", "True", "tRue", "null", "~", "1:30", "2001-12-14", "1e", "'1e-4'", "[1e-4, on]"]
    for scalar in scalars:
        ours, dvc = yaml12.load(f"v: {scalar}\n")["v"], parse_yaml(f"v: {scalar}\n", "params.yaml")["v"]
        assert (type(ours), ours) == (type(dvc), dvc), scalar
    assert yaml12.load("v: .nan")["v"] != yaml12.load("v: .nan")["v"]  # NaN, as DVC reads it


def test_set_rounds_rewrites_only_the_rounds_section(tmp_path):
    params = tmp_path / "params.yaml"
    original = (PROJECT / "params.yaml").read_text()
    params.write_text(original)
    cli.set_rounds(params, 3)
    text = params.read_text()
    assert yaml.safe_load(text)["rounds"] == {"1": {"prev": 0}, "2": {"prev": 1}, "3": {"prev": 2}}
    assert validation.load(params).rounds == 3
    before_rounds = original.split("\nrounds:")[0]
    assert text.startswith(before_rounds)  # comments and every other section kept as written


def test_set_rounds_refuses_zero_and_keeps_the_file(tmp_path):
    params = tmp_path / "params.yaml"
    params.write_text((PROJECT / "params.yaml").read_text())
    before = params.read_text()
    with pytest.raises(ParamsError, match="rounds = 0"):
        cli.set_rounds(params, 0)
    assert params.read_text() == before


def test_stage_with_bad_params_fails_in_one_line_before_touching_models(tmp_path):
    (tmp_path / "models" / "init").mkdir(parents=True)
    sentinel = tmp_path / "models" / "init" / "init.pt"
    sentinel.write_bytes(b"previous result")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(with_overrides(default_params(), {"prune.rate": 2.0})))
    result = run_stage(tmp_path, "init")
    assert result.returncode != 0
    assert result.stderr.strip() == "error: prune.rate = 2.0: must be in (0, 1)"
    assert sentinel.read_bytes() == b"previous result"
    assert sorted(p.name for p in (tmp_path / "models").rglob("*")) == ["init", "init.pt"]


def test_round_argument_outside_the_rounds_is_refused(tmp_path):
    (tmp_path / "params.yaml").write_text((PROJECT / "params.yaml").read_text())
    result = run_stage(tmp_path, "prune", "--round", "99")
    assert result.returncode != 0
    assert "--round = 99: must be in 1.." in result.stderr
    assert not (tmp_path / "models").exists()
