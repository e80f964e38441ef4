"""The photo augmentations: each one's parameter distribution against torchvision.transforms.v2 (the same
recipe drawn many times), their pixels against torchvision's functions, and the per-image seeding that
makes a view independent of its batch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torchvision.transforms.v2 as v2
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import autoaugment

from kiln.config import AugmentConfig
from kiln.data import geometry as G
from kiln.data import photometric as P
from kiln.data.augment import BatchTransform
from kiln.data.mixing import cutmix
from kiln.spec import ImageSpec

N = 4000  # draws per distribution


def _quantiles(x: torch.Tensor | np.ndarray) -> np.ndarray:
    return np.quantile(np.asarray(x, dtype=np.float64), [0.1, 0.25, 0.5, 0.75, 0.9])


def test_random_resized_crop_matches_torchvision() -> None:
    torch.manual_seed(0)
    h, w, scale, ratio = 300, 400, (0.08, 1.0), (3 / 4, 4 / 3)
    ours = G.rrc_boxes(torch.tensor([[h, w]] * N), scale, ratio, torch.Generator().manual_seed(1))
    t = v2.RandomResizedCrop(224, scale=scale, ratio=ratio)
    img = torch.zeros(3, h, w)
    theirs = [t.make_params([img]) for _ in range(N)]
    tw, th = torch.tensor([p["width"] for p in theirs]), torch.tensor([p["height"] for p in theirs])
    ow, oh = ours[:, 2], ours[:, 3]
    assert np.abs(_quantiles(ow * oh / (h * w)) - _quantiles(tw * th / (h * w))).max() < 0.04  # area share
    assert np.abs(_quantiles(ow / oh) - _quantiles(tw.float() / th)).max() < 0.05  # aspect
    assert bool((ours[:, 0] >= 0).all())  # every box inside the photo
    assert bool((ours[:, 0] + ow <= w).all())
    assert bool((ours[:, 1] + oh <= h).all())
    # a sliver of a photo: no try fits, both fall back to the centre at the nearest allowed aspect
    fallback = G.rrc_boxes(torch.tensor([[20, 400]]), (0.9, 1.0), ratio, torch.Generator().manual_seed(0))
    tv = v2.RandomResizedCrop(8, scale=(0.9, 1.0), ratio=ratio).make_params([torch.zeros(3, 20, 400)])
    assert fallback[0].tolist() == [tv["left"], tv["top"], tv["width"], tv["height"]]


def test_resample_matches_torchvision_resized_crop() -> None:
    coarse = torch.rand(1, 3, 12, 16, generator=torch.Generator().manual_seed(0)) * 255  # photo-like: smooth
    img = torch.nn.functional.interpolate(coarse, size=(120, 160), mode="bicubic").clamp(0, 255).round()
    box = torch.tensor([[30.0, 10.0, 96.0, 80.0]])  # left, top, w, h
    ours = G.resample(img, box, (48, 48))
    theirs = TF.resized_crop(img, 10, 30, 80, 96, [48, 48], antialias=True)
    assert (ours - theirs).abs().mean() < 4.0  # area-averaged bilinear vs antialiased bilinear, 0..255
    exact = G.resample(img, torch.tensor([[30.0, 10.0, 48.0, 48.0]]), (48, 48))
    assert torch.allclose(exact, img[..., 10:58, 30:78], atol=1e-3)  # a box of the output size copies pixels


def test_color_jitter_factors_match_torchvision() -> None:
    ours = P.jitter_factors(N, 0.4, 0.3, 0.2, 0.1, torch.Generator().manual_seed(0))
    t = v2.ColorJitter(0.4, 0.3, 0.2, 0.1)
    theirs = [t.make_params([torch.zeros(3, 4, 4)]) for _ in range(N)]
    for j, key in enumerate(("brightness_factor", "contrast_factor", "saturation_factor", "hue_factor")):
        assert np.abs(_quantiles(ours[:, j]) - _quantiles([p[key] for p in theirs])).max() < 0.03, key


@pytest.mark.parametrize("op", ["brightness", "contrast", "saturation", "hue"])
def test_color_ops_match_torchvision_pixels(op: str) -> None:
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    f = torch.tensor([0.6, 1.3, 0.9, 1.7]) if op != "hue" else torch.tensor([-0.3, -0.05, 0.1, 0.45])
    ours = getattr(P, op)(x, f)
    theirs = torch.stack([getattr(TF, f"adjust_{op}")(x[i], float(f[i])) for i in range(4)])
    assert (ours - theirs).abs().max() < 2e-3


def test_auto_augment_tables_match_torchvision() -> None:
    wide = autoaugment.TrivialAugmentWide()._augmentation_space(P.BINS)
    rand = autoaugment.RandAugment()._augmentation_space(P.BINS, (224, 224))
    for ours, theirs in ((P._space(True, (224, 224)), wide), (P._space(False, (224, 224)), rand)):
        assert list(ours) == list(theirs)
        for op, (mags, signed) in theirs.items():
            assert signed == ours[op][1], op
            assert torch.allclose(ours[op][0], mags.float().expand(P.BINS)), op


def test_trivial_augment_draws_ops_and_bins_uniformly() -> None:
    ops, mags = P.draw_ops(N * 3, "trivial", 2, 9, (224, 224), torch.Generator().manual_seed(0))
    counts = torch.bincount(ops[:, 0], minlength=len(P.OPS)).float() / len(ops)
    assert ops.shape == (N * 3, 1)
    assert (counts - 1 / len(P.OPS)).abs().max() < 0.015
    rot = mags[ops[:, 0] == P.OPS.index("Rotate"), 0]
    assert rot.min() >= -135
    assert rot.max() <= 135
    assert abs(float((rot < 0).float().mean()) - 0.5) < 0.06  # signed: as often left as right
    ops2, mags2 = P.draw_ops(100, "rand", 2, 9, (224, 224), torch.Generator().manual_seed(0))
    shear = mags2[ops2 == P.OPS.index("ShearX")].abs()
    assert ops2.shape == (100, 2)
    assert torch.allclose(shear, torch.full_like(shear, 0.3 * 9 / 30))


@pytest.mark.parametrize("op", ["Sharpness", "Posterize", "Solarize", "AutoContrast", "Equalize"])
def test_auto_augment_colour_ops_match_torchvision_pixels(op: str) -> None:
    x = (torch.rand(3, 3, 20, 20, generator=torch.Generator().manual_seed(2)) * 255).round().to(torch.uint8)
    m = {
        "Sharpness": torch.tensor([0.5, -0.7, 0.9]),
        "Posterize": torch.tensor([4.0, 6.0, 2.0]),
        "Solarize": torch.tensor([128.0, 40.0, 250.0]),
    }.get(op, torch.zeros(3))
    ours = (P.apply_op(x.float() / 255, op, m) * 255).round()
    fn = {
        "Sharpness": lambda i, v: TF.adjust_sharpness(i, 1 + v),
        "Posterize": lambda i, v: TF.posterize(i, int(v)),
        "Solarize": lambda i, v: TF.solarize(i, v),
        "AutoContrast": lambda i, v: TF.autocontrast(i),
        "Equalize": lambda i, v: TF.equalize(i),
    }[op]
    theirs = torch.stack([fn(x[i], float(m[i])) for i in range(3)]).float()
    assert (ours - theirs).abs().max() <= 1.0, op


def test_geometric_ops_move_pixels_as_torchvision() -> None:
    x = torch.zeros(1, 1, 32, 32)
    x[..., 10:14, 6:9] = 1.0
    moved = P.apply_op(x, "TranslateX", torch.tensor([5.0]))
    assert torch.allclose(moved[..., 10:14, 11:14], torch.ones(1, 1, 4, 3))
    theirs = TF.affine(x[0], angle=30.0, translate=[0, 0], scale=1.0, shear=[0.0, 0.0])
    ours = P.apply_op(x, "Rotate", torch.tensor([30.0]))[0]
    assert ((ours > 0.5) == (theirs > 0.5)).float().mean() > 0.97


def test_random_erasing_matches_torchvision() -> None:
    ours = G.erasing_boxes(N, (64, 48), 1.0, (0.02, 0.33), (0.3, 3.3), torch.Generator().manual_seed(0))
    t = v2.RandomErasing(p=1.0)
    theirs = [t.make_params([torch.zeros(3, 64, 48)]) for _ in range(N)]
    area = ours[:, 2] * ours[:, 3] / (64 * 48)
    assert np.abs(_quantiles(area) - _quantiles([p["h"] * p["w"] / (64 * 48) for p in theirs])).max() < 0.02
    none = G.erasing_boxes(N, (64, 48), 0.25, (0.02, 0.33), (0.3, 3.3), torch.Generator().manual_seed(0))
    assert abs(float((none[:, 2] > 0).float().mean()) - 0.25) < 0.03


def test_cutmix_box_and_lam() -> None:
    import random

    x = torch.zeros(8, 1, 40, 40)
    x[4:] = 1.0
    perm = torch.tensor([4, 5, 6, 7, 0, 1, 2, 3])
    out, mix = cutmix(x, 0.7, perm, random.Random(0))
    pasted = out[:4].mean((1, 2, 3))  # the pasted share of the zero images: 1 - lam, clipped at the border
    assert torch.allclose(pasted, torch.full((4,), 1 - mix.lam))
    assert 0.7 <= mix.lam <= 1.0


def _photo_transform(**augment: object) -> BatchTransform:
    spec = ImageSpec(3, (24, 24), "crop", crop_pct=0.75)  # resize_size 32, train canvas 48
    extents = torch.tensor([[32, 40], [40, 32], [32, 48], [32, 32]])
    return BatchTransform([0.5] * 3, [0.25] * 3, AugmentConfig(**augment), 0, spec=spec, extents=extents)


def test_a_view_depends_on_the_image_not_its_batch() -> None:
    t = _photo_transform(
        random_resized_crop={"scale": [0.3, 1]},
        hflip=True,
        color_jitter=0.3,
        auto_augment="trivial",
        random_erasing=0.5,
    )
    canvas = torch.randint(
        0, 256, (4, 3, 48, 48), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    whole = t.augmented(canvas, torch.arange(4), epoch=3, step=0)
    alone = t.augmented(canvas[[2, 0]], torch.tensor([2, 0]), epoch=3, step=7)  # other batch, other step
    assert whole.shape == (4, 3, 24, 24)
    assert torch.allclose(alone, whole[[2, 0]], atol=1e-5)
    assert not torch.allclose(t.augmented(canvas, torch.arange(4), 4, 0), whole)  # the next epoch: a new view
    cycled = _photo_transform(random_resized_crop=True, views=2)
    assert torch.equal(
        cycled.augmented(canvas, torch.arange(4), 1, 0), cycled.augmented(canvas, torch.arange(4), 3, 0)
    )


def test_the_centre_view_of_a_train_photo_is_what_evaluation_sees() -> None:
    t = _photo_transform()
    photo = torch.randint(
        0, 256, (1, 3, 32, 40), dtype=torch.uint8, generator=torch.Generator().manual_seed(3)
    )
    canvas = torch.zeros(1, 3, 48, 48, dtype=torch.uint8)
    canvas[:, :, :32, :40] = photo
    stored_eval = photo[:, :, :, 4:36]  # the evaluation square: the centre 32 x 32 ...
    assert torch.allclose(
        t.train_centre(canvas, torch.tensor([0])), t.eval(stored_eval), atol=1e-4
    )  # ... then 24
