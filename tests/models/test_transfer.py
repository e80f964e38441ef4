"""Transfer learning on real training runs: weights files, freezing, BN statistics, unfreezing, LR groups."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torchvision

from kiln.config import load_config
from kiln.engine.trainer import fit
from kiln.errors import ConfigError
from tests.conftest import ROOT

pytestmark = pytest.mark.slow  # real training runs, most of them multi-epoch

DIGITS = ROOT / "configs/digits.yaml"
RESNET = [
    "model.name=resnet_small",
    "model.args={widths: [8, 16]}",
    "trainer.progress=off",
    "logging.tensorboard=false",
]


def _cfg(run: Path, *extra: str):
    return load_config(
        DIGITS, [f"run.dir={run}", "trainer.progress=off", "logging.tensorboard=false", *extra]
    )


def _state(path: Path, key: str = "model_state_dict") -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)[key]


@pytest.fixture(scope="module")
def source_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 'pretrained' model: resnet_small trained on digits classes 0-9 (stands in for ImageNet weights)."""
    run = tmp_path_factory.mktemp("src")
    fit(_cfg(run, *RESNET, "trainer.epochs=2"))
    return run / "checkpoints" / "best.pt"


def test_frozen_backbone_and_bn_stats_unchanged_head_trained(source_run: Path, tmp_path: Path) -> None:
    fit(
        _cfg(tmp_path, *RESNET, f"model.pretrained={source_run}", "model.freeze=backbone", "trainer.epochs=2")
    )
    before, after = _state(source_run), _state(tmp_path / "checkpoints/last.pt")
    head = [k for k in after if k.startswith("fc.")]
    assert head
    for k in head:
        assert not torch.equal(before[k], after[k]), k
    for k in after:
        if not k.startswith("fc."):
            assert torch.equal(before[k], after[k]), k  # weights AND BatchNorm running stats: byte-identical
    opt = torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)["optimizer_state_dict"]
    assert sum(len(g["params"]) for g in opt["param_groups"]) == 2  # only fc.weight and fc.bias


def test_unfreeze_at_epoch_and_resume_across_it_is_exact(source_run: Path, tmp_path: Path) -> None:
    common = [
        *RESNET,
        f"model.pretrained={source_run}",
        "model.freeze=[stem.*, layers.0.*]",
        "trainer.unfreeze={at_epoch: 2, lr_mult: 0.1}",
        "trainer.epochs=3",
        "trainer.checkpoint.every_n_epochs=1",
        "trainer.checkpoint.keep=5",
    ]
    fit(_cfg(tmp_path / "a", *common))
    e1 = torch.load(tmp_path / "a/checkpoints/epoch-1.pt", weights_only=True)
    e2 = torch.load(tmp_path / "a/checkpoints/epoch-2.pt", weights_only=True)
    assert len(e1["optimizer_state_dict"]["param_groups"]) == 1
    groups = e2["optimizer_state_dict"]["param_groups"]
    assert len(groups) == 2
    assert groups[1]["lr"] == pytest.approx(groups[0]["lr"] * 0.1)
    assert torch.equal(e1["model_state_dict"]["stem.0.weight"], _state(source_run)["stem.0.weight"])
    assert not torch.equal(e2["model_state_dict"]["stem.0.weight"], _state(source_run)["stem.0.weight"])
    for start in ("epoch-1.pt", "epoch-2.pt"):  # resume before and after the unfreeze epoch
        run = tmp_path / f"resume-{start}"
        fit(_cfg(run, *common), resume=str(tmp_path / "a/checkpoints" / start))
        a, b = _state(tmp_path / "a/checkpoints/last.pt"), _state(run / "checkpoints/last.pt")
        assert all(torch.equal(a[k], b[k]) for k in a), start


def test_discriminative_learning_rates(tmp_path: Path) -> None:
    fit(
        _cfg(
            tmp_path,
            *RESNET,
            "trainer.epochs=1",
            "optimizer.weight_decay=0.01",
            "optimizer.param_groups=[{params: 'fc.*', lr_mult: 10},"
            " {params: 'layers.*', lr_mult: 0.5, weight_decay: 0}]",
        )
    )
    groups = torch.load(tmp_path / "checkpoints/last.pt", weights_only=True)["optimizer_state_dict"][
        "param_groups"
    ]
    by_mult = {g["lr_mult"]: g for g in groups}
    assert set(by_mult) == {10, 0.5, 1.0}
    assert by_mult[0.5]["weight_decay"] == 0
    assert by_mult[10]["weight_decay"] == 0.01
    with pytest.raises(ConfigError, match="match no parameter of the model"):
        fit(_cfg(tmp_path / "x", *RESNET, "optimizer.param_groups=[{params: 'nothing.*', lr_mult: 2}]"))


def test_weights_saved_by_plain_torchvision_code(tmp_path: Path) -> None:
    """A state_dict saved the usual way (torch.save(model.state_dict())) with 1000 ImageNet classes."""
    torch.manual_seed(0)
    src = torchvision.models.resnet18(weights=None)
    torch.save(src.state_dict(), tmp_path / "resnet18.pth")
    fit(
        _cfg(
            tmp_path / "run",
            "model.name=torchvision:resnet18",
            "data.channels=3",
            "data.image_size=32",
            f"model.pretrained={tmp_path / 'resnet18.pth'}",
            "model.freeze=backbone",
            "trainer.epochs=1",
        )
    )
    after = _state(tmp_path / "run/checkpoints/last.pt")
    assert after["fc.weight"].shape == (10, 512)  # the head resized to the 10 digit classes
    assert torch.equal(after["layer1.0.conv1.weight"], src.state_dict()["layer1.0.conv1.weight"])
    assert torch.equal(after["bn1.running_mean"], src.state_dict()["bn1.running_mean"])


def test_pretrained_true_without_network_is_a_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))  # an empty cache: the download path runs for real
    with pytest.raises(
        ConfigError, match="could not download pretrained weights for torchvision:resnet18.*model.pretrained"
    ):
        fit(
            _cfg(
                tmp_path / "run",
                "model.name=torchvision:resnet18",
                "data.channels=3",
                "data.image_size=32",
                "model.pretrained=true",
                "trainer.epochs=1",
            )
        )


def test_bad_freeze_pattern_and_summary_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(ConfigError, match=r"model.freeze: \['nope.\*'\] match no parameter"):
        fit(_cfg(tmp_path / "a", *RESNET, "model.freeze=[nope.*]"))
    fit(_cfg(tmp_path / "b", *RESNET, "model.freeze=[stem.*]", "trainer.epochs=1"))
    out = capsys.readouterr().out
    assert "trainable" in out
    assert "frozen" in out
    assert "stem" in out
    assert json.loads((tmp_path / "b/summary.json").read_text())["epochs_run"] == 1


def test_a_new_head_on_loaded_weights_starts_small(imagenet_weights: Path) -> None:
    import timm

    from kiln.models.transfer import load_pretrained

    torch.manual_seed(0)
    model = timm.create_model("tf_efficientnet_lite0", num_classes=3)  # timm's head init: U(+-1/sqrt(3))
    load_pretrained(model, imagenet_weights, strict=True, head="classifier")
    bound = 1 / model.classifier.in_features**0.5  # nn.Linear's own init, U(+-1/sqrt(1280))
    assert model.classifier.weight.abs().max() <= bound
