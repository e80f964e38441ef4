"""What one search is (the base config, the monitored metric, resources, the seed) and the names its trials
go by in the driver's lines, the table and results.json. No Ray here: the report and the CLI use it too."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from kiln.tuning.space import override


@dataclass(frozen=True)
class Search:
    config: str  # absolute path of the base config
    overrides: list[str]
    monitor: str
    mode: str
    epochs: int
    cpus_per_trial: float
    gpus_per_trial: float
    seed: int  # samples the trials (in order) and is every trial's run.seed: a search repeats exactly
    max_failures: int = 0  # stop the search after this many failed trials (0: never)

    def trial_overrides(self, sampled: dict[str, Any]) -> list[str]:
        """What turns the base config into a trial's: its sampled values, the seed and the CPU threads it
        trains with (both fix its floating-point results, so best.yaml reproduces it exactly on CPU)."""
        threads = max(1, int(self.cpus_per_trial))
        return [
            *self.overrides,
            *(override(k, v) for k, v in sampled.items()),
            f"run.seed={self.seed}",
            f"run.threads={threads}",
        ]


def trial_index(name: str) -> int:
    """A trial's place in the sampling order, from its Ray id or folder (<experiment>_<index>)."""
    found = re.search(r"[0-9a-f]{5}_(\d{5})", name)
    return int(found.group(1)) if found else 10**6


def trial_name(trial_id: str) -> str:
    """trial_00003: the name the lines, the table and results.json give a trial."""
    return f"trial_{trial_index(trial_id):05d}"
