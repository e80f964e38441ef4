"""`kiln new NAME`: a project that trains in its first minute, with the user's own model, dataset, loss,
metric and callback as plug-ins (the way pytorch-template's new_project.py starts a project)."""

from __future__ import annotations

import re
from pathlib import Path
from string import Template

from kiln.errors import KilnError
from kiln.paths import output_dir

TEMPLATES = ("basic", "folder", "csv", "transfer", "photos")
_HERE = Path(__file__).parent / "templates"
# (template file, path in the project, templates that get it)
_FILES = [
    ("common/README.md.tmpl", "README.md", TEMPLATES),
    ("common/gitignore.tmpl", ".gitignore", TEMPLATES),
    ("common/models.py.tmpl", "models.py", TEMPLATES),
    ("basic/datasets.py.tmpl", "datasets.py", TEMPLATES),
    ("common/losses.py.tmpl", "losses.py", TEMPLATES),
    ("common/metrics.py.tmpl", "metrics.py", TEMPLATES),
    ("common/callbacks.py.tmpl", "callbacks.py", TEMPLATES),
    ("common/conftest.py.tmpl", "tests/conftest.py", TEMPLATES),
    ("common/test_smoke.py.tmpl", "tests/test_smoke.py", TEMPLATES),
    ("common/make_sample_data.py.tmpl", "make_sample_data.py", ("folder", "csv")),
    ("photos/make_sample_data.py.tmpl", "make_sample_data.py", ("photos",)),
    ("photos/space.yaml.tmpl", "space.yaml", ("photos",)),
]


def create_project(dest: str | Path, template: str = "basic", data: str | None = None) -> list[Path]:
    dest = Path(dest)
    if template not in TEMPLATES:
        raise KilnError(f"--template: unknown template '{template}' (valid: {', '.join(TEMPLATES)})")
    output_dir(dest, "NAME", contents="none")  # new or empty: a project is the user's, never merged into
    name = re.sub(r"\W", "_", dest.name).strip("_").lower() or "project"
    if name[0].isdigit():
        name = f"p_{name}"
    values = {
        "name": name,
        "Name": "".join(p.capitalize() for p in name.split("_")),
        "template": template,
        "data": data or "data",
    }
    written = []
    for src, rel, used_by in [(f"{template}/config.yaml.tmpl", "config.yaml", TEMPLATES), *_FILES]:
        if template not in used_by:
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(Template((_HERE / src).read_text()).substitute(values))
        written.append(target)
    return written
