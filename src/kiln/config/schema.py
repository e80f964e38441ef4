"""The config's schema: a frozen pydantic tree, one class per section, every field with its default and a
comment on its meaning and units. Validation is strict (``extra="forbid"``): a typo is an error."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from kiln.config.augment import AugmentConfig, ErasingConfig, JitterConfig, ResizedCropConfig  # noqa: F401
from kiln.config.base import Strict as _Strict

# the numbers of every metrics.jsonl line (trainer.metrics add val_<name> for each of theirs)
EPOCH_METRICS = (
    "val_acc",
    "val_loss",
    "train_acc",
    "train_loss",
    "lr",
    "epoch",
    "step",
    "seconds",
    "images_per_s",
)


def epoch_metric_names(metrics: list[str]) -> list[str]:
    """The names of a metrics.jsonl line: kiln's own and val_<name> for each metric given."""
    return [*EPOCH_METRICS, *(f"val_{m.rpartition(':')[2]}" for m in metrics)]


class RunConfig(_Strict):
    name: str = "run"
    dir: str | None = None  # default: runs/<name>
    seed: int = 0
    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    deterministic: bool = False
    threads: int | None = Field(None, gt=0)  # torch CPU threads (None: torch's default); fixes CPU float sums


class CsvConfig(_Strict):
    train: str = "train.csv"
    val: str | None = None
    test: str | None = "test.csv"
    path_column: str = "filepath"
    # the label: one class per row (an int or a name); with multi_label, several names in one cell split on
    # label_separator (an empty cell: no label); or a list of columns, one 0/1 column per class (multi-label)
    label_column: str | list[str] = "label"
    multi_label: bool = False
    label_separator: str = " "

    @model_validator(mode="after")
    def _check(self) -> CsvConfig:
        if isinstance(self.label_column, list) and not self.label_column:
            raise ValueError("data.csv.label_column: an empty list; name one 0/1 column per class")
        if not self.label_separator:
            raise ValueError("data.csv.label_separator: empty; use e.g. ' ' or ';'")
        return self

    @property
    def multi(self) -> bool:
        """Multi-label: several names in one cell, or one 0/1 column per class."""
        return self.multi_label or isinstance(self.label_column, list)


class DataConfig(_Strict):
    source: str = "digits"  # a registered data source (kiln's: digits, cifar10, ..., folder, csv, custom)
    root: str | None = None  # default: data/<source>
    download: bool = False
    batch_size: int = Field(64, gt=0)
    eval_batch_size: int | None = Field(
        None, gt=0
    )  # default: large for small images or on GPUs, 8 for photos on CPUs
    val_split: float = Field(0.1, ge=0.0, lt=1.0)  # fraction of train carved out when there is no val/
    test_split: float = Field(0.2, ge=0.0, lt=1.0)  # digits only: it ships without a test split
    # the model's input (H, W); None: the pretrained weights', else the images' own
    image_size: int | tuple[int, int] | None = None
    # photo pipeline: training crops at this size instead (smaller: faster, and a model trained at ~0.8x the
    # test size does better at it: Touvron et al. 2019, "Fixing the train-test resolution discrepancy")
    train_image_size: int | tuple[int, int] | None = None
    # how images of other sizes get there: crop (photos: aspect kept; evaluation resizes the shorter side to
    # image_size / crop_pct and takes the centre), squash (resize exactly), none (all must have image_size);
    # auto: none when the images already have it and no pretrained weights set it, squash for in-memory
    # arrays, else crop
    resize: Literal["auto", "none", "squash", "crop"] = "auto"
    crop_pct: float | None = Field(None, gt=0, le=1)  # None: the pretrained weights', else 0.875
    interpolation: Literal["bilinear", "bicubic"] | None = (
        None  # None: the pretrained weights', else bilinear
    )
    channels: Literal[1, 3] | None = None  # convert to grayscale (1) or RGB (3); None = as stored
    mean: tuple[float, ...] | None = (
        None  # per channel, 0..1 scale; None = the weights', else measured on train
    )
    std: tuple[float, ...] | None = None
    augment: AugmentConfig = AugmentConfig()
    loader: Literal["auto", "memory", "stream"] = "auto"
    memory_budget_gb: float = Field(4.0, gt=0)  # `auto` uses the memory path below this decoded size
    cache_dir: str = "~/.cache/kiln"
    num_workers: int | None = Field(None, ge=0)  # stream path / decoding; None = from the core count
    csv: CsvConfig = CsvConfig()
    dataset: str | None = None  # source=custom: "module:ClassName"
    dataset_args: dict[str, Any] = {}
    on_bad_sample: Literal["error", "skip"] = "error"  # unreadable image / bad CSV row: stop, or skip + count
    # the order of an epoch: a shuffle of every image once, or class-balanced (each class equally often in
    # expectation, drawn with replacement: rare classes repeat, frequent ones are partly left out each epoch)
    sampler: Literal["shuffle", "balanced"] = "shuffle"
    train_limit: int | None = Field(None, gt=0)  # train on a fixed random subset of N images (quick runs)
    # display names for class ids (folders named by WordNet id or product code): a .txt ("ID NAME" lines,
    # or one name per line in label order), a .csv (id,name) or a mapping {id: name}
    class_names: str | dict[str, str] | None = None
    # images left out of every split: a text file of paths (one a line) or a CSV with a `path` column, e.g.
    # the exclude.txt or label_issues.csv `kiln audit` writes (paths relative to the cwd or to the file)
    exclude: str | None = None

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if self.source == "custom" and not self.dataset:
            raise ValueError("data.source=custom needs data.dataset: 'module:ClassName'")
        if (self.mean is None) != (self.std is None):
            raise ValueError("data.mean and data.std go together: give both or neither")
        if self.std is not None and any(s <= 0 for s in self.std):
            raise ValueError("data.std values must be > 0")
        return self


class ModelConfig(_Strict):
    name: str = "lenet"
    args: dict[str, Any] = {}
    # true: the library's default weights (torchvision weights="DEFAULT", timm pretrained=True; downloads);
    # a path: a .pt/.pth state_dict, a .safetensors file or a kiln checkpoint. The head is resized.
    pretrained: bool | str = False
    strict: bool = True  # with a weights file: every key but the head's must match
    freeze: list[str] | Literal["backbone"] | None = None  # parameter-name globs, or all but the head
    freeze_bn: bool = True  # frozen BatchNorm layers stay in eval mode (running stats do not move)
    # every BatchNorm layer keeps its pretrained running statistics while its weights fine-tune (small
    # datasets and batches: batch statistics of a few dozen photos are noisier than ImageNet's)
    bn_stats: Literal["update", "frozen"] = "update"
    # the new head's start: random; probe, solved on the train images' features (a linear probe, then
    # fine-tuning: LP-FT); or the pretrained classifier's rows mixed per class by how the pretrained model
    # already classifies that class's training images (a zero-shot start). auto: probe with pretrained
    # weights, else random. A solved frozen head (trainer.frozen_head=solve) needs no start.
    head_init: Literal["auto", "random", "probe", "pretrained_classes"] = "auto"
    # the first conv's filters start as whitened principal components of training patches (data-dependent)
    pca_init: bool = False

    @model_validator(mode="after")
    def _check(self) -> ModelConfig:
        if self.pca_init and self.pretrained:
            raise ValueError("model.pca_init would overwrite the pretrained first layer; use one of the two")
        if self.head_init in ("pretrained_classes", "probe") and not self.pretrained:
            raise ValueError(
                f"model.head_init={self.head_init} starts from the pretrained weights: set "
                "model.pretrained (true or a weights file)"
            )
        return self


class LookaheadConfig(_Strict):
    k: int = Field(5, gt=0)  # every k optimizer steps ...
    alpha: float = Field(0.5, gt=0, le=1)  # ... move the slow weights this far towards the fast ones


class EmaConfig(_Strict):
    decay: float = Field(0.999, gt=0, lt=1)  # per optimizer step
    warmup: bool = True  # decay ramps up as min(decay, (1+t)/(10+t)) so early EMA is not stuck at init


class ParamGroupConfig(_Strict):
    params: str  # a glob over parameter names, e.g. "layer4.*"
    lr_mult: float = Field(1.0, gt=0)
    weight_decay: float | None = Field(None, ge=0)  # default: optimizer.weight_decay


class UnfreezeConfig(_Strict):
    at_epoch: int = Field(2, ge=1)  # 1-based: this epoch is the first to train the frozen parameters
    lr_mult: float = Field(0.1, gt=0)  # their learning rate relative to optimizer.lr


class OptimizerConfig(_Strict):
    name: Literal["sgd", "adam", "adamw"] = "sgd"
    lr: float = Field(0.01, gt=0)
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = False
    weight_decay: float = Field(0.0, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    no_decay_norm_bias: bool = False  # weight_decay 0 for biases and norm weights (1-D params)
    per_images: int | None = Field(None, gt=0)  # lr and weight_decay are given per N images: x batch_size/N
    lookahead: LookaheadConfig | None = None
    param_groups: list[ParamGroupConfig] = []  # discriminative learning rates; first matching glob wins
    layer_decay: float | None = Field(None, gt=0, le=1)  # timm-style layer-wise LR decay (timm models)


class SchedulerConfig(_Strict):
    name: Literal["none", "step", "cosine", "onecycle"] = "none"
    warmup_epochs: float = Field(0.0, ge=0)
    step_size: int = Field(30, gt=0)  # epochs, for `step`
    gamma: float = Field(0.1, gt=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)  # cosine floor as a fraction of optimizer.lr


class EarlyStoppingConfig(_Strict):
    monitor: str = "val_loss"
    mode: Literal["min", "max"] = "min"
    patience: int = Field(5, ge=0)
    min_delta: float = Field(0.0, ge=0)


class CheckpointConfig(_Strict):
    # auto: val_map for multi-label data, val_balanced_accuracy for train classes skewed 3:1 or more, else
    # val_acc (decided from the sample lists at set-up, written into the run's config.yaml)
    monitor: str = "auto"
    mode: Literal["min", "max"] = "max"
    every_n_epochs: int = Field(0, ge=0)  # also keep epoch-<n>.pt every N epochs; 0 = off
    every_n_steps: int = Field(0, ge=0)  # also write last.pt every N optimizer steps (mid-epoch); 0 = off
    keep: int = Field(3, gt=0)


class TrainerConfig(_Strict):
    epochs: int | float = Field(10, gt=0)  # a fraction (e.g. 1.5, as airbench's 9.9) ends mid-epoch
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    grad_clip: float | None = Field(None, gt=0)
    accumulate: int = Field(1, gt=0)  # optimizer step every N batches
    label_smoothing: float = Field(0.0, ge=0, lt=1)
    # a registered loss, or "module:function" / "module:Class" of your own; auto: cross_entropy, or bce for
    # multi-label data. Imbalance: weighted_cross_entropy, logit_adjusted, balanced_softmax, ldam (+ DRW);
    # multi-label: bce, asymmetric
    loss: str = "auto"
    # class weights in the loss: balanced (inverse class frequency, mean 1) or one weight per class
    class_weights: Literal["balanced"] | list[float] | None = None
    # auto: train classes skewed 3:1 or more, and no class_weights, data.sampler or imbalance loss set: the
    # loss weighs classes balanced (trainer.class_weights=balanced; logged); off: as the config says
    imbalance: Literal["auto", "off"] = "auto"

    loss_args: dict[str, Any] = {}
    # extra val metrics: built-in names (top5, balanced_accuracy, macro_f1, map) or "module:fn" with
    # fn(logits, labels) -> float, logged as val_<name>
    metrics: list[str] = []

    early_stopping: EarlyStoppingConfig | None = None
    on_nan: Literal["stop", "skip"] = "stop"  # a non-finite loss: stop (checkpoints kept) or skip that step
    unfreeze: UnfreezeConfig | None = None  # gradual unfreezing of model.freeze'd parameters
    checkpoint: CheckpointConfig = CheckpointConfig()
    progress: Literal["auto", "on", "off"] = "auto"
    log_every_n_steps: int = Field(50, gt=0)  # how often the device-side loss is read back (host sync)
    channels_last: Literal["auto", "on", "off"] = "auto"  # auto: on for conv nets on CUDA and CPU (faster)
    compile: bool = False  # torch.compile the model (checkpoints stay free of the _orig_mod. prefix)
    ema: EmaConfig | None = None  # evaluate and checkpoint an exponential moving average of the weights
    tta: Literal["none", "flip", "flip_translate"] = "none"  # test-time augmentation views at evaluation
    val_every_n_epochs: int = Field(1, gt=0)  # validate after every N-th epoch, and always after the last
    # model.freeze=backbone with frozen BatchNorm: compute the backbone's features once per image and view
    # (data.augment.views) and train the head on them; off: full forward passes every step
    frozen_features: Literal["auto", "off"] = "auto"
    # how the head learns on those features: solve = to the optimum of the training loss plus an L2 penalty
    # whose strength is chosen on the val split (k-fold on train without one), full-batch L-BFGS, seconds;
    # the frozen epochs are that one solve. epochs = trainer.epochs of optimizer.* steps, as live images
    frozen_head: Literal["solve", "epochs"] = "solve"

    @field_validator("frozen_features", "imbalance", mode="before")
    @classmethod
    def _yaml_off(cls, v: Any) -> Any:
        return (
            {True: "auto", False: "off"}.get(v, v) if isinstance(v, bool) else v
        )  # YAML 1.1 reads off as false

    @field_validator("progress", "channels_last", mode="before")
    @classmethod
    def _yaml_on_off(cls, v: Any) -> Any:
        return (
            {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v
        )  # YAML 1.1 reads off as false


class WandbConfig(_Strict):
    project: str = "kiln"
    entity: str | None = None
    mode: Literal["online", "offline", "disabled"] = "offline"  # offline: no network; `wandb sync` later
    tags: list[str] = []


class LoggingConfig(_Strict):
    tensorboard: bool = True  # event files in <run dir>/tensorboard
    every_n_steps: int = Field(10, gt=0)  # per-step train loss / lr scalars (one host read each time)
    images: bool = True  # a grid of augmented training images at the start
    graph: bool = True  # the model's graph (a trace: about a second for an ImageNet-size network on a CPU)
    wandb: WandbConfig | None = None  # Weights & Biases (optional extra: pip install 'torchkiln[wandb]')


class CallbackSpec(_Strict):
    name: str  # a registered callback or "module:Class" (a kiln.engine.callbacks.Callback subclass)
    args: dict[str, Any] = {}


class Config(_Strict):
    run: RunConfig = RunConfig()
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    scheduler: SchedulerConfig = SchedulerConfig()
    trainer: TrainerConfig = TrainerConfig()
    logging: LoggingConfig = LoggingConfig()
    callbacks: list[CallbackSpec] = []  # your own callbacks, in order, after kiln's
    imports: list[str] = []  # user modules imported before anything is built (plug-ins)

    @property
    def run_dir(self) -> Path:
        return Path(self.run.dir) if self.run.dir else Path("runs") / self.run.name

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
