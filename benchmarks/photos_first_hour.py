"""A new user's first hour on their own photos, measured: `kiln new --template photos` on imagenette (13,394
real photos, 10 classes), the template's fixed-feature-extractor command, each step a `kiln` process with
its output going to a file, timed from the outside:

    python -m benchmarks.photos_first_hour [--root data/imagenette] [--weights data/...safetensors]

- a config error (a misspelt metric name): the wall time until the one-line error (target < 5 s);
- the frozen recipe, whole process, cold caches (decoding and the feature pass included), and the time to
  its first line; then the same run again, features cached (target >= 5x faster);
- Ctrl-C during the feature pass: the seconds from the signal to the exit (target <= 2 s);
- a tune of 4 frozen trials on cold caches: how many trials computed the features (target: one).
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from benchmarks.common import KILN_ENV, ROOT


class Timed:
    """A `kiln` process with its output to a file, and when each line of it arrived."""

    def __init__(self, args: list[str], cwd: Path, log: Path) -> None:
        self.t0, self.lines, self.log = time.monotonic(), [], log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kiln", *args],
            cwd=cwd,
            env=KILN_ENV,
            text=True,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        with self.log.open("w") as out:
            for line in self.proc.stdout:  # type: ignore[union-attr]
                self.lines.append((time.monotonic() - self.t0, line))
                out.write(line)

    def wait_for(self, text: str, timeout: float = 1800) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            hit = next((t for t, line in self.lines if text in line), None)
            if hit is not None:
                return hit
            if self.proc.poll() is not None:
                raise RuntimeError(f"kiln exited ({self.proc.returncode}) before {text!r}: see {self.log}")
            time.sleep(0.05)
        raise TimeoutError(text)

    def finish(self, timeout: float = 3600) -> float:
        self.proc.wait(timeout)
        self.reader.join(10)
        return time.monotonic() - self.t0


def run(args: list[str], cwd: Path, log: Path) -> tuple[float, Timed]:
    timed = Timed(args, cwd, log)
    seconds = timed.finish()
    if timed.proc.returncode != 0 and "trainer.metrics" not in " ".join(args):
        raise RuntimeError(f"kiln {' '.join(args[:3])} failed: see {log}")
    return seconds, timed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default=str(ROOT / "data" / "imagenette"))
    p.add_argument("--weights", default=str(ROOT / "data" / "tf_efficientnet_lite0_imagenet.safetensors"))
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "photos_first_hour.json"))
    a = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="kiln-first-hour-"))
    subprocess.run(
        [sys.executable, "-m", "kiln", "new", "proj", "--template", "photos", "--data", a.root],
        cwd=work,
        env=KILN_ENV,
        check=True,
        capture_output=True,
    )
    project = work / "proj"

    def frozen(cache: str, *extra: str) -> list[str]:
        return [
            "train",
            "-c",
            "config.yaml",
            "model.freeze=backbone",
            f"model.pretrained={a.weights}",
            f"data.cache_dir={work / cache}",
            *extra,
        ]

    results: dict[str, float | int] = {}
    seconds, timed = run([*frozen("c0"), "trainer.metrics=[balanced_acuracy]"], project, work / "error.txt")
    results["config_error_s"] = round(seconds, 2)
    print(f"config error: {seconds:.1f} s, exit {timed.proc.returncode}: {timed.lines[-1][1].strip()[:120]}")
    cold, timed = run(frozen("c1"), project, work / "cold.txt")
    results["cold_s"], results["first_line_s"] = round(cold, 1), round(timed.lines[0][0], 2)
    print(f"frozen recipe, cold caches: {cold:.1f} s (first line after {timed.lines[0][0]:.1f} s)")
    warm, _ = run([*frozen("c1"), "run.name=again"], project, work / "warm.txt")
    results["warm_s"], results["speedup"] = round(warm, 1), round(cold / warm, 1)
    print(f"the same run again, features cached: {warm:.1f} s ({cold / warm:.1f}x faster)")
    timed = Timed([*frozen("c2"), "run.name=stopped"], project, work / "stopped.txt")
    timed.wait_for("backbone features of")
    time.sleep(5)
    t0 = time.monotonic()
    timed.proc.send_signal(signal.SIGINT)
    timed.finish()
    results["ctrl_c_s"] = round(time.monotonic() - t0, 2)
    print(f"Ctrl-C during the feature pass: exit {timed.proc.returncode} after {results['ctrl_c_s']:.2f} s")
    space = [
        "tune",
        "-c",
        "config.yaml",
        "--space",
        "space.yaml",
        "--samples",
        "4",
        "model.freeze=backbone",
        f"model.pretrained={a.weights}",
        f"data.cache_dir={work / 'c3'}",
        "--out",
        str(work / "tune"),
    ]
    tuned, _ = run(space, project, work / "tune.txt")
    computed = sum("backbone features of" in p.read_text() for p in (work / "tune").rglob("train.log"))
    results["tune_s"], results["tune_feature_passes"] = round(tuned, 1), computed
    print(f"tune, 4 frozen trials, cold caches: {tuned:.1f} s; trials that computed the features: {computed}")
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(results, indent=2))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
