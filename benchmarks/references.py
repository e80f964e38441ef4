"""The references kiln's defaults are measured against in ``benchmarks/own_data.py``, written as their users
write them and independent of kiln's code:

- ``probe``: a linear probe. The backbone's centre-crop features through timm's own evaluation transform,
  scikit-learn's ``LogisticRegression`` (one-vs-rest for multi-label) with C swept over 0.01-10 and chosen on
  the val split by the metric kiln's checkpoint follows (accuracy; balanced accuracy for skewed classes;
  mAP for multi-label), measured on the test split.
- ``fastai``: fastai's documented recipe, ``vision_learner(dls, arch).fine_tune(3)`` on
  ``ImageDataLoaders`` with ``item_tfms=Resize(224)``, run in a process of its own (``python -m
  benchmarks.references fastai FOLDER WEIGHTS``). The weights are loaded by hand (offline), so the
  ImageNet normalisation ``vision_learner`` adds for pretrained models is added by hand too.

fastai is a benchmark-only dependency (``make bench-own-data`` installs it):
``pip install --no-deps fastai fastcore fastdownload fasttransform 'fastprogress<1.1'`` then
``pip install 'plum-dispatch<2.10'``.
"""

from __future__ import annotations

import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ARCH = "tf_efficientnet_lite0"
C_GRID = (0.01, 0.03, 0.1, 0.3, 1.0, 3.0, 10.0)
EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp")


def samples(folder: Path, split: str) -> tuple[list[Path], list[str]]:
    """(image paths, label strings) of a split: class folders, or a CSV of space-separated label names."""
    table = folder / f"{split}.csv"
    if table.is_file():
        with table.open() as f:
            rows = list(csv.DictReader(f))
        return [folder / r["filepath"] for r in rows], [r["label"] for r in rows]
    paths, labels = [], []
    for cls in sorted(p.name for p in (folder / split).iterdir() if p.is_dir()):
        for path in sorted((folder / split / cls).iterdir()):
            if path.suffix.lower() in EXTENSIONS:
                paths.append(path)
                labels.append(cls)
    return paths, labels


def splits(folder: Path) -> tuple[str, str]:
    """(the split C is chosen on, the split measured): val and test, or val twice without a test split."""
    has_test = (folder / "test").is_dir() or (folder / "test.csv").is_file()
    return "val", "test" if has_test else "val"


def backbone(weights: Path) -> torch.nn.Module:
    import timm
    from safetensors.torch import load_file

    model = timm.create_model(ARCH, pretrained=False, num_classes=0)
    state = {k: v for k, v in load_file(str(weights)).items() if not k.startswith("classifier.")}
    model.load_state_dict(state)
    return model.eval()


@torch.no_grad()
def centre_features(model: torch.nn.Module, paths: list[Path]) -> np.ndarray:
    import timm.data
    from PIL import Image

    transform = timm.data.create_transform(**timm.data.resolve_model_data_config(model))
    out = []
    for i in range(0, len(paths), 32):
        batch = torch.stack([transform(Image.open(p).convert("RGB")) for p in paths[i : i + 32]])
        out.append(model(batch).numpy())
    return np.concatenate(out)


def probe(folder: Path, weights: Path, monitor: str) -> dict[str, float]:
    """The linear probe on ``folder``: test accuracy and balanced accuracy (multi-label: mAP), the C chosen
    on val by ``monitor`` (acc, balanced_accuracy or map), and the seconds it took (features included)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import average_precision_score, balanced_accuracy_score
    from sklearn.multiclass import OneVsRestClassifier
    from sklearn.preprocessing import MultiLabelBinarizer

    t0 = time.perf_counter()
    torch.manual_seed(0)
    model = backbone(weights)
    select, measure = splits(folder)
    data = {split: samples(folder, split) for split in ("train", select, measure)}
    feats = {split: centre_features(model, paths) for split, (paths, _) in data.items()}
    multi = monitor == "map"
    if multi:
        binarizer = MultiLabelBinarizer().fit([s.split() for s in data["train"][1]])
        labels = {k: binarizer.transform([s.split() for s in v[1]]) for k, v in data.items()}
    else:
        labels = {k: np.asarray(v[1]) for k, v in data.items()}

    def fitted(c: float) -> object:
        clf = LogisticRegression(C=c, max_iter=5000)
        return (OneVsRestClassifier(clf) if multi else clf).fit(feats["train"], labels["train"])

    def scores(clf: object, split: str) -> dict[str, float]:
        x, y = feats[split], labels[split]
        if multi:
            probs = clf.predict_proba(x)
            present = y.sum(0) > 0
            return {"map": float(average_precision_score(y[:, present], probs[:, present], average="macro"))}
        pred = clf.predict(x)
        return {
            "acc": float((pred == y).mean()),
            "balanced_accuracy": float(balanced_accuracy_score(y, pred)),
        }

    fits = {c: fitted(c) for c in C_GRID}
    chosen = max(C_GRID, key=lambda c: scores(fits[c], select)[monitor])
    result = scores(fits[chosen], measure)
    return {**result, "C": chosen, "seconds": time.perf_counter() - t0}


def fastai_fine_tune(folder: Path, weights: Path) -> dict[str, float]:
    """fastai's documented fine_tune(3), measured on the test split (in this process: call it through
    ``python -m benchmarks.references fastai``, so its time is a whole process's)."""
    from fastai.vision.all import (
        ImageDataLoaders,
        Normalize,
        Resize,
        accuracy,
        accuracy_multi,
        vision_learner,
    )
    from sklearn.metrics import average_precision_score, balanced_accuracy_score

    torch.manual_seed(0)
    select, measure = splits(folder)
    train, val, test = samples(folder, "train"), samples(folder, select), samples(folder, measure)
    multi = (folder / "train.csv").is_file()
    import pandas as pd

    frame = pd.DataFrame(
        {
            "fname": [str(p) for p in train[0] + val[0]],
            "label": train[1] + val[1],
            "is_valid": [False] * len(train[0]) + [True] * len(val[0]),
        }
    )
    dls = ImageDataLoaders.from_df(
        frame,
        path="/",
        valid_col="is_valid",
        label_delim=" " if multi else None,
        item_tfms=Resize(224),
        batch_tfms=Normalize.from_stats([0.5] * 3, [0.5] * 3),  # timm's stats for these weights
    )
    learn = vision_learner(dls, ARCH, pretrained=False, metrics=accuracy_multi if multi else accuracy)
    from safetensors.torch import load_file

    body = learn.model[0].model  # fastai's TimmBody around the timm model
    state = {k: v for k, v in load_file(str(weights)).items() if not k.startswith("classifier.")}
    body.load_state_dict(state, strict=False)
    with learn.no_bar(), learn.no_logging():
        learn.fine_tune(3)
    dl = learn.dls.test_dl(
        pd.DataFrame({"fname": [str(p) for p in test[0]], "label": test[1]}), with_labels=True
    )
    probs, targets = learn.get_preds(dl=dl)
    if multi:
        y = targets.numpy()
        present = y.sum(0) > 0
        return {
            "map": float(average_precision_score(y[:, present], probs.numpy()[:, present], average="macro"))
        }
    pred, y = probs.argmax(1).numpy(), targets.numpy()
    return {"acc": float((pred == y).mean()), "balanced_accuracy": float(balanced_accuracy_score(y, pred))}


if __name__ == "__main__":
    if sys.argv[1] == "fastai":
        t0 = time.monotonic()
        found = fastai_fine_tune(Path(sys.argv[2]), Path(sys.argv[3]))
        print(json.dumps({**found, "seconds": time.monotonic() - t0}))
