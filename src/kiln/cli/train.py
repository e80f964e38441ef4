"""`kiln train` (and, with --nproc, the torchrun launch of it)."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys


def torchrun_argv(args: argparse.Namespace) -> list[str]:
    """The torchrun command line for `kiln train --nproc N ...` (PyTorch's own elastic launcher)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(args.nproc)]
    if args.nnodes == 1 and not args.master_addr:
        cmd.append("--standalone")
    else:
        cmd += [
            "--nnodes",
            str(args.nnodes),
            "--node-rank",
            str(args.node_rank),
            "--master-addr",
            args.master_addr or "127.0.0.1",
            "--master-port",
            str(args.master_port),
        ]
    if args.max_restarts:
        cmd += ["--max-restarts", str(args.max_restarts)]
    cmd += ["-m", "kiln", "train", "-c", args.config, *args.overrides]
    # with restarts, every worker resumes from the newest checkpoint that exists (not from a restart count)
    resume = args.resume or ("auto" if args.max_restarts else None)
    return cmd + (["--resume", resume] if resume else [])


def run(args: argparse.Namespace) -> int:
    if args.nproc and "RANK" not in os.environ:
        env = dict(os.environ)
        # torch 2.14 + gloo: a restarted rendezvous cannot reuse the shared TCP store
        env.setdefault("TORCH_DISABLE_SHARE_RDZV_TCP_STORE", "1")
        return subprocess.call(torchrun_argv(args), env=env)

    from kiln.config import load_config
    from kiln.engine.trainer import fit
    from kiln.registry import add_project_path

    add_project_path(args.config)
    cfg = load_config(args.config, args.overrides)
    summary = fit(cfg, resume=args.resume)
    if "test" in summary and int(os.environ.get("RANK", 0)) == 0:
        print(f"test accuracy: {summary['test']['accuracy']:.4f}")
    if int(os.environ.get("WORLD_SIZE", 1)) > 1:
        # Everything is written and the process group is gone; skip the interpreter's teardown, where
        # torch 2.14's gloo threads can abort the process ("terminate called without an active exception")
        # and turn a finished run into a failed one for torchrun.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    parser = sub.add_parser(
        "train",
        help="train a model from a config file",
        description="Train from CONFIG (YAML or JSON); key=value overrides change any value, "
        "e.g. trainer.epochs=3 optimizer.lr=0.01 run.dir=/tmp/r1. With --nproc N, kiln launches itself "
        "under torchrun (DistributedDataParallel; data.batch_size is the global batch, split over "
        "processes).",
    )
    parser.add_argument("-c", "--config", required=True, help="config file (.yaml/.yml/.json)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="dotted config overrides")
    parser.add_argument(
        "--resume",
        metavar="PATH|auto",
        help="continue from this checkpoint; 'auto': the run dir's newest valid checkpoint, if any",
    )
    launch = parser.add_argument_group("distributed (torchrun)")
    launch.add_argument("--nproc", type=int, help="processes per node (GPUs per node; CPU: gloo processes)")
    launch.add_argument("--nnodes", type=int, default=1, help="number of nodes")
    launch.add_argument("--node-rank", type=int, default=0, help="this node's rank (0 .. nnodes-1)")
    launch.add_argument("--master-addr", help="address of the rank-0 node (multi-node)")
    launch.add_argument("--master-port", type=int, default=29500)
    launch.add_argument(
        "--max-restarts",
        type=int,
        default=0,
        help="restart all workers up to K times after a failure, resuming from the last checkpoint",
    )
    parser.set_defaults(func=run)
