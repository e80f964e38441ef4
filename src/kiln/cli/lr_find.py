"""`kiln lr-find`."""

from __future__ import annotations

import argparse
from pathlib import Path


def run(args: argparse.Namespace) -> int:
    from kiln.config import load_config
    from kiln.engine.lr_find import RangeTest, lr_find
    from kiln.registry import add_project_path

    add_project_path(args.config)
    test = RangeTest(args.start, args.end, args.steps)
    test.check()  # before the config is even read
    cfg = load_config(args.config, args.overrides)
    result = lr_find(cfg, test, Path(args.out) if args.out else None)
    lr = result["suggestions"]
    early = {"diverged": ", stopped early: the loss diverged", "non-finite": ", stopped: non-finite loss"}
    others = f"steep {lr['steep']:.1e}, minimum/10 {lr['minimum/10']:.1e}"
    steps = f"{result['measured']} of {result['steps']} steps{early.get(result['stopped'], '')}"
    print(f"suggested: {result['override']} (valley); {others}  ({steps})")
    print(f"plot: {result['png']}  (the curve and suggestions: {result['json']})")
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "lr-find",
        help="LR range test: train briefly at growing learning rates and suggest optimizer.lr",
        description="fastai's lr_find (Smith 2015): train the model CONFIG describes for --steps optimizer "
        "steps while the learning rate grows exponentially from --start to --end, then suggest "
        "optimizer.lr from the smoothed loss curve (valley; steep and minimum/10 too). Writes lr_find.png "
        "and lr_find.json into --out (default: <run dir>/lr_find/); nothing else of the run is written.",
    )
    p.add_argument("-c", "--config", required=True, help="config file (.yaml/.yml/.json)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    p.add_argument("--start", type=float, default=1e-7, help="first learning rate (default 1e-7)")
    p.add_argument(
        "--end", type=float, default=10.0, help="learning rate the test grows towards (default 10)"
    )
    p.add_argument("--steps", type=int, default=100, help="optimizer steps (default 100)")
    p.add_argument("--out", help="output folder (default: <run dir>/lr_find)")
    p.set_defaults(func=run)
