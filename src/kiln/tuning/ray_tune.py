"""Ray Tune search: each trial is `kiln train` with the sampled overrides, reporting every epoch (with its
checkpoint) so ASHA can stop it early and Ray can restore it. Ray is an optional extra, imported here only."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kiln.engine.callbacks import Callback
from kiln.errors import ConfigError
from kiln.tuning.space import override, resolved


def import_ray() -> Any:
    try:
        import ray
        from ray import tune
    except ImportError:
        raise ConfigError("kiln tune needs Ray Tune: pip install 'torchkiln[tune]'") from None
    return ray, tune


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


class ReportToTune(Callback):
    """Every epoch: the metrics, and last.pt as the trial's checkpoint (after kiln has written it)."""

    def __init__(self) -> None:
        self.metrics: dict[str, Any] = {}

    def on_epoch_end(self, epoch: int, metrics: dict[str, Any]) -> str | None:
        self.metrics = metrics
        return None

    def on_checkpoint(self, epoch: int, path: Path) -> None:
        from ray import tune

        with tempfile.TemporaryDirectory() as d:
            shutil.copy2(path, Path(d) / "last.pt")
            tune.report(dict(self.metrics), checkpoint=tune.Checkpoint.from_directory(d))


def run_trial(sampled: dict[str, Any], search: Search) -> None:
    """The Ray trainable: one `kiln train`, resumed from Ray's checkpoint when the trial is restored."""
    from ray import tune

    from kiln.engine.trainer import fit

    trial_dir = Path(tune.get_context().get_trial_dir())
    overrides = [
        *search.trial_overrides(sampled),
        f"run.dir={trial_dir / 'run'}",
        "trainer.progress=off",
        "logging.tensorboard=false",
    ]
    cfg = resolved(search.config, overrides)
    resume = None
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            resume = str(trial_dir / "restored-last.pt")
            shutil.copy2(Path(d) / "last.pt", resume)
    fit(cfg, resume=resume, extra_callbacks=[ReportToTune()])


def tune_search(
    search: Search,
    space: dict[str, tuple[str, list[Any]]],
    samples: int,
    scheduler: str,
    max_concurrent: int,
    address: str | None,
    out: Path,
    resume: bool,
) -> Any:
    ray, tune = import_ray()
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    dists = {
        "loguniform": lambda a: tune.loguniform(*a),
        "uniform": lambda a: tune.uniform(*a),
        "randint": lambda a: tune.randint(a[0], a[1] + 1),  # Ray's upper end is exclusive
        "choice": tune.choice,
        "grid": tune.grid_search,
    }
    param_space = {k: dists[kind](args) for k, (kind, args) in space.items()}
    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    if not ray.is_initialized():
        # "local": a Ray of our own on this machine; "auto" / "ray://host:10001": join a cluster
        ray.init(
            address=address or "local",
            include_dashboard=False,
            log_to_driver=False,
            **({"num_cpus": os.cpu_count()} if not address else {}),
        )
    sched = (
        ASHAScheduler(max_t=search.epochs, grace_period=1, reduction_factor=2)
        if scheduler == "asha"
        else FIFOScheduler()
    )
    trainable = tune.with_resources(
        tune.with_parameters(run_trial, search=search),
        {"cpu": search.cpus_per_trial, "gpu": search.gpus_per_trial},
    )
    storage, name = str(out.resolve()), "search"
    if resume:
        if not tune.Tuner.can_restore(str(out.resolve() / name)):
            raise ConfigError(f"--resume: no interrupted search in {out / name}")
        tuner = tune.Tuner.restore(
            str(out.resolve() / name),
            trainable=trainable,
            resume_unfinished=True,
            resume_errored=True,
            param_space=param_space,
        )
    else:
        if (out / name).exists():
            raise ConfigError(
                f"--out {out}: it already holds a search; continue it with --resume, or choose "
                "another --out (two searches in one folder would mix their trials)"
            )
        failures = FailureCount(search.max_failures)
        tuner = tune.Tuner(
            trainable,
            param_space=param_space,
            tune_config=tune.TuneConfig(
                metric=search.monitor,
                mode=search.mode,
                scheduler=sched,
                num_samples=samples,
                # seeded sampling: the same trials, in the same order, every time
                # (a search_alg takes the concurrency limit; Tune's own is ignored)
                search_alg=BasicVariantGenerator(random_state=search.seed, max_concurrent=max_concurrent),
            ),
            run_config=tune.RunConfig(
                name=name,
                storage_path=storage,
                verbose=0,
                callbacks=[failures.callback],
                stop=failures.stopper(),
            ),
        )
    return tuner.fit()


class FailureCount:
    """Counts failed trials (an exception, a NaN, a killed process) and, with ``--max-failures N``, stops
    the search at the N-th; the others' results are kept."""

    def __init__(self, limit: int) -> None:
        from ray.tune import Callback as RayCallback
        from ray.tune import Stopper

        self.limit, self.failed = limit, 0
        count = self

        class _Counter(RayCallback):
            def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
                count.failed += 1

        class _Stop(Stopper):
            def __call__(self, trial_id: str, result: dict[str, Any]) -> bool:
                return False

            def stop_all(self) -> bool:
                return bool(count.limit) and count.failed >= count.limit

        self.callback, self._stopper = _Counter(), _Stop()

    def stopper(self) -> Any:
        return self._stopper
