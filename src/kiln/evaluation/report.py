"""One self-contained HTML page: headline numbers, the per-class table (worst F1 first) and the figures
embedded as data: URIs, so it opens anywhere with no network and no companion files."""

from __future__ import annotations

import base64
import html as _html
import json
from typing import Any

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;
color:#222}
h1{font-size:1.5rem;margin-bottom:.2rem} .sub{color:#666;margin-top:0}
.cards{display:flex;gap:1rem;flex-wrap:wrap;margin:1.2rem 0}
.card{background:#f4f6fa;border-radius:10px;padding:.8rem 1.2rem;min-width:9rem}
.card b{display:block;font-size:1.6rem} .card span{color:#555;font-size:.85rem}
table{border-collapse:collapse;width:100%;font-size:.9rem} th,td{padding:.3rem .6rem;text-align:right}
th:first-child,td:first-child{text-align:left} tr:nth-child(even){background:#f8f8f8}
thead th{border-bottom:2px solid #ccc} td.bar{width:30%} .b{background:#4a7bd0;height:.7rem;border-radius:3px}
img{max-width:100%;border:1px solid #eee;border-radius:6px;margin:.5rem 0} h2{margin-top:2rem}
"""


def _card(value: str, label: str) -> str:
    return f'<div class="card"><b>{value}</b><span>{_html.escape(label)}</span></div>'


def _header(rep: dict[str, Any]) -> str:
    e = _html.escape
    best = rep.get("best_metric")
    trained = [
        f"epoch {rep['epoch']}" if rep.get("epoch") is not None else "",
        f"step {rep['step']:,}" if rep.get("step") is not None else "",
        f"best {rep.get('monitor')} {best:.4f}" if isinstance(best, float) else "",
    ]
    parts = [
        e(str(rep.get("checkpoint", ""))),
        e(str(rep.get("model", ""))),
        *filter(None, trained),
        f"{rep['num_samples']:,} images",
        f"{len(rep['classes'])} classes",
        f"test-time augmentation: {e(str(rep.get('tta', 'none')))}",
    ]
    return " · ".join(p for p in parts if p)


def _ap(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _class_rows(rep: dict[str, Any]) -> str:
    e = _html.escape
    names = rep.get("class_names") or rep["classes"]
    shown = {c: (n if n == c else f"{n} ({c})") for c, n in zip(rep["classes"], names, strict=True)}
    counts = dict(zip(rep["classes"], rep.get("train_counts") or [None] * len(names), strict=True))
    cuts = rep.get("thresholds") or {}
    rows = sorted(rep["per_class"].items(), key=lambda kv: kv[1]["f1"])
    return "".join(
        f"<tr><td>{e(shown[name])}</td><td>{m['precision']:.3f}</td><td>{m['recall']:.3f}</td>"
        f"<td>{m['f1']:.3f}</td>"
        f"<td>{_ap(rep['average_precision'][name])}</td>"
        + (f"<td>{cuts[name]:.3f}</td>" if cuts else "")
        + f"<td>{m['support']:,}</td><td>{'' if counts[name] is None else f'{counts[name]:,}'}</td>"
        f'<td class="bar"><div class="b" style="width:{100 * m["f1"]:.1f}%"></div></td></tr>'
        for name, m in rows
    )


def _mistakes(rep: dict[str, Any]) -> str:
    e = _html.escape
    rows = rep.get("mistakes") or []
    if not rows:
        return ""
    multi = "wrong_labels" in rows[0]
    if multi:
        head = "<th>#</th><th>file</th><th>true</th><th>predicted</th><th>missed</th><th>extra</th>"
        body = "".join(
            f"<tr><td>{m['rank']}</td><td>{e(m['id'])}</td><td>{e(m['true'])}</td>"
            f"<td>{e(m['predicted'])}</td>"
            f"<td>{e(m['missed'])}</td><td>{e(m['extra'])}</td></tr>"
            for m in rows
        )
    else:
        head = "<th>#</th><th>file</th><th>true</th><th>predicted</th><th>confidence</th>"
        body = "".join(
            f"<tr><td>{m['rank']}</td><td>{e(m['id'])}</td><td>{e(m['true'])}</td>"
            f"<td>{e(m['predicted'])}</td>"
            f"<td>{m['confidence']:.3f}</td></tr>"
            for m in rows
        )
    title = "The images with the most wrong labels" if multi else "Most confident mistakes"
    return (
        f"<h2>{title} (all {rep.get('mistakes_total', len(rows)):,} in mistakes.csv)</h2>"
        f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    )


def _cards(rep: dict[str, Any]) -> list[str]:
    if "map_macro" in rep:  # multi-label
        return [
            _card(_ap(rep["map_macro"]), "mAP (macro)"),
            _card(_ap(rep["map_micro"]), "mAP (micro)"),
            _card(f"{rep['macro']['f1']:.3f}", "macro F1 at the tuned thresholds"),
            _card(f"{rep['at_0.5']['macro']['f1']:.3f}", "macro F1 at 0.5"),
            _card(f"{rep['subset_accuracy']:.2%}", "subset accuracy (all labels right)"),
            _card(f"{rep['hamming_loss']:.4f}", "Hamming loss"),
            _card(f"{rep['num_samples']:,}", "images"),
        ]
    cards = [_card(f"{rep['accuracy']:.2%}", "accuracy")]
    if "top5_accuracy" in rep:
        cards.append(_card(f"{rep['top5_accuracy']:.2%}", "top-5 accuracy"))
    if "balanced_accuracy" in rep:
        cards.append(_card(f"{rep['balanced_accuracy']:.2%}", "balanced accuracy"))
    return [
        *cards,
        _card(f"{rep['macro']['f1']:.3f}", "macro F1"),
        _card(f"{rep['loss']:.4f}", "cross-entropy loss"),
        _card(f"{rep['ece']:.4f}", "expected calibration error"),
        _card(f"{rep['num_samples']:,}", "images"),
    ]


def html(rep: dict[str, Any], figures: dict[str, bytes]) -> str:
    e = _html.escape
    cards = _cards(rep)
    tuned = "<th>threshold</th>" if rep.get("thresholds") else ""
    avg = "".join(
        f"<tr><td><i>{label}</i></td><td>{rep[key]['precision']:.3f}</td><td>{rep[key]['recall']:.3f}</td>"
        f"<td>{rep[key]['f1']:.3f}</td><td></td>{'<td></td>' if tuned else ''}"
        "<td></td><td></td><td></td></tr>"
        for key, label in (
            ("macro", "macro average"),
            ("weighted", "weighted average"),
            ("micro", "micro average"),
        )
        if key in rep
    )
    titles = {
        "confusion_matrix.png": "Confusion matrix",
        "per_class.png": "Precision, recall and F1 per class",
        "pr_curves.png": "Precision-recall curves",
        "reliability.png": "Calibration",
        "confident_mistakes.png": "The most confidently wrong images",
    }
    imgs = "".join(
        f'<h2>{titles.get(name, name)}</h2><img alt="{e(name)}" src="data:image/png;base64,'
        f'{base64.b64encode(png).decode()}">'
        for name, png in figures.items()
    )
    config = e(json.dumps(rep.get("config") or {}, indent=2))
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>kiln evaluation</title>
<style>{CSS}</style></head><body>
<h1>Evaluation: {e(rep.get("split", ""))} split</h1>
<p class="sub">{_header(rep)}</p>
<details><summary>the run's config</summary><pre>{config}</pre></details>
<div class="cards">{"".join(cards)}</div>
<h2>Per class (worst F1 first)</h2>
<table><thead><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>AP</th>{tuned}<th>support</th>
<th>train images</th><th></th></tr>
</thead><tbody>{_class_rows(rep)}{avg}</tbody></table>
{_mistakes(rep)}
{imgs}
</body></html>
"""
