"""Built-in losses (registry ``LOSSES``); a user's own is ``trainer.loss: mymodule:my_loss`` or a name
registered with ``@kiln.register_loss("name")``. A loss is called as ``loss(logits, targets)`` -> scalar.

A factory that needs the training data's statistics takes the keyword ``class_counts: list[int]`` (train
images per class, in class order); ``build_loss`` passes it to every factory whose signature has it.
Single-label losses take targets [N] int64; the multi-label ones (``bce``, ``asymmetric``) take [N, K] 0/1.
Losses whose class weights change during training (deferred re-weighting) are ``ReweightableLoss`` objects:
``set_weights(w)`` swaps the weights, and ``set_epoch(epoch)``, where a loss has it, applies its schedule.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F

from kiln.errors import ConfigError
from kiln.registry import LOSSES, register_loss

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Weights = Sequence[float] | torch.Tensor | None


@register_loss("cross_entropy")
def cross_entropy(label_smoothing: float = 0.0) -> LossFn:
    return lambda logits, y: F.cross_entropy(logits, y, label_smoothing=label_smoothing)


@register_loss("focal")
def focal(gamma: float = 2.0, label_smoothing: float = 0.0) -> LossFn:
    """Focal loss (Lin et al. 2017): down-weights easy examples by (1 - p_true)^gamma."""

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ce = F.cross_entropy(logits, y, reduction="none", label_smoothing=label_smoothing)
        return ((1 - torch.exp(-ce)) ** gamma * ce).mean()

    return loss


def checked_counts(class_counts: Sequence[int] | None, loss: str) -> torch.Tensor:
    """The train class counts as float64, or one error naming the loss and what to do."""
    if class_counts is None:
        raise ConfigError(f"trainer.loss: {loss} needs the train class counts, and none were given")
    counts = torch.as_tensor(list(class_counts), dtype=torch.float64)
    if counts.ndim != 1 or len(counts) == 0:
        raise ConfigError(
            f"trainer.loss: {loss} needs one train count per class, got {list(class_counts)[:20]}"
        )
    empty = (counts <= 0).nonzero().flatten().tolist()
    if empty:
        raise ConfigError(
            f"trainer.loss: {loss} uses the train count of each class, but class {empty[0]} has no training "
            f"images ({len(empty)} such classes); give every class training images or use another loss"
        )
    return counts


def balanced_weights(class_counts: Sequence[int]) -> torch.Tensor:
    """Inverse class frequency, n / (K * n_j): scikit-learn's ``compute_class_weight("balanced")``, whose
    mean over the training images is 1 (so the loss keeps the scale of plain cross-entropy)."""
    counts = checked_counts(class_counts, "balanced class weights")
    return counts.sum() / (len(counts) * counts)


def drw_weights(class_counts: Sequence[int], beta: float = 0.9999) -> torch.Tensor:
    """Class-balanced weights (Cui et al. 2019), (1 - beta) / (1 - beta^n_j), the weights deferred
    re-weighting switches to (Cao et al. 2019); normalised to mean 1 over the classes as the LDAM-DRW
    reference code does. beta 0.9999 makes them ~1/n_j for n_j << 10,000 and flatter for larger classes."""
    counts = checked_counts(class_counts, "drw")
    weights = (1 - beta) / (1 - torch.pow(torch.tensor(beta, dtype=torch.float64), counts))
    return weights / weights.mean()


class ReweightableLoss:
    """A class-weighted loss whose weights can be replaced mid-training (``set_weights``), e.g. when
    deferred re-weighting switches on. ``weights`` None: every class counts the same."""

    def __init__(self, weights: Weights = None) -> None:
        self.weights: torch.Tensor | None = None
        self.set_weights(weights)

    def set_weights(self, weights: Weights) -> None:
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float32).clone()

    def weight_for(self, logits: torch.Tensor) -> torch.Tensor | None:
        if self.weights is None:
            return None
        classes = logits.shape[1]
        if len(self.weights) != classes:
            raise ConfigError(
                f"trainer.loss_args: {len(self.weights)} class weights for a model of {classes} classes"
            )
        return self.weights.to(logits.device, logits.dtype)

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class WeightedCrossEntropy(ReweightableLoss):
    def __init__(self, weights: Weights, label_smoothing: float = 0.0) -> None:
        super().__init__(weights)
        self.label_smoothing = label_smoothing

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        weight = self.weight_for(logits)
        return F.cross_entropy(logits, y, weight=weight, label_smoothing=self.label_smoothing)


@register_loss("weighted_cross_entropy")
def weighted_cross_entropy(
    class_weights: Sequence[float] | str = "balanced",
    label_smoothing: float = 0.0,
    class_counts: Sequence[int] | None = None,
) -> WeightedCrossEntropy:
    """Cross-entropy with a weight per class (``F.cross_entropy(weight=)``: the batch's weighted mean):
    ``class_weights`` a list, or ``"balanced"`` (``balanced_weights`` of the train counts)."""
    if isinstance(class_weights, str):
        if class_weights != "balanced":
            raise ConfigError(
                f"trainer.loss_args.class_weights: '{class_weights[:50]}' is neither 'balanced' nor a list"
            )
        counts = checked_counts(class_counts, "weighted_cross_entropy")
        return WeightedCrossEntropy(balanced_weights(counts), label_smoothing)
    if class_counts is not None and len(class_weights) != len(class_counts):
        raise ConfigError(
            f"trainer.loss_args.class_weights: {len(class_weights)} weights for {len(class_counts)} classes"
        )
    return WeightedCrossEntropy(list(class_weights), label_smoothing)


@register_loss("logit_adjusted")
def logit_adjusted(
    tau: float = 1.0, label_smoothing: float = 0.0, class_counts: Sequence[int] | None = None
) -> LossFn:
    """Logit-adjusted cross-entropy (Menon et al. 2021, the loss form): CE(logits + tau * log prior_j),
    prior = the train class frequencies. Training against the prior-shifted logits makes the plain logits
    estimate the class-balanced posterior, so at inference use the model's plain logits (no adjustment;
    the post-hoc variant of the paper, subtracting tau * log prior at test time, is for a model trained
    with plain CE instead)."""
    counts = checked_counts(class_counts, "logit_adjusted")
    offsets = (tau * torch.log(counts / counts.sum())).float()

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        adjusted = logits + offsets.to(logits.device, logits.dtype)
        return F.cross_entropy(adjusted, y, label_smoothing=label_smoothing)

    return loss


@register_loss("balanced_softmax")
def balanced_softmax(label_smoothing: float = 0.0, class_counts: Sequence[int] | None = None) -> LossFn:
    """Balanced softmax (Ren et al. 2020): softmax with each class's exp(logit) scaled by its train count
    n_j, i.e. CE(logits + log n_j), the same function as ``logit_adjusted`` with tau = 1 (a constant shift of
    every logit cancels in the softmax). At inference the plain logits (plain softmax) are used."""
    return logit_adjusted(1.0, label_smoothing, class_counts)


class LDAMLoss(ReweightableLoss):
    """LDAM (Cao et al. 2019): CE(s * (logits - m_y at the true class)), margins m_j = C / n_j^(1/4) with C
    set so the rarest class gets ``max_margin``. The paper's heads are normalised (cosine) linear layers,
    logits in [-1, 1], which the scale s = 30 assumes; with an ordinary linear head pass scale=1.

    Deferred re-weighting (DRW): with ``drw_epoch``, ``set_epoch(e)`` switches the class weights to
    ``drw_weights(counts, drw_beta)`` from epoch ``drw_epoch`` on (0-based; the paper: 160 of 200), plain
    before. The weights are a pure function of the epoch, so a resumed run only has to call set_epoch."""

    def __init__(
        self,
        class_counts: Sequence[int] | None,
        max_margin: float = 0.5,
        scale: float = 30.0,
        drw_epoch: int | None = None,
        drw_beta: float = 0.9999,
    ) -> None:
        super().__init__(None)
        counts = checked_counts(class_counts, "ldam")
        margins = counts**-0.25
        self.margins = (margins * (max_margin / margins.max())).float()
        self.scale, self.counts = scale, [int(n) for n in counts]
        self.drw_epoch, self.drw_beta = drw_epoch, drw_beta

    def set_epoch(self, epoch: int) -> None:
        if self.drw_epoch is not None:
            on = epoch >= self.drw_epoch
            self.set_weights(drw_weights(self.counts, self.drw_beta) if on else None)

    def __call__(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        margin = self.margins.to(logits.device, logits.dtype)[y]  # [N]: the true class's margin
        shifted = logits.scatter_add(1, y.unsqueeze(1), -margin.unsqueeze(1))
        return F.cross_entropy(self.scale * shifted, y, weight=self.weight_for(logits))


@register_loss("ldam")
def ldam(
    max_margin: float = 0.5,
    scale: float = 30.0,
    drw_epoch: int | None = None,
    drw_beta: float = 0.9999,
    class_counts: Sequence[int] | None = None,
) -> LDAMLoss:
    return LDAMLoss(class_counts, max_margin, scale, drw_epoch, drw_beta)


def smoothed(targets: torch.Tensor, like: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Multi-label targets as floats, each 0/1 moved label_smoothing/2 toward 1/2."""
    y = targets.to(like.dtype)
    return y * (1 - label_smoothing) + label_smoothing / 2 if label_smoothing else y


@register_loss("bce")
def bce(label_smoothing: float = 0.0, pos_weight: Sequence[float] | None = None) -> LossFn:
    """Multi-label: binary cross-entropy with logits, the mean over the [N, K] (image, class) pairs;
    ``pos_weight`` per class scales the positive term (``F.binary_cross_entropy_with_logits``)."""
    weights = None if pos_weight is None else torch.as_tensor(pos_weight, dtype=torch.float32)

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        pos = None if weights is None else weights.to(logits.device, logits.dtype)
        targets = smoothed(y, logits, label_smoothing)
        return F.binary_cross_entropy_with_logits(logits, targets, pos_weight=pos)

    return loss


@register_loss("asymmetric")
def asymmetric(
    gamma_neg: float = 4.0,
    gamma_pos: float = 0.0,
    clip: float = 0.05,
    eps: float = 1e-8,
    detach_focal_weight: bool = False,
    reduction: str = "sum",
) -> LossFn:
    """Multi-label asymmetric loss (Ridnik et al. 2021), as its reference code (``AsymmetricLoss``):
    positives L+ = (1-p)^gamma_pos log p, negatives L- = p_m^gamma_neg log(1 - p_m) with the probability
    shifted down by the margin, p_m = max(p - clip, 0); logs clamped at ``eps``. Defaults: the paper's
    gamma_neg 4, gamma_pos 0, clip 0.05. ``detach_focal_weight`` treats the focusing weights as constants
    in backward (the reference training script's ``disable_torch_grad_focal_loss=True``). ``reduction``
    "sum" over the batch and classes, as the reference; "mean" over the [N, K] pairs, as ``bce``, which it
    then equals at gamma_neg = gamma_pos = clip = 0."""
    if reduction not in ("sum", "mean"):
        raise ConfigError(f"trainer.loss_args.reduction: '{str(reduction)[:50]}' is neither 'sum' nor 'mean'")

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        targets = y.to(logits.dtype)
        prob = torch.sigmoid(logits)
        prob_neg = (1 - prob + clip).clamp(max=1) if clip > 0 else 1 - prob  # 1 - p_m
        terms = targets * torch.log(prob.clamp(min=eps)) + (1 - targets) * torch.log(prob_neg.clamp(min=eps))
        if gamma_neg > 0 or gamma_pos > 0:
            with torch.set_grad_enabled(torch.is_grad_enabled() and not detach_focal_weight):
                p_true = prob * targets + prob_neg * (1 - targets)
                gamma = gamma_pos * targets + gamma_neg * (1 - targets)
                focus = torch.pow(1 - p_true, gamma)
            terms = terms * focus
        return -terms.sum() if reduction == "sum" else -terms.mean()

    return loss


def build_loss(
    name: str, label_smoothing: float, args: dict[str, object], class_counts: Sequence[int] | None = None
) -> LossFn:
    """A registered name is a factory (called with ``args``, plus ``label_smoothing`` and ``class_counts``
    when its signature takes them); ``module:Class`` (e.g. ``torch.nn:CrossEntropyLoss``) is instantiated
    the same way; ``module:function`` is the loss itself, ``function(logits, targets, **args)``."""
    factory = LOSSES.get(name)
    try:
        if ":" in name and not isinstance(factory, type):
            return functools.partial(factory, **args) if args else factory
        kwargs = dict(args)
        parameters = inspect.signature(factory).parameters
        if "label_smoothing" in parameters:
            kwargs.setdefault("label_smoothing", label_smoothing)
        if "class_counts" in parameters:
            kwargs.setdefault("class_counts", None if class_counts is None else list(class_counts))
        return factory(**kwargs)
    except TypeError as e:
        raise ConfigError(f"trainer.loss_args: {name} does not accept these arguments ({e})") from None
