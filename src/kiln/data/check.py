"""``check(cfg)``: every data check over the whole dataset without training (``kiln check-data``): counts per
class and split, the class balance, and every bad file or row, named, all of them (not the first only)."""

from __future__ import annotations

from dataclasses import dataclass

from kiln.config import Config
from kiln.data.build import plan
from kiln.spec import Preset

SKEW = 3.0  # largest / smallest class above this: the report names the options for imbalanced data


@dataclass
class CheckReport:
    text: str  # the table and the problems, as printed
    problems: list[str]
    warnings: list[str]


def skew(counts: list[int]) -> float:
    """Largest class over smallest (classes with no images left out); 1.0 for none."""
    present = [c for c in counts if c]
    return max(present) / min(present) if present else 1.0


def balance(counts: list[int], classes: list[str]) -> tuple[str, list[str]]:
    """A line on the class distribution, and a warning when it is skewed."""
    present = [c for c in counts if c]
    if not present:
        return "class balance: no images", []
    ratio = skew(counts)
    big, small = counts.index(max(present)), counts.index(min(present))
    line = (
        f"class balance (train): largest {classes[big]} {max(present):,}, smallest {classes[small]} "
        f"{min(present):,} (ratio {ratio:.1f}:1)"
    )
    if ratio < SKEW:
        return line, []
    return line, [
        f"train classes are skewed {ratio:.1f}:1; kiln train weighs the classes balanced in the loss and "
        "keeps the checkpoint with the best val_balanced_accuracy (trainer.imbalance=auto); other options: "
        "data.sampler: balanced, trainer.loss: logit_adjusted (or balanced_softmax)"
    ]


def check(cfg: Config, preset: Preset | None = None) -> CheckReport:
    """``preset``: the pretrained weights' preprocessing, so the images are checked as training reads them."""
    # collect, don't stop: every problem of the whole dataset is listed
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"on_bad_sample": "skip"})})
    data_plan = plan(cfg.data, preset)
    raw, spec = data_plan.splits, data_plan.spec
    problems = list(raw.skipped)  # listing problems, and every unreadable file (plan() scans with skip)
    classes = data_plan.class_names
    resized = " (resized)" if spec.resize != "none" else ""
    lines = [
        f"classes ({len(classes)}): {', '.join(classes[:30])}{' ...' if len(classes) > 30 else ''}",
        f"images: {spec.channels} channel(s), {spec.size[0]}x{spec.size[1]}{resized}",
        *raw.notes,
    ]
    split_warnings: list[str] = []
    train_counts: list[int] = []
    header = ["split", "images", *classes[:12], *(["..."] if len(classes) > 12 else [])]
    rows = [header]
    for name in ("train", "val", "test"):
        split = data_plan.split(name)
        if split is None:
            continue
        counts = data_plan.counts(name)  # multi-label: the images that carry each label
        train_counts = counts if name == "train" else train_counts
        rows.append([name, str(len(split)), *[str(n) for n in counts[:12]]])
        empty = [c for c, n in zip(classes, counts, strict=True) if n == 0]
        if empty and name == "train":
            problems.append(f"{name}: classes with no images: {empty[:20]}")
        elif empty:
            split_warnings.append(
                f"{name}: no image of {empty[:20]}: its metrics leave these classes out (a larger "
                f"data.val_split, or a {name} split of your own that has them)"
            )
    if len(raw.train) < cfg.data.batch_size:
        split_warnings.append(
            f"train: {len(raw.train)} images, fewer than one batch ({cfg.data.batch_size}): training takes "
            f"batches of {len(raw.train)}"
        )
    widths = [max(len(r[c]) if c < len(r) else 0 for r in rows) for c in range(len(header))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=False)) for r in rows]
    line, skew = balance(train_counts, classes)
    warnings = split_warnings + skew
    lines.append(line)
    lines += [f"warning: {w}" for w in warnings]
    lines.append(f"problems: {len(problems)}" + "".join(f"\n  {p}" for p in problems))
    return CheckReport("\n".join(lines), problems, warnings)
