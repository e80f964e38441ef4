"""kiln's defaults on photo folders ImageNet does not know, side by side with a linear probe and fastai, in
one run on this machine (folders: ``benchmarks/own_folders.py``; references: ``benchmarks/references.py``):

    python -m benchmarks.own_data [--only steel,digits] [--skip-fastai]     # or: make bench-own-data

For every folder, as a new user runs it: ``kiln new proj --template photos --data FOLDER``, then the
template's two commands unchanged (``kiln train -c config.yaml model.freeze=backbone``, the frozen recipe,
and ``kiln train -c config.yaml``, fine-tuning), each a whole process on a cold cache, with only the offline
weights file (and, for the multi-label CSV folder, its data.source and data.csv keys) added; ``kiln eval``
of the best checkpoint gives the test accuracy, balanced accuracy and mAP. Beside them: the linear probe (C
chosen on val) and fastai's ``fine_tune(3)``. Then, on the skewed folder, every imbalance option against the
default; and the cold whole process of ``configs/photos_fixed.yaml`` (hymenoptera).

Targets (issue 28): frozen >= probe - 1 point on every folder; fine-tune >= frozen - 1 point; kiln's best
default >= fastai's in <= 1/3 of its time; hymenoptera frozen >= 0.975 and its cold process <= 9 s; the
default's balanced accuracy on the skewed folder within 2 points of the best option.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import KILN_ENV, ROOT, SHARED
from benchmarks.own_folders import FOLDERS, IN_DOMAIN
from benchmarks.references import probe

WEIGHTS = Path(os.environ.get("KILN_WEIGHTS", SHARED / "tf_efficientnet_lite0_imagenet.safetensors"))
RESULTS = ROOT / "benchmarks" / "results" / "own_data.json"
ENV = {**KILN_ENV, "PYTHONPATH": f"{ROOT / 'src'}{os.pathsep}{ROOT}"}
IMBALANCE_OPTIONS = {
    "none": ["trainer.imbalance=off"],
    "class weights": ["trainer.class_weights=balanced"],
    "balanced sampler": ["data.sampler=balanced"],
    "logit adjusted": ["trainer.loss=logit_adjusted"],
}


def run(cmd: list[str], cwd: Path, log: Path) -> float:
    """Run ``cmd`` with its output going to ``log``; its wall seconds (a failure ends the benchmark)."""
    t0 = time.monotonic()
    with log.open("w") as out:
        proc = subprocess.run(cmd, cwd=cwd, env=ENV, stdout=out, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}):\n{log.read_text()[-3000:]}")
    return time.monotonic() - t0


def kiln(*args: str) -> list[str]:
    return [sys.executable, "-m", "kiln", *args]


def project(folder: Path, base: Path) -> tuple[Path, list[str]]:
    """A photos-template project on ``folder`` and the overrides every command needs here (offline weights;
    the CSV keys of the multi-label folder), in a new folder ``base``."""
    base.mkdir()
    run(kiln("new", "proj", "--template", "photos", "--data", str(folder)), base, base / "new.log")
    extra = [f"model.pretrained={WEIGHTS}", "trainer.progress=off"]
    if (folder / "train.csv").is_file():
        extra += ["data.source=csv", "data.csv.val=val.csv", "data.csv.multi_label=true"]
    return base / "proj", extra


def scores(report: dict[str, Any]) -> dict[str, float]:
    if "map_macro" in report:
        return {"map": report["map_macro"], "acc": report.get("subset_accuracy", float("nan"))}
    return {"acc": report["accuracy"], "balanced_accuracy": report["balanced_accuracy"]}


def train(proj: Path, extra: list[str], name: str, *overrides: str) -> dict[str, Any]:
    """``kiln train -c config.yaml OVERRIDES`` as a whole process on a cold cache, then ``kiln eval``."""
    cache = proj / f"cache-{name}"
    args = ["train", "-c", "config.yaml", f"run.name={name}", f"data.cache_dir={cache}", *extra, *overrides]
    seconds = run(kiln(*args), proj, proj / f"{name}.log")
    checkpoint = proj / "runs" / name / "checkpoints" / "best.pt"
    out = proj / "runs" / name / "eval"
    run(
        kiln("eval", "--checkpoint", str(checkpoint), "--out", str(out), *extra[:1]),
        proj,
        proj / f"{name}-eval.log",
    )
    return {**scores(json.loads((out / "report.json").read_text())), "seconds": seconds}


def fastai(folder: Path, log: Path) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.references", "fastai", str(folder), str(WEIGHTS)]
    seconds = run(cmd, ROOT, log)
    found = json.loads(log.read_text().strip().splitlines()[-1])
    return {**found, "seconds": seconds}


def monitor_of(folder_name: str, folder: Path) -> str:
    if (folder / "train.csv").is_file():
        return "map"
    return "balanced_accuracy" if "skewed" in folder_name else "acc"


def photos_fixed_cold(base: Path) -> dict[str, Any]:
    """configs/photos_fixed.yaml (hymenoptera, the README's ~10 s) as a whole process on a cold cache."""
    name = "photos_fixed"
    args = [
        "train",
        "-c",
        str(ROOT / "configs/photos_fixed.yaml"),
        f"run.dir={base / name}",
        f"data.cache_dir={base / 'cache-photos-fixed'}",
        f"model.pretrained={WEIGHTS}",
        "trainer.progress=off",
    ]
    seconds = run(kiln(*args), ROOT, base / f"{name}.log")
    summary = json.loads((base / name / "summary.json").read_text())
    return {"seconds": seconds, "val_acc": summary["best_metric"]}


def table(results: dict[str, Any]) -> str:
    head = "| folder | kiln frozen | kiln fine-tune | linear probe | fastai fine_tune(3) |"
    lines = [head, "| --- | --- | --- | --- | --- |"]
    for name, row in results["folders"].items():
        key = "map" if "map" in row["probe"] else "acc"

        def cell(r: dict[str, Any] | None, key: str = key) -> str:
            if r is None:
                return "—"
            second = f" / bal {r['balanced_accuracy']:.3f}" if "balanced_accuracy" in r else ""
            took = f" ({r['seconds']:.0f} s)" if "seconds" in r else ""
            return f"{key} {r[key]:.3f}{second}{took}"

        cells = [cell(row.get(k)) for k in ("frozen", "finetune", "probe", "fastai")]
        lines.append(f"| {name}{' (in-domain)' if name in IN_DOMAIN else ''} | {' | '.join(cells)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        default="",
        help="parts, comma-separated: folder names, imbalance, cold (default: all); others kept",
    )
    parser.add_argument("--skip-fastai", action="store_true")
    parser.add_argument("--skip-imbalance", action="store_true")
    args = parser.parse_args()
    parts = args.only.split(",") if args.only else [*FOLDERS, "imbalance", "cold"]
    wanted = [n for n in FOLDERS if n in parts]
    results: dict[str, Any] = {"folders": {}, "machine": f"{os.cpu_count()} CPU cores"}
    if args.only and RESULTS.is_file():  # a part run again: the others' results are kept
        results = json.loads(RESULTS.read_text())
    with tempfile.TemporaryDirectory() as tmp:
        for name in wanted:
            folder = FOLDERS[name]()
            base = Path(tmp) / name
            proj, extra = project(folder, base)
            row: dict[str, Any] = {"folder": str(folder.relative_to(ROOT))}
            row["frozen"] = train(proj, extra, "frozen", "model.freeze=backbone")
            row["finetune"] = train(proj, extra, "finetune")
            row["probe"] = probe(folder, WEIGHTS, monitor_of(name, folder))
            if not args.skip_fastai:
                row["fastai"] = fastai(folder, base / "fastai.log")
            results["folders"][name] = row
            print(json.dumps({name: row}), flush=True)
            RESULTS.write_text(json.dumps(results, indent=1))  # kept if a later folder fails
        if "imbalance" in parts and not args.skip_imbalance:
            proj, extra = project(FOLDERS["steel-skewed"](), Path(tmp) / "imbalance")
            results["imbalance"] = {
                f"{recipe} {option}": train(proj, extra, f"{recipe}-{i}", *frozen, *overrides)
                for recipe, frozen in (("frozen", ["model.freeze=backbone"]), ("fine-tune", []))
                for i, (option, overrides) in enumerate(IMBALANCE_OPTIONS.items())
            }
            print(json.dumps({"imbalance": results["imbalance"]}), flush=True)
            RESULTS.write_text(json.dumps(results, indent=1))
        if "cold" in parts:
            results["photos_fixed_cold"] = photos_fixed_cold(Path(tmp))
            print(json.dumps({"photos_fixed_cold": results["photos_fixed_cold"]}))
    RESULTS.write_text(json.dumps(results, indent=1))
    print(table(results))


if __name__ == "__main__":
    main()
