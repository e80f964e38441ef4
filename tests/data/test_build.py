"""Planning a dataset before any pixel is decoded: the spec, channels that follow the pretrained weights,
class names for class ids, and loaders that decode only when the pixels are needed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kiln.config import DataConfig
from kiln.data import Preset, build, plan
from kiln.errors import DataError
from tests.conftest import write_png_folder

RGB_WEIGHTS = Preset("weights", (16, 16), 0.875, "bilinear", (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _gray(tmp_path: Path) -> Path:
    return write_png_folder(tmp_path / "gray", ["a", "b"], per_class=6, size=16, mode="L")


def test_grayscale_photos_become_rgb_for_rgb_weights(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data_plan = plan(DataConfig(source="folder", root=str(_gray(tmp_path))), RGB_WEIGHTS)
    assert data_plan.spec.channels == 3
    assert "the images are grayscale; the pretrained weights take 3 channels" in capsys.readouterr().out


def test_grayscale_photos_train_with_rgb_weights(tmp_path: Path) -> None:
    cfg = DataConfig(source="folder", root=str(_gray(tmp_path)), batch_size=4, cache_dir=str(tmp_path / "c"))
    data = build(cfg, 0, torch.device("cpu"), preset=RGB_WEIGHTS)
    assert next(iter(data.train))[0].shape[1] == 3
    assert data.preprocess.mean == (0.5, 0.5, 0.5)


def test_the_config_can_keep_them_gray(tmp_path: Path) -> None:
    data_plan = plan(DataConfig(source="folder", root=str(_gray(tmp_path)), channels=1), RGB_WEIGHTS)
    assert data_plan.spec.channels == 1


def test_class_names_from_a_file_of_id_name_lines(tmp_path: Path) -> None:
    root = write_png_folder(tmp_path / "imgs", ["n01440764", "n02102040"], per_class=4)
    (tmp_path / "names.txt").write_text("n01440764 tench, Tinca tinca\nn02102040 English springer\n")
    data_plan = plan(DataConfig(source="folder", root=str(root), class_names=str(tmp_path / "names.txt")))
    assert data_plan.class_names == ["tench, Tinca tinca", "English springer"]
    assert data_plan.classes == ["n01440764", "n02102040"]  # the ids stay the labels


def test_class_names_one_per_line_in_label_order(tmp_path: Path) -> None:
    root = write_png_folder(tmp_path / "imgs", ["p1", "p2"], per_class=4)
    (tmp_path / "names.txt").write_text("red shoe\nblue shoe\n")
    data_plan = plan(DataConfig(source="folder", root=str(root), class_names=str(tmp_path / "names.txt")))
    assert data_plan.class_names == ["red shoe", "blue shoe"]


def test_class_names_from_a_csv_and_a_mapping(tmp_path: Path) -> None:
    root = write_png_folder(tmp_path / "imgs", ["p1", "p2"], per_class=4)
    (tmp_path / "names.csv").write_text("id,name\np2,blue shoe\np1,red shoe\n")
    assert plan(
        DataConfig(source="folder", root=str(root), class_names=str(tmp_path / "names.csv"))
    ).class_names == ["red shoe", "blue shoe"]
    mapping = plan(DataConfig(source="folder", root=str(root), class_names={"p1": "red"})).class_names
    assert mapping == ["red", "p2"]  # a class the mapping leaves out keeps its id


def test_a_class_names_line_without_a_name_is_named(tmp_path: Path) -> None:
    root = write_png_folder(tmp_path / "imgs", ["p1", "p2"], per_class=4)
    (tmp_path / "names.txt").write_text("p1 red\np2\n")
    with pytest.raises(DataError, match=r"names.txt:2: 'p2' has no name after it"):
        plan(DataConfig(source="folder", root=str(root), class_names=str(tmp_path / "names.txt")))


def test_nothing_is_decoded_until_the_pixels_are_needed(tmp_path: Path) -> None:
    root = write_png_folder(tmp_path / "imgs", ["a", "b"], per_class=6)
    cache = tmp_path / "cache"
    data = build(
        DataConfig(
            source="folder",
            root=str(root),
            batch_size=4,
            cache_dir=str(cache),
            mean=(0.5,) * 3,
            std=(0.5,) * 3,
        ),
        0,
        torch.device("cpu"),
    )
    assert not list(cache.glob("images-*.npy"))  # planned and loaded, not decoded
    next(iter(data.train))
    assert len(list(cache.glob("images-*.npy"))) == 1  # the train split, on its first batch


def test_a_carved_val_split_holds_every_class() -> None:
    from kiln.data.build import stratified

    labels = [0] * 60 + [1] * 30 + [2] * 3
    held = stratified(labels, 0.1, torch.Generator().manual_seed(0))
    assert sorted({labels[i] for i in held}) == [0, 1, 2]


def test_a_carved_val_split_keeps_each_class_share() -> None:
    from kiln.data.build import stratified

    labels = [0] * 60 + [1] * 30 + [2] * 10
    held = stratified(labels, 0.2, torch.Generator().manual_seed(0))
    assert [sum(labels[i] == k for i in held) for k in range(3)] == [12, 6, 2]


def test_a_carved_multi_label_val_split_holds_every_label() -> None:
    from kiln.data.build import stratified

    labels = [(0,)] * 50 + [(0, 1)] * 20 + [(2,)] * 2 + [()] * 10
    held = stratified(labels, 0.05, torch.Generator().manual_seed(0))
    assert {k for i in held for k in labels[i]} == {0, 1, 2}


def test_a_class_of_one_image_stays_in_train() -> None:
    from kiln.data.build import stratified

    labels = [0] * 40 + [1]
    held = stratified(labels, 0.1, torch.Generator().manual_seed(0))
    assert 40 not in held


def test_photos_of_the_weights_size_still_resize_one_of_another_size(tmp_path: Path) -> None:
    """The first image is the weights' 16 px; another is 20 px: photos for pretrained weights are resized
    as the weights were trained, whatever the first image's size (it used to be refused)."""
    root = write_png_folder(tmp_path / "imgs", ["a", "b"], per_class=4, size=16)
    write_png_folder(tmp_path / "imgs", ["b"], per_class=1, size=20, seed=1)  # overwrites b/0.png
    cfg = DataConfig(source="folder", root=str(root), batch_size=4, cache_dir=str(tmp_path / "c"))
    data = build(cfg, 0, torch.device("cpu"), preset=RGB_WEIGHTS)
    data.train.materialize()  # every train image decoded: the 20 px one too
    assert data.transform.eval(next(iter(data.test))[0]).shape[1:] == (3, 16, 16)
