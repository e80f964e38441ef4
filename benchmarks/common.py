"""Shared pieces of the benchmarks: the local CIFAR-10 copy, the tutorial's classic loop, a raw loop.

The classic and raw loops are written out here in plain PyTorch, the way users write them, so kiln is
measured against them side by side in one process on the same machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def cifar10_dir(path: str | None = None) -> Path:
    """The JPEG image folder (data/cifar10), unpacked from ../shared/data when needed."""
    target = Path(path) if path else ROOT / "data" / "cifar10"
    if (target / "train").is_dir():
        return target
    archive = SHARED / "cifar10-jpeg.tar.gz"
    if not archive.is_file():
        sys.exit(f"no CIFAR-10 copy: neither {target} nor {archive}; run `make data` or pass --root")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive) as tf:
        tf.extractall(target.parent, filter="data")
    return target


class Net(nn.Module):
    """PyTorch's CIFAR-10 tutorial network, verbatim: the classic loop trains this. kiln's `lenet` has the
    same layers, names and function (it applies each ReLU after pooling instead of before: same outputs,
    same gradients, less work), so its state_dicts load into this class and back."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


def kiln_lenet() -> nn.Module:
    """kiln's `lenet`: the raw loop uses the very module kiln trains, so kiln/raw measures kiln's overhead."""
    from kiln.models.builtin import LeNet

    return LeNet(num_classes=10, in_channels=3, image_size=(32, 32))


def classic_loader(root: Path, split: str, batch_size: int, shuffle: bool) -> torch.utils.data.DataLoader:
    import torchvision
    import torchvision.transforms as T

    transform = T.Compose([T.ToTensor(), T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))])
    ds = torchvision.datasets.ImageFolder(str(root / split), transform=transform)
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=shuffle, num_workers=2)


def classic_train(
    root: Path, batch_size: int, max_images: int | None = None, epochs: int = 1
) -> tuple[nn.Module, float, int]:
    """The tutorial loop; returns (model, seconds, images). Stops after ``max_images`` when given."""
    torch.manual_seed(0)
    net = Net()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    loader = classic_loader(root, "train", batch_size, shuffle=True)
    seen, t0 = 0, time.perf_counter()
    for _ in range(epochs):
        running_loss = 0.0
        for inputs, labels in loader:
            optimizer.zero_grad()
            loss = criterion(net(inputs), labels)
            loss.backward()
            optimizer.step()
            running_loss += loss.item()
            seen += labels.shape[0]
            if max_images and seen >= max_images:
                return net, time.perf_counter() - t0, seen
    return net, time.perf_counter() - t0, seen


@torch.no_grad()
def classic_test_accuracy(net: nn.Module, root: Path) -> float:
    correct = total = 0
    for images, labels in classic_loader(root, "test", 256, shuffle=False):
        correct += (net(images).argmax(1) == labels).sum().item()
        total += labels.shape[0]
    return correct / total


def preloaded_cifar(root: Path) -> tuple[torch.Tensor, torch.Tensor]:
    """All train images as one normalised float tensor (decoded with kiln's cached decoder)."""
    from kiln.config import DataConfig
    from kiln.data.cache import load_images
    from kiln.data.sources import folder
    from kiln.spec import ImageSpec

    raw = folder(DataConfig(source="folder", root=str(root)))
    images = load_images(
        raw.train.paths, ImageSpec(3, (32, 32)), False, Path("~/.cache/kiln").expanduser(), workers=2
    )[0]
    x = (images.float() / 255 - 0.5) / 0.5
    return x, torch.tensor(raw.train.labels)


def raw_train(x: torch.Tensor, y: torch.Tensor, batch_size: int, max_images: int) -> float:
    """The compute limit: the tutorial's step over preloaded tensors; returns seconds for max_images."""
    torch.manual_seed(0)
    net = kiln_lenet()
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    perm = torch.randperm(len(y))[:max_images]
    t0 = time.perf_counter()
    running_loss = 0.0
    for i in range(0, len(perm), batch_size):
        idx = perm[i : i + batch_size]
        inputs, labels = x[idx], y[idx]
        optimizer.zero_grad()
        loss = criterion(net(inputs), labels)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
    return time.perf_counter() - t0


def kiln_run(overrides: list[str], config: str = "configs/cifar10_lenet.yaml") -> list[dict]:
    """Train with kiln in this process; returns metrics.jsonl as a list of dicts."""
    from kiln.config import load_config
    from kiln.engine.trainer import fit

    cfg = load_config(ROOT / config, ["trainer.progress=off", *overrides])
    fit(cfg)
    return [json.loads(s) for s in (cfg.run_dir / "metrics.jsonl").read_text().splitlines()]


KILN_ENV = {**os.environ, "PYTHONPATH": str(ROOT / "src")}


def kiln_process(args: list[str]) -> float:
    """Run ``kiln ARGS`` as a user would, in a process of its own; returns its wall seconds. A failure
    ends the benchmark with the command's last error lines."""
    t0 = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "kiln", *args], env=KILN_ENV, capture_output=True, text=True)
    if proc.returncode:
        raise SystemExit(f"kiln {args[0]} failed:\n{proc.stderr[-2000:]}")
    return time.monotonic() - t0


def kiln_report(run: Path) -> dict:
    """``kiln eval`` of the run's best checkpoint: its report.json."""
    kiln_process(["eval", "--checkpoint", str(run / "checkpoints/best.pt"), "--out", str(run / "eval")])
    return json.loads((run / "eval/report.json").read_text())
