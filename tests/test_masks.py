import hashlib

import pytest
import torch

from lottery import checkpoints, masks
from lottery.models import catalog
from lottery.io import atomic_path


@pytest.fixture
def model():
    return catalog.build("lenet_300_100", (1, 28, 28), 10, seed=0)


def test_save_load_round_trip_with_weights_only(model, tmp_path):
    mask = masks.ones(model)
    mask["layers.1.weight"][0, :10] = False
    masks.save(mask, tmp_path / "mask.pt")
    loaded = masks.load(tmp_path / "mask.pt", model)
    assert all(torch.equal(mask[k], loaded[k]) for k in mask)
    raw = torch.load(tmp_path / "mask.pt", weights_only=True)
    assert set(raw) == set(mask)


def test_load_rejects_a_mask_for_another_model(model, tmp_path):
    other = catalog.build("conv2", (1, 28, 28), 10, seed=0)
    masks.save(masks.ones(other), tmp_path / "mask.pt")
    with pytest.raises(masks.MaskError, match="mask lacks the prunable weights"):
        masks.load(tmp_path / "mask.pt", model)


def test_load_rejects_wrong_shape_and_dtype(model):
    mask = masks.ones(model)
    mask["layers.3.weight"] = torch.ones(5, 5, dtype=torch.bool)
    with pytest.raises(masks.MaskError, match=r"mask\['layers.3.weight'\] has shape \(5, 5\)"):
        masks.validate(mask, model)
    mask = masks.ones(model)
    mask["layers.3.weight"] = mask["layers.3.weight"].float()
    with pytest.raises(masks.MaskError, match="dtype"):
        masks.validate(mask, model)


def test_apply_zeroes_exactly_the_pruned_weights(model):
    before = {k: v.clone() for k, v in model.state_dict().items()}
    mask = masks.ones(model)
    mask["layers.5.weight"][:, ::2] = False
    masks.apply(model, mask)
    after = model.state_dict()
    keep = mask["layers.5.weight"]
    assert bool((after["layers.5.weight"][~keep] == 0).all())
    assert torch.equal(after["layers.5.weight"][keep], before["layers.5.weight"][keep])
    assert torch.equal(after["layers.1.weight"], before["layers.1.weight"])


def test_sparsity_report_counts(model):
    mask = masks.ones(model)
    mask["layers.5.weight"][:5] = False  # 500 of 1000
    report = masks.sparsity_report(mask, model.prunable_kinds())
    assert report["layers"]["layers.5.weight"]["weights_remaining"] == 0.5
    assert report["weights"] == 784 * 300 + 300 * 100 + 1000
    assert report["kept"] == report["weights"] - 500


def test_checkpoint_describes_itself(model, tmp_path):
    path = tmp_path / "w.pt"
    spec = checkpoints.model_spec("lenet_300_100", (1, 28, 28), 10, width=1.0)
    checkpoints.save(path, model, spec=spec, round_=3, iteration=7, parents=["models/round_3/start.pt"])
    loaded, checkpoint = checkpoints.load_model(path)
    assert (checkpoint["round"], checkpoint["iteration"], checkpoint["model"]) == (3, 7, spec)
    assert checkpoint["parents"] == ["models/round_3/start.pt"]
    assert all(torch.equal(loaded.state_dict()[k], model.state_dict()[k]) for k in model.state_dict())


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_same_content_gives_the_same_bytes_under_any_name(model, tmp_path):
    spec = checkpoints.model_spec("lenet_300_100", (1, 28, 28), 10, width=1.0)
    for name in ("a.pt", "other-name.pt"):
        checkpoints.save(tmp_path / name, model, spec=spec, round_=0, iteration=0, parents=[])
        masks.save(masks.ones(model), tmp_path / f"mask-{name}")
    assert sha256(tmp_path / "a.pt") == sha256(tmp_path / "other-name.pt")
    assert sha256(tmp_path / "mask-a.pt") == sha256(tmp_path / "mask-other-name.pt")
    with torch.no_grad():
        model.layers[1].weight[0, 0] += 1  # one weight changed: other bytes
    checkpoints.save(tmp_path / "changed.pt", model, spec=spec, round_=0, iteration=0, parents=[])
    assert sha256(tmp_path / "changed.pt") != sha256(tmp_path / "a.pt")


def test_a_missing_input_is_an_error_that_names_the_file(model, tmp_path):
    from lottery.errors import MissingInput, UserError

    with pytest.raises(MissingInput, match=r"^.*nothing\.pt: no such file \(an earlier stage writes it: run `dvc repro`\)$"):
        checkpoints.load(tmp_path / "nothing.pt")
    with pytest.raises(UserError, match="mask.pt: no such file"):
        masks.load(tmp_path / "mask.pt", model)


def test_failed_write_keeps_the_previous_file(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]
