"""One self-contained HTML page: headline numbers, the per-class table (worst F1 first) and the figures
embedded as data: URIs, so it opens anywhere with no network and no companion files."""

from __future__ import annotations

import base64
import html as _html
from typing import Any

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222}
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


def html(rep: dict[str, Any], figures: dict[str, bytes]) -> str:
    e = _html.escape
    cards = [_card(f"{rep['accuracy']:.2%}", "accuracy")]
    if "top5_accuracy" in rep:
        cards.append(_card(f"{rep['top5_accuracy']:.2%}", "top-5 accuracy"))
    cards += [
        _card(f"{rep['macro']['f1']:.3f}", "macro F1"),
        _card(f"{rep['loss']:.4f}", "cross-entropy loss"),
        _card(f"{rep['ece']:.4f}", "expected calibration error"),
        _card(f"{rep['num_samples']:,}", "images"),
    ]
    rows = sorted(rep["per_class"].items(), key=lambda kv: kv[1]["f1"])
    body = "".join(
        f"<tr><td>{e(name)}</td><td>{m['precision']:.3f}</td><td>{m['recall']:.3f}</td><td>{m['f1']:.3f}</td>"
        f"<td>{rep['average_precision'][name]:.3f}</td><td>{m['support']:,}</td>"
        f'<td class="bar"><div class="b" style="width:{100 * m["f1"]:.1f}%"></div></td></tr>'
        for name, m in rows
    )
    avg = "".join(
        f"<tr><td><i>{label}</i></td><td>{rep[key]['precision']:.3f}</td><td>{rep[key]['recall']:.3f}</td>"
        f"<td>{rep[key]['f1']:.3f}</td><td></td><td></td><td></td></tr>"
        for key, label in (("macro", "macro average"), ("weighted", "weighted average"))
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
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>kiln evaluation</title>
<style>{CSS}</style></head><body>
<h1>Evaluation: {e(rep.get("split", ""))} split</h1>
<p class="sub">{e(str(rep.get("checkpoint", "")))} · {rep["num_samples"]:,} images · {len(rep["classes"])} classes
· test-time augmentation: {e(str(rep.get("tta", "none")))}</p>
<div class="cards">{"".join(cards)}</div>
<h2>Per class (worst F1 first)</h2>
<table><thead><tr><th>class</th><th>precision</th><th>recall</th><th>F1</th><th>AP</th><th>support</th><th></th></tr>
</thead><tbody>{body}{avg}</tbody></table>
{imgs}
</body></html>
"""
