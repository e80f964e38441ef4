"""``kiln audit`` against faults injected into real photos (issue 31): labels flipped at random and to a
confusable class, near-duplicate copies of train photos put into val and test (resized, re-encoded,
slightly cropped, mirrored, recoloured), then precision and recall of each finding recomputed from the
CSVs the audit writes; the audit's time against the feature pass; CIFAR-10's test images with a near twin
in train (ciFAIR reports 3.3 %); and a retrain with ``data.exclude`` from the audit, side by side with the
run on the faulty folder.

    python -m benchmarks.audit [--only imagenette,steel,cifar10,retrain] [--per-class N]

Writes benchmarks/results/audit.json (parts merged into what is there) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from PIL import Image, ImageEnhance, ImageOps

from benchmarks.common import ROOT, SHARED
from benchmarks.own_folders import files, unpacked
from benchmarks.references import backbone, centre_features

WEIGHTS = SHARED / "tf_efficientnet_lite0_imagenet.safetensors"
RESULTS = ROOT / "benchmarks" / "results" / "audit.json"
WORK = ROOT / "data" / "audit"


def near_copy(src: Path, dest: Path, how: int) -> None:
    """A near duplicate of ``src``, made one of five ways a photo gets copied."""
    image = Image.open(src).convert("RGB")
    w, h = image.size
    if how == 0:  # resized to 60 % and re-encoded hard
        image = image.resize((max(8, int(w * 0.6)), max(8, int(h * 0.6))), Image.BICUBIC)
    elif how == 1:  # a 90 % crop, off centre
        image = image.crop((int(w * 0.07), int(h * 0.03), int(w * 0.97), int(h * 0.93)))
    elif how == 2:  # mirrored
        image = ImageOps.mirror(image)
    elif how == 3:  # brighter and more saturated
        image = ImageEnhance.Color(ImageEnhance.Brightness(image).enhance(1.15)).enhance(1.2)
    image.save(dest, "JPEG", quality=45 if how in (0, 4) else 85)


def confusable_classes(classes: list[str], train: Path, photos: list[Path]) -> dict[Path, str]:
    """For each photo, the other class whose mean feature (of 20 of its train photos; the pretrained
    backbone, benchmarks/references.py, independent of kiln) is nearest its own feature: the mistake a
    person filing look-alike photos makes."""
    import numpy as np

    model = backbone(WEIGHTS)
    centroids = np.stack([centre_features(model, files(train / c)[:20]).mean(0) for c in classes])
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
    feats = centre_features(model, photos)
    feats /= np.linalg.norm(feats, axis=1, keepdims=True)
    likest = {}
    for photo, f in zip(photos, feats, strict=True):
        sims = centroids @ f
        sims[classes.index(photo.parent.name)] = -np.inf
        likest[photo] = classes[int(sims.argmax())]
    return likest


def faulty_folder(name: str, source: Path, per_class: int, held_per_class: int, seed: int = 0) -> dict:
    """``per_class`` train and ``held_per_class`` val and test photos per class of ``source`` (class
    folders) copied into data/audit/<name>/, then: 5 % of train labels flipped at random, 5 % to the
    class the photo looks likest (``confusable_classes``), and 4 % of val and test as near copies of train
    photos. Returns the ground truth."""
    rng = random.Random(seed)
    dest = WORK / name
    if dest.exists():
        shutil.rmtree(dest)
    classes = sorted(p.name for p in source.iterdir() if p.is_dir())
    truth: dict[str, Any] = {"flipped_random": {}, "flipped_confusable": {}, "leaks": []}
    for cls in classes:
        photos = files(source / cls)
        rng.shuffle(photos)
        splits = {
            "train": photos[:per_class],
            "val": photos[per_class : per_class + held_per_class],
            "test": photos[per_class + held_per_class : per_class + 2 * held_per_class],
        }
        for split, chosen in splits.items():
            (dest / split / cls).mkdir(parents=True, exist_ok=True)
            for path in chosen:
                shutil.copyfile(path, dest / split / cls / path.name)
    train = [(cls, p) for cls in classes for p in files(dest / "train" / cls)]
    picked = rng.sample(train, int(0.10 * len(train)))
    likest = confusable_classes(classes, dest / "train", [p for _, p in picked[1::2]])
    for n, (cls, path) in enumerate(picked):
        confusable = n % 2 == 1
        others = [c for c in classes if c != cls]
        given = likest[path] if confusable else rng.choice(others)
        moved = dest / "train" / given / path.name
        path.rename(moved)
        kind = "flipped_confusable" if confusable else "flipped_random"
        truth[kind][str(moved)] = cls
    originals = [p for _, p in train if p.exists()]
    for split in ("val", "test"):
        held = sum(len(files(dest / split / c)) for c in classes)
        for n, original in enumerate(rng.sample(originals, max(1, int(0.04 * held)))):
            cls = original.parent.name
            copy = dest / split / cls / f"copy{n}_{original.stem}.jpg"
            near_copy(original, copy, n % 5)
            truth["leaks"].append([str(copy), str(original)])
    (WORK / f"{name}-truth.json").write_text(json.dumps(truth, indent=1))
    return truth


def kiln(*args: str, log: Path) -> float:
    import subprocess

    t0 = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.run(
            [sys.executable, "-m", "kiln", *args], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT
        )
    if proc.returncode:
        raise SystemExit(f"kiln {' '.join(args)} failed:\n{log.read_text()[-3000:]}")
    return time.monotonic() - t0


def config(name: str, folder: Path | None = None) -> Path:
    """A photos-template project on ``folder`` (default: the faulty folder ``name``), as a new user makes
    it; its config.yaml."""
    project = WORK / f"{name}-project"
    if project.exists():
        shutil.rmtree(project)
    data = folder or WORK / name
    kiln("new", str(project), "--template", "photos", "--data", str(data), log=WORK / f"{name}-new.log")
    return project / "config.yaml"


def audit(cfg: Path, out: Path, cache: Path, *extra: str) -> tuple[float, dict[str, Any]]:
    """``kiln audit`` as a whole process into a new ``out``: its seconds and audit.json."""
    shutil.rmtree(out, ignore_errors=True)
    common = [f"model.pretrained={WEIGHTS}", "trainer.progress=off", f"data.cache_dir={cache}"]
    seconds = kiln("audit", "-c", str(cfg), "--out", str(out), *common, *extra, log=out.with_suffix(".log"))
    return seconds, json.loads((out / "audit.json").read_text())


def read(path: Path) -> list[dict[str, str]]:
    with path.open() as f:
        return list(csv.DictReader(f))


def precision_recall(found: set, truth: set) -> dict[str, float]:
    hits = len(found & truth)
    return {
        "precision": round(hits / len(found), 3) if found else 1.0,
        "recall": round(hits / len(truth), 3) if truth else 1.0,
        "found": len(found),
        "injected": len(truth),
    }


def score(out: Path, truth: dict[str, Any]) -> dict[str, Any]:
    """Precision and recall of the audit's CSVs against the injected faults (paths compared resolved)."""
    real = lambda p: str(Path(p).resolve())  # noqa: E731
    issues = {real(r["path"]) for r in read(out / "label_issues.csv") if r["split"] == "train"}
    flipped = {real(p) for kind in ("flipped_random", "flipped_confusable") for p in truth[kind]}
    leaks_found = {
        (real(r["path"]), real(r["other"]))
        for r in read(out / "duplicates.csv")
        if r["split"] != r["other_split"]
    }
    leaks = {(real(a), real(b)) for a, b in truth["leaks"]}
    return {
        "label_errors": precision_recall(issues, flipped),
        "label_errors_random": precision_recall(issues, {real(p) for p in truth["flipped_random"]}),
        "label_errors_confusable": precision_recall(issues, {real(p) for p in truth["flipped_confusable"]}),
        "cross_split_duplicates": precision_recall(leaks_found, leaks),
    }


def audited(name: str, source: Path, per_class: int, held: int) -> dict[str, Any]:
    truth = faulty_folder(name, source, per_class, held)
    cfg = config(name)
    out = WORK / f"{name}-audit"
    cold, summary = audit(cfg, out, WORK / "cache")
    _, warm = audit(cfg, WORK / f"{name}-audit-warm", WORK / "cache")
    return {
        **score(out, truth),
        "images": summary["images"],
        "cold_seconds": round(cold, 1),
        "feature_pass_seconds": summary["features_seconds"],
        "warm_findings_seconds": warm["findings_seconds"],
        "warm_features_seconds": warm["features_seconds"],
        "config": str(cfg),
        "audit": str(out),
    }


def timing() -> dict[str, Any]:
    """The audit on the whole of imagenette (9,469 train and 3,925 val photos) as a photos-template project:
    cold (a new cache: the feature pass included) and warm (the features cached by the cold run)."""
    cfg = config("imagenette-full", unpacked("imagenette", "imagenette-jpeg.tar.gz"))
    cache = WORK / "cache-full"
    shutil.rmtree(cache, ignore_errors=True)
    out: dict[str, Any] = {}
    for name in ("cold", "warm"):
        seconds, summary = audit(cfg, WORK / f"full-audit-{name}", cache)
        out[name] = {"seconds": round(seconds, 1), "features_seconds": summary["features_seconds"]}
        out[name]["findings_seconds"] = summary["findings_seconds"]
        out["images"] = summary["images"]
        found = ("leaks", "duplicate_pairs_within_splits", "label_issues", "outliers")
        out["findings"] = {k: summary[k] for k in found}
    feature_pass = out["cold"]["features_seconds"] - out["warm"]["features_seconds"]  # less building the run
    out["feature_pass_seconds"] = round(feature_pass, 1)
    out["warm_over_feature_pass"] = round(out["warm"]["seconds"] / feature_pass, 3)
    out["cold_over_feature_pass"] = round(out["cold"]["seconds"] / feature_pass, 3)
    return out


def cifar10() -> dict[str, Any]:
    """CIFAR-10's test images with a near twin in train (ciFAIR, Barz and Denzler 2020: 3.3 %), by the
    audit of a photos-template project on the JPEG copy, at 96 px (the 32 px photos upscaled; 224 px would
    take the feature pass from ~10 to ~40 minutes here)."""
    cfg = config("cifar10", unpacked("cifar10", "cifar10-jpeg.tar.gz"))
    target = WORK / "cifar10-audit"
    seconds, summary = audit(cfg, target, WORK / "cache", "data.image_size=96")
    held = summary["held_out_with_twin_in_train"]
    test = summary["images"]["test"]
    return {
        "test_images": test,
        "with_twin_in_train": held["test"],
        "percent": round(100 * held["test"] / test, 2),
        "seconds": round(seconds, 1),
        "gallery": str(target / "audit.html"),
        "images": summary["images"],
    }


def retrain(name: str = "imagenette") -> dict[str, Any]:
    """The template's first command (the frozen recipe) on the label-flipped folder, then again without the
    train images label_issues.csv names (data.exclude): test accuracy side by side, on the same test split
    (its copies of train photos kept in both)."""
    cfg = WORK / f"{name}-project" / "config.yaml"
    issues = read(WORK / f"{name}-audit" / "label_issues.csv")
    exclude = WORK / f"{name}-train-issues.txt"
    exclude.write_text("".join(f"{r['path']}\n" for r in issues if r["split"] == "train"))
    common = [f"model.pretrained={WEIGHTS}", "trainer.progress=off", f"data.cache_dir={WORK / 'cache'}"]
    out: dict[str, Any] = {"excluded_images": len(exclude.read_text().splitlines())}
    for run, extra in (("faulty", []), ("excluded", [f"data.exclude={exclude}"])):
        run_dir = WORK / f"{name}-{run}-run"
        shutil.rmtree(run_dir, ignore_errors=True)
        args = ["train", "-c", str(cfg), f"run.dir={run_dir}", "model.freeze=backbone", *common, *extra]
        seconds = kiln(*args, log=WORK / f"{name}-{run}.log")
        summary = json.loads((run_dir / "summary.json").read_text())
        out[run] = {"test_accuracy": summary["test"]["accuracy"], "seconds": round(seconds, 1)}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only", default="", help="parts, comma-separated: imagenette, steel, timing, cifar10, retrain"
    )
    parser.add_argument("--per-class", type=int, default=100, help="train photos per class (default 100)")
    args = parser.parse_args()
    only = set(filter(None, args.only.split(",")))
    results = json.loads(RESULTS.read_text()) if RESULTS.is_file() else {}
    WORK.mkdir(parents=True, exist_ok=True)
    parts = {
        "imagenette": lambda: audited(
            "imagenette", unpacked("imagenette", "imagenette-jpeg.tar.gz") / "train", args.per_class, 30
        ),
        "steel": lambda: audited(
            "steel", unpacked("neu-steel", "neu-steel-jpeg.tar.gz") / "train", args.per_class, 30
        ),
        "retrain": retrain,
        "timing": timing,
        "cifar10": cifar10,
    }
    for name, part in parts.items():
        if not only or name in only:
            results[name] = part()
            print(json.dumps({name: results[name]}), flush=True)
            RESULTS.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
