"""Losses by name: registered factories, `module:Class`, `module:function`, with their arguments."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from kiln.errors import ConfigError
from kiln.losses import balanced_weights, build_loss, drw_weights

LOGITS = torch.randn(16, 5, generator=torch.Generator().manual_seed(0))
Y = torch.arange(16) % 5


def test_cross_entropy_with_label_smoothing() -> None:
    got = build_loss("cross_entropy", 0.1, {})(LOGITS, Y)
    assert torch.equal(got, F.cross_entropy(LOGITS, Y, label_smoothing=0.1))


def test_focal_with_gamma_zero_is_cross_entropy_and_down_weights_easy_examples() -> None:
    assert torch.allclose(build_loss("focal", 0.0, {"gamma": 0.0})(LOGITS, Y), F.cross_entropy(LOGITS, Y))
    assert build_loss("focal", 0.0, {"gamma": 2.0})(LOGITS, Y) < F.cross_entropy(LOGITS, Y)


def test_module_class_and_function() -> None:
    cls = build_loss("torch.nn:CrossEntropyLoss", 0.0, {"label_smoothing": 0.2})
    assert torch.equal(cls(LOGITS, Y), F.cross_entropy(LOGITS, Y, label_smoothing=0.2))
    fn = build_loss("torch.nn.functional:cross_entropy", 0.0, {"reduction": "sum"})
    assert torch.allclose(fn(LOGITS, Y), F.cross_entropy(LOGITS, Y, reduction="sum"))


def test_bad_arguments_and_names_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="trainer.loss_args: focal does not accept these arguments"):
        build_loss("focal", 0.0, {"alpha": 1})
    with pytest.raises(ConfigError, match=r"trainer.loss: unknown loss 'focall' — did you mean 'focal'\?"):
        build_loss("focall", 0.0, {})


# ----- imbalance: train counts of a long tail, K = 5 as LOGITS -----

COUNTS = [500, 200, 50, 10, 2]
PRIOR = torch.tensor(COUNTS, dtype=torch.float64) / sum(COUNTS)


def _nll(logits: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    """-log softmax(logits)[y], written out: the (weighted) mean over the batch, as torch defines it."""
    log_p = logits - logits.logsumexp(1, keepdim=True)
    picked = -log_p.gather(1, y.unsqueeze(1)).squeeze(1)
    w = torch.ones_like(picked) if weight is None else weight[y]
    return (w * picked).sum() / w.sum()


def test_balanced_weights_are_sklearns_compute_class_weight() -> None:
    from sklearn.utils.class_weight import compute_class_weight

    labels = np.repeat(np.arange(len(COUNTS)), COUNTS)
    want = compute_class_weight("balanced", classes=np.arange(len(COUNTS)), y=labels)
    assert balanced_weights(COUNTS).numpy() == pytest.approx(want, rel=1e-12)


def test_balanced_weights_average_one_over_the_training_images() -> None:
    weights = balanced_weights(COUNTS)
    assert float((weights * torch.tensor(COUNTS)).sum() / sum(COUNTS)) == pytest.approx(1.0)


def test_weighted_cross_entropy_balanced_gets_the_counts_from_build_loss() -> None:
    got = build_loss("weighted_cross_entropy", 0.0, {}, class_counts=COUNTS)(LOGITS, Y)
    want = F.cross_entropy(LOGITS, Y, weight=balanced_weights(COUNTS).float())
    assert torch.allclose(got, want)


def test_weighted_cross_entropy_is_the_weighted_mean_of_the_written_out_nll() -> None:
    weights = [0.5, 1.0, 2.0, 3.0, 4.0]
    got = build_loss("weighted_cross_entropy", 0.0, {"class_weights": weights})(LOGITS, Y)
    assert torch.allclose(got, _nll(LOGITS, Y, torch.tensor(weights)))


def test_weighted_cross_entropy_passes_label_smoothing() -> None:
    got = build_loss("weighted_cross_entropy", 0.1, {}, class_counts=COUNTS)(LOGITS, Y)
    want = F.cross_entropy(LOGITS, Y, weight=balanced_weights(COUNTS).float(), label_smoothing=0.1)
    assert torch.allclose(got, want)


def test_set_weights_changes_the_weights_of_a_built_loss() -> None:
    loss = build_loss("weighted_cross_entropy", 0.0, {"class_weights": [1.0] * 5})
    loss.set_weights([4.0, 3.0, 2.0, 1.0, 0.5])
    assert torch.allclose(loss(LOGITS, Y), F.cross_entropy(LOGITS, Y, weight=torch.tensor([4, 3, 2, 1, 0.5])))


def test_a_loss_that_needs_counts_says_so_when_it_gets_none() -> None:
    with pytest.raises(ConfigError, match="trainer.loss: logit_adjusted needs the train class counts"):
        build_loss("logit_adjusted", 0.0, {})


def test_a_class_without_training_images_is_named() -> None:
    with pytest.raises(ConfigError, match="but class 2 has no training images"):
        build_loss("ldam", 0.0, {}, class_counts=[5, 3, 0, 4])


def test_class_weights_of_the_wrong_length_or_kind_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="class_weights: 2 weights for 5 classes"):
        build_loss("weighted_cross_entropy", 0.0, {"class_weights": [1.0, 2.0]}, class_counts=COUNTS)
    with pytest.raises(ConfigError, match="'inverse' is neither 'balanced' nor a list"):
        build_loss("weighted_cross_entropy", 0.0, {"class_weights": "inverse"}, class_counts=COUNTS)


def test_counts_do_not_reach_a_factory_that_does_not_take_them() -> None:
    got = build_loss("cross_entropy", 0.0, {}, class_counts=COUNTS)(LOGITS, Y)
    assert torch.equal(got, F.cross_entropy(LOGITS, Y))


@pytest.mark.parametrize("tau", [1.0, 0.5])
def test_logit_adjusted_is_cross_entropy_of_logits_plus_tau_log_prior(tau: float) -> None:
    got = build_loss("logit_adjusted", 0.0, {"tau": tau}, class_counts=COUNTS)(LOGITS, Y)
    assert torch.allclose(got, _nll(LOGITS.double() + tau * PRIOR.log(), Y).float())


def test_balanced_softmax_is_the_count_weighted_softmax_of_ren_et_al() -> None:
    got = build_loss("balanced_softmax", 0.0, {}, class_counts=COUNTS)(LOGITS, Y)
    scaled = torch.tensor(COUNTS, dtype=torch.float64) * LOGITS.double().exp()  # n_j exp(z_j)
    want = -(scaled.gather(1, Y.unsqueeze(1)).squeeze(1) / scaled.sum(1)).log().mean()
    assert float(got) == pytest.approx(float(want), rel=1e-5)


def test_ldam_margins_are_c_over_n_to_the_quarter_with_the_rarest_at_the_max() -> None:
    loss = build_loss("ldam", 0.0, {}, class_counts=COUNTS)
    margins = loss.margins.double()
    assert float(margins[-1]) == pytest.approx(0.5)  # the rarest class (2 images)
    constant = margins * torch.tensor(COUNTS, dtype=torch.float64) ** 0.25
    assert torch.allclose(constant, torch.full_like(constant, float(constant[0])))


def test_ldam_is_scaled_cross_entropy_with_the_true_class_logit_lowered_by_its_margin() -> None:
    loss = build_loss("ldam", 0.0, {"scale": 30.0}, class_counts=COUNTS)
    margins = 0.5 * (torch.tensor(COUNTS, dtype=torch.float64) / min(COUNTS)) ** -0.25
    shifted = LOGITS.double() - F.one_hot(Y, 5) * margins[Y].unsqueeze(1)
    assert float(loss(LOGITS, Y)) == pytest.approx(float(_nll(30 * shifted, Y)), rel=1e-5)


def test_drw_weights_are_the_effective_number_weights_normalised_to_mean_one() -> None:
    beta = 0.999
    counts = torch.tensor(COUNTS, dtype=torch.float64)
    raw = (1 - beta) / (1 - beta**counts)
    got = drw_weights(COUNTS, beta)
    assert torch.allclose(got, raw * len(COUNTS) / raw.sum())


def test_ldam_drw_switches_to_drw_weights_at_its_epoch() -> None:
    loss = build_loss("ldam", 0.0, {"drw_epoch": 3, "scale": 1.0}, class_counts=COUNTS)
    loss.set_epoch(2)
    before = loss(LOGITS, Y)
    loss.set_epoch(3)
    shifted = LOGITS - F.one_hot(Y, 5) * loss.margins[Y].unsqueeze(1)
    assert torch.allclose(before, F.cross_entropy(shifted, Y))
    assert torch.allclose(loss(LOGITS, Y), F.cross_entropy(shifted, Y, weight=drw_weights(COUNTS).float()))


# ----- multi-label: K = 5 labels per image -----

MULTI = (torch.rand(16, 5, generator=torch.Generator().manual_seed(1)) < 0.3).long()


def test_bce_is_torchs_bce_with_logits_on_float_targets() -> None:
    got = build_loss("bce", 0.0, {})(LOGITS, MULTI)
    assert torch.equal(got, F.binary_cross_entropy_with_logits(LOGITS, MULTI.float()))


def test_bce_label_smoothing_moves_targets_toward_one_half() -> None:
    got = build_loss("bce", 0.2, {"pos_weight": [2.0] * 5})(LOGITS, MULTI)
    soft = MULTI * 0.8 + 0.1
    p = torch.sigmoid(LOGITS.double())
    want = -(2.0 * soft * p.log() + (1 - soft) * (1 - p).log()).mean()
    assert float(got) == pytest.approx(float(want), rel=1e-5)


def _asl(
    logits: torch.Tensor, y: torch.Tensor, gamma_neg: float, gamma_pos: float, clip: float
) -> torch.Tensor:
    """The paper's equations: L+ = (1-p)^g+ log p, L- = p_m^g- log(1-p_m), p_m = max(p - m, 0)."""
    p = torch.sigmoid(logits.double())
    p_m = (p - clip).clamp(min=0)
    pos = (1 - p) ** gamma_pos * p.log()
    neg = p_m**gamma_neg * (1 - p_m).log()
    return -(y * pos + (1 - y) * neg).sum()


@pytest.mark.parametrize("gamma_pos", [0.0, 1.0])
def test_asymmetric_loss_is_the_papers_formula(gamma_pos: float) -> None:
    got = build_loss("asymmetric", 0.0, {"gamma_pos": gamma_pos})(LOGITS, MULTI)
    assert float(got) == pytest.approx(float(_asl(LOGITS, MULTI, 4.0, gamma_pos, 0.05)), rel=1e-5)


def test_asymmetric_loss_without_focusing_or_clip_and_mean_reduction_is_bce() -> None:
    args = {"gamma_neg": 0.0, "gamma_pos": 0.0, "clip": 0.0, "reduction": "mean"}
    got = build_loss("asymmetric", 0.0, args)(LOGITS, MULTI)
    assert torch.allclose(got, F.binary_cross_entropy_with_logits(LOGITS, MULTI.float()))


def test_asymmetric_detached_focus_has_the_gradient_of_constant_weights() -> None:
    logits = LOGITS.clone().requires_grad_()
    build_loss("asymmetric", 0.0, {"detach_focal_weight": True})(logits, MULTI).backward()
    p = torch.sigmoid(LOGITS.double())
    p_m = (p - 0.05).clamp(min=0)
    # the focusing weights held constant: d/dz of -(1-y) w log(1 - p_m), with dp/dz = p(1-p), p_m > 0 only
    w_neg = p_m**4
    grad_neg = w_neg * p * (1 - p) / (1 - p_m) * (p_m > 0)
    grad_pos = -(1 - p)  # gamma_pos 0: d/dz of -log p
    want = MULTI * grad_pos + (1 - MULTI) * grad_neg
    assert torch.allclose(logits.grad.double(), want, atol=1e-6)


ALL_LOSSES = [
    ("weighted_cross_entropy", Y),
    ("logit_adjusted", Y),
    ("balanced_softmax", Y),
    ("ldam", Y),
    ("bce", MULTI),
    ("asymmetric", MULTI),
]


@pytest.mark.parametrize(("name", "targets"), ALL_LOSSES)
def test_gradients_are_finite_even_for_saturated_logits(name: str, targets: torch.Tensor) -> None:
    logits = (LOGITS * 40).requires_grad_()  # |logits| up to ~100: sigmoid and softmax saturate
    loss = build_loss(name, 0.0, {}, class_counts=COUNTS)(logits, targets)
    loss.backward()
    assert bool(torch.isfinite(loss))
    assert bool(torch.isfinite(logits.grad).all())
