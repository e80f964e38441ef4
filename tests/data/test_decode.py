"""Photos as a person sees them: EXIF orientation, CMYK, palette with transparency, 16-bit and grayscale
files, large JPEGs decoded at a reduced scale, and the three geometries (as is, squash, crop)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from kiln.data.decode import open_image, probe_file, to_mode
from kiln.errors import DataError
from kiln.spec import ImageSpec


def _gradient(w: int, h: int) -> Image.Image:
    x = np.linspace(0, 255, w, dtype=np.float32)[None, :].repeat(h, 0)
    y = np.linspace(0, 255, h, dtype=np.float32)[:, None].repeat(w, 1)
    return Image.fromarray(np.stack([x, y, 255 - x], -1).astype(np.uint8))


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    upright = _gradient(60, 40)  # landscape
    sideways = upright.transpose(Image.Transpose.ROTATE_90)  # how a phone stores it: 40 x 60
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to view"
    sideways.save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    spec = ImageSpec(3, (40, 60))
    arr, _ = open_image(tmp_path / "phone.jpg", spec)
    assert arr.shape == (3, 40, 60)
    assert probe_file(tmp_path / "phone.jpg", None) == (3, (40, 60))
    assert np.abs(arr.astype(int) - np.asarray(upright).transpose(2, 0, 1)).mean() < 6  # JPEG noise only


def test_modes_are_converted_properly() -> None:
    cmyk = Image.new("CMYK", (4, 4), (0, 255, 255, 0))  # pure red in CMYK
    assert np.asarray(to_mode(cmyk, 3))[0, 0].tolist() == [255, 0, 0]
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0] + [200, 10, 10] * 255)
    pal.putpixel((1, 1), 1)
    pal.info["transparency"] = 0  # index 0 (black) is transparent: shown over white, not black
    rgb = np.asarray(to_mode(pal, 3))
    assert rgb[0, 0].tolist() == [255, 255, 255]
    assert rgb[1, 1].tolist() == [200, 10, 10]
    deep = Image.fromarray(np.full((4, 4), 40000, np.uint16))  # 16-bit grey: 40000/65535 = 61 %
    assert np.asarray(to_mode(deep, 1))[0, 0] == 40000 >> 8  # not clipped to 255
    assert np.asarray(to_mode(Image.new("L", (2, 2), 77), 3))[0, 0].tolist() == [77, 77, 77]
    rgba = Image.new("RGBA", (2, 2), (10, 20, 30, 0))
    assert np.asarray(to_mode(rgba, 3))[0, 0].tolist() == [255, 255, 255]


def test_crop_geometry_train_canvas_and_eval_centre(tmp_path: Path) -> None:
    _gradient(400, 300).save(tmp_path / "p.png")
    spec = ImageSpec(3, (56, 56), "crop", crop_pct=0.875)  # resize_size 64: shorter side 300 -> 64
    ev, ev_ext = open_image(tmp_path / "p.png", spec, train=False)
    tr, tr_ext = open_image(tmp_path / "p.png", spec, train=True)
    assert spec.resize_size == (64, 64)
    assert ev.shape == (3, 64, 64)
    assert ev_ext == (64, 64)
    assert spec.stored(True) == (96, 96)
    assert tr.shape == (3, 96, 96)
    assert tr_ext == (64, 85)  # the whole photo
    assert (tr[:, 64:, :] == 0).all()  # the canvas around it is empty
    assert (tr[:, :, 85:] == 0).all()
    # the evaluation square is the centre of the train photo at the same scale
    assert np.abs(ev.astype(int) - tr[:, :64, 10:74].astype(int)).max() <= 1
    sq, _ = open_image(tmp_path / "p.png", ImageSpec(3, (32, 48), "squash"))
    assert sq.shape == (3, 32, 48)


def test_large_jpegs_are_drafted_to_a_reduced_scale_without_visible_change(tmp_path: Path) -> None:
    big = _gradient(2000, 1500)
    big.save(tmp_path / "big.jpg", quality=95)
    spec = ImageSpec(3, (224, 224), "crop", crop_pct=0.875)
    drafted, _ = open_image(tmp_path / "big.jpg", spec)
    full = Image.open(tmp_path / "big.jpg").convert("RGB").resize((341, 256), Image.BILINEAR)
    full = np.asarray(full).transpose(2, 0, 1)[:, :, 42:298]
    assert np.abs(drafted.astype(int) - full.astype(int)).mean() < 2.0
    with Image.open(tmp_path / "big.jpg") as im:
        im.draft("RGB", (256, 256))
        assert im.size == (500, 375)  # decoded at 1/4 scale: 16x fewer pixels


def test_unreadable_and_misshapen_files_are_named(tmp_path: Path) -> None:
    (tmp_path / "bad.jpg").write_bytes(b"nope")
    with pytest.raises(DataError, match="bad.jpg: cannot read image"):
        open_image(tmp_path / "bad.jpg", ImageSpec(3, (8, 8)))
    Image.new("RGB", (9, 8)).save(tmp_path / "odd.png")
    with pytest.raises(
        DataError, match="odd.png: image is 9x8 but the first one is 8x8; set data.resize=crop"
    ):
        open_image(tmp_path / "odd.png", ImageSpec(3, (8, 8)))
    buf = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buf, "PNG")
    (tmp_path / "trunc.png").write_bytes(buf.getvalue()[:30])
    with pytest.raises(DataError, match="trunc.png: cannot read image"):
        open_image(tmp_path / "trunc.png", ImageSpec(3, (8, 8)))
