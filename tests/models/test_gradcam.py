"""Grad-CAM (HiResCAM) maps: with the real ImageNet weights of tf_efficientnet_lite0 on 2x2 mosaics of
imagenette photos the map of a photo's class lies in that photo's quadrant; batched maps equal per-image
ones; torchvision resnet18, kiln's lenet and a timm mobilenet work; the overlay and the PNG."""

from __future__ import annotations

import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from torch import nn

from kiln.errors import ConfigError
from kiln.models import create_model
from kiln.models.gradcam import activation_maps, gradcam, overlay, write_png
from tests.conftest import DATA, SHARED

pytestmark = pytest.mark.slow  # real photos and real ImageNet weights

WEIGHTS = SHARED / "tf_efficientnet_lite0_imagenet.safetensors"
# imagenette's classes (label order) and their ImageNet-1k indices
WNIDS = {
    "n01440764": 0,  # tench
    "n02102040": 217,  # English springer
    "n02979186": 482,  # cassette player
    "n03000684": 491,  # chain saw
    "n03028079": 497,  # church
    "n03394916": 566,  # French horn
    "n03417042": 569,  # garbage truck
    "n03425413": 571,  # gas pump
    "n03445777": 574,  # golf ball
    "n03888257": 701,  # parachute
}
TILE = 112  # a quadrant of the model's 224 px input


@pytest.fixture(scope="module")
def imagenette_val() -> Path:
    target = DATA / "imagenette"
    if not (target / "val").is_dir():
        archive = SHARED / "imagenette-jpeg.tar.gz"
        if not archive.is_file():
            pytest.skip(f"{archive} is absent (it ships beside the project in CI only)")
        DATA.mkdir(exist_ok=True)
        with tarfile.open(archive) as tf:
            tf.extractall(DATA, filter="data")
    return target / "val"


@pytest.fixture(scope="module")
def efficientnet() -> nn.Module:
    if not WEIGHTS.is_file():
        pytest.skip(f"{WEIGHTS} is absent (it ships beside the project in CI only)")
    timm = pytest.importorskip("timm")
    from safetensors.torch import load_file

    model = timm.create_model("tf_efficientnet_lite0")
    model.load_state_dict(load_file(WEIGHTS))
    return model.eval()


def _tile(path: Path) -> torch.Tensor:
    """[3, 112, 112] uint8: the shorter side resized to 112 (bicubic), centre crop."""
    with Image.open(path) as img:
        img = img.convert("RGB")
        scale = TILE / min(img.size)
        img = img.resize(
            (max(TILE, round(img.width * scale)), max(TILE, round(img.height * scale))), Image.BICUBIC
        )
        left, top = (img.width - TILE) // 2, (img.height - TILE) // 2
        return torch.from_numpy(np.array(img.crop((left, top, left + TILE, top + TILE)))).permute(2, 0, 1)


@pytest.fixture(scope="module")
def mosaics(imagenette_val: Path) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """30 mosaics (3 per class): one class's photo in quadrant q (0 top-left, 1 top-right, 2 bottom-left,
    3 bottom-right, cycling), photos of three other classes in the other quadrants. Returns the normalised
    input [30, 3, 224, 224] (timm's mean = std = 0.5), the ImageNet class and the quadrant of each."""
    wnids = list(WNIDS)
    files = {wnid: sorted((imagenette_val / wnid).glob("*.JPEG")) for wnid in wnids}
    images, classes, quadrants = [], [], []
    for photo in range(3):
        for i, wnid in enumerate(wnids):
            quadrant = (i + photo) % 4
            tiles = [_tile(files[wnids[(i + step) % 10]][photo]) for step in (3, 5, 7)]
            tiles.insert(quadrant, _tile(files[wnid][photo]))
            images.append(torch.cat([torch.cat(tiles[:2], 2), torch.cat(tiles[2:], 2)], 1))
            classes.append(WNIDS[wnid])
            quadrants.append(quadrant)
    x = (torch.stack(images).float() / 255 - 0.5) / 0.5
    return x, torch.tensor(classes), torch.tensor(quadrants)


def _quadrant_shares(heatmaps: torch.Tensor) -> torch.Tensor:
    """[B, 4] the share of each map's mass in each quadrant of the 224 px input."""
    mass = torch.stack(
        [
            heatmaps[:, rows, cols].sum((1, 2))
            for rows in (slice(0, TILE), slice(TILE, None))
            for cols in (slice(0, TILE), slice(TILE, None))
        ],
        1,
    )
    return mass / mass.sum(1, keepdim=True)


@pytest.fixture(scope="module")
def mosaic_maps(efficientnet: nn.Module, mosaics) -> torch.Tensor:
    x, classes, _ = mosaics
    return gradcam(efficientnet, x, classes, upsample=True)


def test_the_map_of_a_class_lies_in_its_quadrant_for_most_mosaics(mosaics, mosaic_maps) -> None:
    _, _, quadrants = mosaics
    hits = (_quadrant_shares(mosaic_maps).argmax(1) == quadrants).float().mean()
    assert float(hits) >= 0.8  # measured: 29 of 30


def test_most_of_the_mass_is_in_the_class_quadrant(mosaics, mosaic_maps) -> None:
    _, _, quadrants = mosaics
    share = _quadrant_shares(mosaic_maps)[torch.arange(len(quadrants)), quadrants]
    assert float(share.median()) > 0.5  # a uniform map would give 0.25; measured median ~0.69


def test_the_maps_of_the_same_mosaics_for_another_class_move_with_that_class(efficientnet, mosaics) -> None:
    """Class-discriminative: ask for the class of the photo 3 classes on (in the next quadrant)."""
    x, classes, quadrants = mosaics
    wnid_index = {index: i for i, index in enumerate(WNIDS.values())}
    other = torch.tensor([list(WNIDS.values())[(wnid_index[int(c)] + 3) % 10] for c in classes])
    maps = gradcam(efficientnet, x, other, upsample=True)
    other_quadrant = torch.where(quadrants == 0, 1, 0)  # the first of the other photos' quadrants
    hits = (_quadrant_shares(maps).argmax(1) == other_quadrant).float().mean()
    assert float(hits) >= 0.8  # measured: 30 of 30 (asking for random ImageNet classes: 14 of 30)


def test_upsampled_maps_are_in_zero_one_at_the_input_size(mosaics, mosaic_maps) -> None:
    x, _, _ = mosaics
    assert mosaic_maps.shape == (len(x), 224, 224)
    assert float(mosaic_maps.min()) >= 0.0
    assert float(mosaic_maps.max()) <= 1.0


def test_efficientnet_maps_come_from_the_7x7_features(efficientnet, mosaics) -> None:
    x, classes, _ = mosaics
    assert gradcam(efficientnet, x[:2], classes[:2]).shape == (2, 7, 7)


def test_batched_maps_equal_per_image_maps_on_efficientnet(efficientnet, mosaics) -> None:
    x, classes, _ = mosaics
    batched = gradcam(efficientnet, x[:6], classes[:6])
    single = torch.cat([gradcam(efficientnet, x[i : i + 1], classes[i : i + 1]) for i in range(6)])
    assert torch.allclose(batched, single, atol=1e-4)


def test_the_default_class_is_the_predicted_one(efficientnet, mosaics) -> None:
    x, _, _ = mosaics
    _, logits = activation_maps(efficientnet, x[:4])
    assert torch.equal(gradcam(efficientnet, x[:4]), gradcam(efficientnet, x[:4], logits.argmax(1)))


def test_timms_forward_features_and_the_generic_hooks_give_the_same_maps(efficientnet, mosaics) -> None:
    x, classes, _ = mosaics
    by_hooks = gradcam(efficientnet, x[:4], classes[:4], layer="bn2")  # bn2: forward_features' last module
    assert torch.allclose(gradcam(efficientnet, x[:4], classes[:4]), by_hooks, atol=1e-5)


def test_one_batched_forward_for_the_whole_batch(efficientnet, mosaics) -> None:
    x, classes, _ = mosaics
    calls: list[int] = []
    handle = efficientnet.conv_stem.register_forward_hook(lambda m, i, o: calls.append(len(o)))
    try:
        gradcam(efficientnet, x[:5], classes[:5])
    finally:
        handle.remove()
    assert calls == [5]


def _grad_cam(model: nn.Module, layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Grad-CAM as Selvaraju et al. define it, written out: channel weights = the spatial mean gradient."""
    caught = {}
    handle = layer.register_forward_hook(lambda m, i, o: caught.setdefault("a", o))
    try:
        logits = model(x)
    finally:
        handle.remove()
    score = logits.gather(1, logits.argmax(1, keepdim=True)).sum()
    (grads,) = torch.autograd.grad(score, caught["a"])
    cam = F.relu((grads.mean((2, 3), keepdim=True) * caught["a"]).sum(1))
    return cam / cam.amax((1, 2), keepdim=True)


@pytest.fixture(scope="module")
def resnet18() -> nn.Module:
    torch.manual_seed(0)
    return torchvision.models.resnet18(num_classes=10).eval()


def test_on_resnet18_the_map_is_grad_cam_of_layer4_since_its_head_is_gap_plus_linear(resnet18) -> None:
    x = torch.randn(3, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    assert torch.allclose(gradcam(resnet18, x), _grad_cam(resnet18, resnet18.layer4, x), atol=1e-5)


def test_batched_maps_equal_per_image_maps_on_resnet18(resnet18) -> None:
    x = torch.randn(4, 3, 128, 128, generator=torch.Generator().manual_seed(2))
    single = torch.cat([gradcam(resnet18, x[i : i + 1], 3) for i in range(4)])
    assert torch.allclose(gradcam(resnet18, x, 3), single, atol=1e-5)


def test_a_named_layer_is_used_instead(resnet18) -> None:
    x = torch.randn(2, 3, 128, 128)
    assert gradcam(resnet18, x, layer="layer3").shape == (2, 8, 8)  # layer4 gives 4x4 at 128 px


def test_an_unknown_layer_name_is_one_config_error(resnet18) -> None:
    with pytest.raises(ConfigError, match="has no module 'layer5' — did you mean 'layer4'"):
        gradcam(resnet18, torch.randn(1, 3, 64, 64), layer="layer5")


def test_the_model_keeps_its_mode_and_its_parameters_get_no_grad(resnet18) -> None:
    resnet18.train()
    try:
        gradcam(resnet18, torch.randn(2, 3, 64, 64))
        assert resnet18.training
    finally:
        resnet18.eval()
    assert all(p.grad is None for p in resnet18.parameters())


def test_lenet_maps_come_from_its_last_pooling_and_batch_like_single_images() -> None:
    torch.manual_seed(0)
    lenet = create_model("lenet", num_classes=10, in_channels=3, image_size=(32, 32))
    x = torch.randn(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    maps = gradcam(lenet, x)
    single = torch.cat([gradcam(lenet, x[i : i + 1]) for i in range(5)])
    assert maps.shape == (5, 5, 5)  # 16 x 5 x 5 at 32 px, as in the tutorial
    assert torch.allclose(maps, single, atol=1e-5)


def test_kilns_resnet_small_maps_are_grad_cam_of_its_last_stage() -> None:
    torch.manual_seed(0)
    model = create_model("resnet_small", num_classes=10, in_channels=3, image_size=(32, 32)).eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    maps = gradcam(model, x)
    assert maps.shape == (3, 8, 8)  # strides 1, 2, 2
    assert torch.allclose(maps, _grad_cam(model, model.layers, x), atol=1e-5)


def test_a_frozen_model_works() -> None:
    torch.manual_seed(0)
    lenet = create_model("lenet", num_classes=10, in_channels=3, image_size=(32, 32)).requires_grad_(False)
    maps = gradcam(lenet, torch.randn(2, 3, 32, 32))
    assert bool((maps.amax((1, 2)) > 0).all())


def test_a_timm_mobilenet_uses_its_forward_features() -> None:
    timm = pytest.importorskip("timm")
    model = timm.create_model("mobilenetv3_small_050", num_classes=10).eval()
    assert gradcam(model, torch.randn(2, 3, 96, 96), upsample=True).shape == (2, 96, 96)


def test_an_mlp_has_no_feature_map_and_says_so() -> None:
    mlp = create_model("mlp", num_classes=10, in_channels=1, image_size=(8, 8))
    with pytest.raises(ConfigError, match="produces no 4-D feature map"):
        gradcam(mlp, torch.randn(2, 1, 8, 8))


def test_a_class_out_of_range_is_one_config_error(resnet18) -> None:
    with pytest.raises(ConfigError, match="class 10 is out of range for a model of 10 classes"):
        gradcam(resnet18, torch.randn(1, 3, 64, 64), 10)


def test_overlay_blends_the_colormap_over_the_photo() -> None:
    from matplotlib import colormaps

    photo = np.full((20, 30, 3), 100, dtype=np.uint8)
    heat = np.ones((4, 6), dtype=np.float32)
    jet_top = np.array(colormaps["jet"](1.0)[:3]) * 255
    assert overlay(photo, heat, alpha=0.4)[7, 11] == pytest.approx(np.rint(0.6 * 100 + 0.4 * jet_top), abs=0)


def test_overlay_makes_rgb_of_a_grey_photo_at_its_size() -> None:
    out = overlay(np.zeros((20, 30), dtype=np.uint8), torch.rand(5, 5))
    assert out.shape == (20, 30, 3)
    assert out.dtype == np.uint8


def test_write_png_round_trips(tmp_path: Path) -> None:
    rgb = overlay(np.full((16, 16, 3), 50, dtype=np.uint8), torch.rand(4, 4))
    path = write_png(tmp_path / "cam.png", rgb)
    with Image.open(path) as img:
        assert np.array_equal(np.array(img), rgb)
