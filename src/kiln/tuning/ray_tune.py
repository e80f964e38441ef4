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
from kiln.tuning.search import Search
from kiln.tuning.space import resolved
from kiln.tuning.stop import StopOnSignal


def import_ray() -> Any:
    try:
        import ray
        from ray import tune
    except ImportError:
        raise ConfigError("kiln tune needs Ray Tune: pip install 'torchkiln[tune]'") from None
    return ray, tune


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

    trial_dir = _trial_folder(tune)
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


def _trial_folder(tune: Any) -> Path:
    """The trial's own folder in --out, where its kiln run is written. Not Ray's `get_trial_dir()`: that is a
    staging folder the driver copies into --out every few seconds (pyarrow copy_files), so every checkpoint
    was written twice, and a checkpoint's temp file renamed while the copy listed it printed a
    FileNotFoundError traceback from Ray's syncer (seen in CI). --out is always a local path (new_tuner's
    storage_path), so the trial's storage path is a local folder."""
    folder = Path(tune.get_context().get_storage().trial_fs_path)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@dataclass(frozen=True)
class Hooks:
    callbacks: list[Any]  # Ray Tune callbacks on the driver
    stopper: Any  # ends the whole search (--max-failures)


@dataclass(frozen=True)
class Outcome:
    results: Any  # Ray's ResultGrid
    unfinished: set[str]  # the trials an interrupt left running or waiting (trial_00003 names)
    samples: int  # the trials the search samples in all


def connect(ray: Any, address: str | None) -> bool:
    """Start a Ray of our own ("local") or join a cluster ("auto", "ray://host:10001"); True: ours."""
    if ray.is_initialized():
        return False
    ray.init(
        address=address or "local",
        include_dashboard=False,
        log_to_driver=False,
        **({"num_cpus": os.cpu_count()} if not address else {}),
    )
    return True


def tune_search(
    search: Search,
    space: dict[str, tuple[str, list[Any]]],
    samples: int,
    scheduler: str,
    max_concurrent: int,
    address: str | None,
    out: Path,
    resume: bool,
    stop: StopOnSignal,
) -> Outcome:
    ray, tune = import_ray()
    from kiln.tuning.progress import SearchLog, quiet_ray_interrupt_lines

    os.environ.setdefault("RAY_AIR_NEW_OUTPUT", "0")
    # a failed trial's traceback stays in its error.txt: the driver prints its one-line reason instead
    os.environ.setdefault("TUNE_PRINT_ALL_TRIAL_ERRORS", "0")
    quiet_ray_interrupt_lines()
    ours = connect(ray, address)
    stop.install()  # after ray.init, whose native SIGTERM handler dumps a stack and aborts
    search_log, failures = SearchLog(search, list(space)), FailureCount(search.max_failures)
    try:
        hooks = Hooks([failures.callback, search_log], failures.stopper())
        tuner = (
            restore_tuner(tune, search, space, out, hooks)
            if resume
            else new_tuner(tune, search, space, samples, scheduler, max_concurrent, out, hooks)
        )
        with stop.searching():
            results = tuner.fit()
    finally:
        if ours:
            ray.shutdown()
    return Outcome(results, search_log.unfinished() if stop.signum else set(), search_log.total)


def _trainable(tune: Any, search: Search) -> Any:
    return tune.with_resources(
        tune.with_parameters(run_trial, search=search),
        {"cpu": search.cpus_per_trial, "gpu": search.gpus_per_trial},
    )


def _param_space(tune: Any, space: dict[str, tuple[str, list[Any]]]) -> dict[str, Any]:
    dists = {
        "loguniform": lambda a: tune.loguniform(*a),
        "uniform": lambda a: tune.uniform(*a),
        "randint": lambda a: tune.randint(a[0], a[1] + 1),  # Ray's upper end is exclusive
        "choice": tune.choice,
        "grid": tune.grid_search,
    }
    return {k: dists[kind](args) for k, (kind, args) in space.items()}


def new_tuner(
    tune: Any,
    search: Search,
    space: dict[str, tuple[str, list[Any]]],
    samples: int,
    scheduler: str,
    max_concurrent: int,
    out: Path,
    hooks: Hooks,
) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler
    from ray.tune.search import BasicVariantGenerator

    if (out / "search").exists():
        raise ConfigError(
            f"--out {out}: it already holds a search; continue it with --resume, or choose "
            "another --out (two searches in one folder would mix their trials)"
        )
    sched = (
        ASHAScheduler(max_t=search.epochs, grace_period=1, reduction_factor=2)
        if scheduler == "asha"
        else FIFOScheduler()
    )
    return tune.Tuner(
        _trainable(tune, search),
        param_space=_param_space(tune, space),
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
            name="search",
            storage_path=str(out.resolve()),
            verbose=0,
            callbacks=hooks.callbacks,
            stop=hooks.stopper,
        ),
    )


def restore_tuner(
    tune: Any, search: Search, space: dict[str, tuple[str, list[Any]]], out: Path, hooks: Hooks
) -> Any:
    path = str(out.resolve() / "search")
    if not tune.Tuner.can_restore(path):
        raise ConfigError(f"--resume: no interrupted search in {out / 'search'}")
    tuner = tune.Tuner.restore(
        path,
        trainable=_trainable(tune, search),
        resume_unfinished=True,
        resume_errored=True,
        param_space=_param_space(tune, space),
    )
    # Tuner.restore brings back the callbacks pickled by the first run, copies this process cannot reach
    # (and none at all from a search started before kiln had them); Ray has no public way to pass new
    # ones (ray-project/ray#41364), so this run's go into the restored RunConfig. A Ray client
    # (ray://) runs the loop on the cluster: there the pickled ones stay.
    if tuner._local_tuner is not None:
        run_config = tuner._local_tuner.get_run_config()
        run_config.callbacks, run_config.stop = hooks.callbacks, hooks.stopper
    return tuner


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
