"""`kiln new`."""

from __future__ import annotations

import argparse

from kiln.scaffold import TEMPLATES  # the scaffold's own list (it imports no torch: --help stays fast)


def run(args: argparse.Namespace) -> int:
    from kiln.scaffold import create_project

    files = create_project(args.name, args.template, args.data)
    print(
        f"created {args.name}/ ({args.template}): " + ", ".join(str(f.relative_to(args.name)) for f in files)
    )
    print(f"next:  cd {args.name} && kiln train -c config.yaml")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    n = sub.add_parser(
        "new",
        help="scaffold a project (config, your model, dataset, loss, metric, callback)",
        description="Create NAME/ with config.yaml, models.py, datasets.py, losses.py, metrics.py, "
        "callbacks.py, a README and a smoke test. Refuses to touch an existing non-empty folder.",
    )
    n.add_argument("name", help="project folder to create")
    n.add_argument(
        "--template",
        choices=TEMPLATES,
        default="basic",
        help="basic: your own Dataset on offline digits; folder: an image folder; csv: images + CSV; "
        "transfer: a torchvision backbone; photos: your photos and a pretrained ImageNet backbone",
    )
    n.add_argument("--data", help="data root for the folder/csv templates (default: data/)")
    n.set_defaults(func=run)
