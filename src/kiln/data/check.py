"""``check(cfg)``: every data check over the whole dataset without training (``kiln check-data``): counts
per class and split, and every bad file or row, named."""

from __future__ import annotations

import collections
from dataclasses import dataclass

from kiln.config import Config
from kiln.data import default_workers, image_spec
from kiln.data.sources import list_source


@dataclass
class CheckReport:
    text: str  # the table and the problems, as printed
    problems: list[str]


def check(cfg: Config) -> CheckReport:
    cfg = cfg.model_copy(
        update={"data": cfg.data.model_copy(update={"on_bad_sample": "skip"})}
    )  # collect, don't stop
    raw = list_source(cfg.data)
    problems = list(raw.skipped)
    spec = image_spec(cfg.data, raw.train)
    lines = [
        f"classes ({len(raw.classes)}): {', '.join(raw.classes[:30])}{' ...' if len(raw.classes) > 30 else ''}",
        f"images: {spec.channels} channel(s), {spec.size[0]}x{spec.size[1]}{' (resized)' if spec.resize != 'none' else ''}",
    ]
    header = ["split", "images", *raw.classes[:12], *(["..."] if len(raw.classes) > 12 else [])]
    rows = [header]
    for name, split in (("train", raw.train), ("val", raw.val), ("test", raw.test)):
        if split is None:
            continue
        problems += [msg for _, msg in split.scan(spec, default_workers(cfg.data))]
        counts = collections.Counter(split.labels)
        rows.append(
            [name, str(len(split)), *[str(counts.get(i, 0)) for i in range(min(12, len(raw.classes)))]]
        )
        empty = [c for i, c in enumerate(raw.classes) if counts.get(i, 0) == 0]
        if empty and name == "train":
            problems.append(f"{name}: classes with no images: {empty}")
    if len(raw.train) < cfg.data.batch_size:
        problems.append(f"train: {len(raw.train)} images, fewer than one batch ({cfg.data.batch_size})")
    widths = [max(len(r[c]) if c < len(r) else 0 for r in rows) for c in range(len(header))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths, strict=False)) for r in rows]
    lines.append(f"problems: {len(problems)}" + "".join(f"\n  {p}" for p in problems))
    return CheckReport("\n".join(lines), problems)
