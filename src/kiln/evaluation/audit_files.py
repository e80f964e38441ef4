"""What ``kiln audit`` writes: duplicates.csv, label_issues.csv, outliers.csv (every path as the data
source lists it, the likeliest problem first), exclude.txt (the paths ``data.exclude`` would leave out),
and one self-contained audit.html with the images side by side as data: URIs."""

from __future__ import annotations

import base64
import csv
import html
import io
from pathlib import Path
from typing import Any

import torch

from kiln.console import log
from kiln.metrics import audit as rules
from kiln.metrics import twins

SHOWN = 60  # rows of each finding drawn in audit.html (the CSVs hold them all)
THUMB = 112  # px, the longer side of a thumbnail

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;
color:#222}
.cards{display:flex;gap:1rem;flex-wrap:wrap;margin:1.2rem 0}
.card{background:#f4f6fa;border-radius:10px;padding:.8rem 1.2rem;min-width:9rem}
.card b{display:block;font-size:1.6rem} .card span{color:#555;font-size:.85rem}
.row{display:flex;gap:.8rem;align-items:center;border-bottom:1px solid #eee;padding:.4rem 0;font-size:.85rem}
.row img{border:1px solid #ddd;border-radius:4px} code{background:#f4f4f4;padding:.1rem .3rem}
"""


class Thumbs:
    """JPEG thumbnails of split images as data: URIs, read from the loaders the features came from."""

    def __init__(self, views: list[Any]) -> None:
        self.views = {v.name: v for v in views}

    def uri(self, split: str, index: int) -> str:
        from PIL import Image

        image = self.views[split].loader.images_at(torch.tensor([index]))[0]
        array = image.permute(1, 2, 0).squeeze(-1).cpu().numpy() if image.dtype == torch.uint8 else None
        if array is None:  # float data: shown on its own range
            low, high = float(image.min()), float(image.max())
            array = ((image - low) / max(high - low, 1e-6) * 255).byte().permute(1, 2, 0).squeeze(-1).numpy()
        picture = Image.fromarray(array)
        picture.thumbnail((THUMB, THUMB))
        buffer = io.BytesIO()
        picture.convert("RGB").save(buffer, "JPEG", quality=80)
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()

    def img(self, split: str, index: int) -> str:
        return f'<img src="{self.uri(split, index)}" alt="">'


def names_of(label: torch.Tensor, names: list[str]) -> str:
    """A class name, or (multi-label, a 0/1 row) the names of the labels present joined by ';'."""
    if label.dim() == 0:
        return names[int(label)]
    return ";".join(names[i] for i in torch.nonzero(label).flatten().tolist())


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)


def label_rows(views: list[Any], issues: rules.LabelIssues, names: list[str]) -> list[list[Any]]:
    """Flagged images, the likeliest error first: path, split, given, suggested, score, and (for the page)
    split and position."""
    places = [(v, i) for v in views for i in range(len(v.ids))]
    flagged = torch.nonzero(issues.flagged).flatten().tolist()
    flagged.sort(key=lambda n: -float(issues.score[n]))
    rows = []
    for n in flagged:
        view, i = places[n]
        given, suggested = names_of(view.labels[i], names), names_of(issues.suggested[n], names)
        rows.append([view.ids[i], view.name, given, suggested, round(float(issues.score[n]), 4), i])
    return rows


def write(
    out: Path,
    views: list[Any],
    pairs: list[twins.Pair],
    issues: rules.LabelIssues,
    scores: list[torch.Tensor],
    cut: float,
    names: list[str],
    config_path: str | None,
    paths: bool,
) -> dict[str, Any]:
    """Every file of the audit; returns the summary audit.json holds."""
    ids = {v.name: v.ids for v in views}
    dup_rows = [
        [ids[p.split][p.index], ids[p.other_split][p.other_index], round(p.similarity, 4)]
        + [round(p.features, 4), "exact" if p.exact else "near", p.split, p.other_split]
        for p in pairs
    ]
    write_csv(
        out / "duplicates.csv",
        ["path", "other", "similarity", "features", "kind", "split", "other_split"],
        dup_rows,
    )
    labels = label_rows(views, issues, names)
    write_csv(
        out / "label_issues.csv", ["path", "split", "given", "suggested", "score"], [r[:5] for r in labels]
    )
    odd = [
        [v.ids[i], v.name, round(float(s[i]), 4), names_of(v.labels[i], names), i]
        for v, s in zip(views, scores, strict=True)
        for i in torch.nonzero(s > cut).flatten().tolist()
    ]
    odd.sort(key=lambda r: -r[2])
    write_csv(out / "outliers.csv", ["path", "split", "score", "label"], [r[:4] for r in odd])
    leaks = [p for p in pairs if p.leak]
    exclude = list(dict.fromkeys([r[0] for r in labels] + [ids[p.split][p.index] for p in leaks]))
    (out / "exclude.txt").write_text("".join(f"{path}\n" for path in exclude))
    summary = {
        "images": {v.name: len(v.ids) for v in views},
        "leaks": len(leaks),
        "held_out_with_twin_in_train": {
            v.name: len({p.index for p in leaks if p.split == v.name and p.other_split == "train"})
            for v in views[1:]
        },
        "duplicate_pairs_within_splits": len(pairs) - len(leaks),
        "label_issues": len(labels),
        "outliers": len(odd),
        "twin_score": twins.TWIN_SCORE,
        "outlier_cut": round(cut, 4),
        "exclude": str(out / "exclude.txt"),
    }
    config = config_path or "CONFIG"
    command = f"kiln train -c {config} data.exclude={(out / 'exclude.txt').resolve()}" if paths else None
    within = summary["duplicate_pairs_within_splits"]
    log(
        f"kiln: {summary['leaks']:,} val/test images with a near twin in an earlier split, {within:,} twin "
        f"pairs within splits, {len(labels):,} likely label errors, {len(odd):,} outliers -> {out}"
    )
    if command:
        left = f"the {len(exclude):,} images in exclude.txt (leaks, label issues)"
        log(f"kiln: to train without {left}: {command}")
    else:
        log("kiln: data.exclude needs file paths (a folder or CSV source): this source's images have none")
    summary["command"] = command
    (out / "audit.html").write_text(page(summary, views, pairs, labels, odd))
    return summary


def page(summary: dict[str, Any], views: list[Any], pairs: list[twins.Pair], labels: list, odd: list) -> str:
    e = html.escape
    thumbs = Thumbs(views)
    ids = {v.name: v.ids for v in views}
    cards = "".join(
        f'<div class="card"><b>{value:,}</b><span>{e(label)}</span></div>'
        for label, value in [
            *((f"{name} images", n) for name, n in summary["images"].items()),
            ("val/test images with a twin in an earlier split", summary["leaks"]),
            ("twin pairs within a split", summary["duplicate_pairs_within_splits"]),
            ("likely label errors", summary["label_issues"]),
            ("outliers", summary["outliers"]),
        ]
    )
    twins = "".join(
        f'<div class="row">{thumbs.img(p.split, p.index)}{thumbs.img(p.other_split, p.other_index)}'
        f"<div><b>{p.split} / {p.other_split}</b>, similarity {p.similarity:.4f}"
        f"{' (exact)' if p.exact else ''}<br>{e(ids[p.split][p.index])}"
        f"<br>{e(ids[p.other_split][p.other_index])}"
        "</div></div>"
        for p in pairs[:SHOWN]
    )
    errors = "".join(
        f'<div class="row">{thumbs.img(r[1], r[5])}<div>given <b>{e(r[2])}</b>, likely <b>{e(r[3])}</b> '
        f"(score {r[4]:.3f})<br>{e(r[0])}</div></div>"
        for r in labels[:SHOWN]
    )
    far = "".join(
        f'<div class="row">{thumbs.img(r[1], r[4])}<div>{e(r[1])}, labelled <b>{e(r[3])}</b>, kNN distance '
        f"{r[2]:.3f}<br>{e(r[0])}</div></div>"
        for r in odd[:SHOWN]
    )
    command = summary["command"]
    act = (
        f"<p>Train without the flagged leaks and label issues: <code>{e(command)}</code></p>"
        if command
        else ""
    )
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>kiln audit</title><style>{CSS}</style>"
        f"</head><body><h1>Data audit</h1><div class='cards'>{cards}</div>{act}"
        f"<h2>Near duplicates (leaks between splits first)</h2>{twins or '<p>none</p>'}"
        f"<h2>Likely label errors</h2>{errors or '<p>none</p>'}"
        f"<h2>Outliers</h2>{far or '<p>none</p>'}</body></html>"
    )
