"""Optimizers and schedules: parameter groups, layer decay, per-images scaling, the LR curve, added groups."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from kiln.config import OptimizerConfig, ParamGroupConfig, SchedulerConfig
from kiln.errors import ConfigError
from kiln.optim import add_param_group, build_optimizer, build_scheduler, lr_factor, param_groups


def _net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))


def test_warmup_then_each_schedule() -> None:
    steps, per_epoch = 100, 10
    warm = lr_factor(SchedulerConfig(name="cosine", warmup_epochs=1), steps, per_epoch)
    assert [warm(s) for s in (0, 4, 9)] == [0.1, 0.5, 1.0]  # linear over the first epoch's 10 steps
    assert warm(10) == pytest.approx(1.0)
    assert warm(100) == pytest.approx(0.0, abs=1e-12)
    cos = lr_factor(SchedulerConfig(name="cosine", min_lr_ratio=0.1), steps, per_epoch)
    assert cos(50) == pytest.approx(0.1 + 0.9 * 0.5)
    assert cos(100) == pytest.approx(0.1)
    step = lr_factor(SchedulerConfig(name="step", step_size=3, gamma=0.5), steps, per_epoch)
    assert [step(s) for s in (0, 29, 30, 60)] == [1.0, 1.0, 0.5, 0.25]
    assert lr_factor(SchedulerConfig(name="none"), steps, per_epoch)(77) == 1.0
    one = lr_factor(SchedulerConfig(name="onecycle", warmup_epochs=2), steps, per_epoch)
    assert one(19) == 1.0
    assert one(60) == pytest.approx(0.5)
    assert one(99) == pytest.approx(1 / 80)


def test_onecycle_defaults_to_30_percent_warmup() -> None:
    opt = torch.optim.SGD(_net().parameters(), lr=1.0)
    sched = build_scheduler(SchedulerConfig(name="onecycle"), opt, epochs=10, steps_per_epoch=10)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert max(lrs) == pytest.approx(1.0)
    assert lrs.index(max(lrs)) == 29
    assert lrs[0] == pytest.approx(1 / 30)


def test_param_groups_globs_first_match_wins_and_no_decay_for_1d() -> None:
    net = _net()
    cfg = OptimizerConfig(
        weight_decay=0.1,
        no_decay_norm_bias=True,
        param_groups=[
            ParamGroupConfig(params="3.*", lr_mult=10),
            ParamGroupConfig(params="*", lr_mult=0.5, weight_decay=0.2),
        ],
    )
    groups = {(g["lr_mult"], g["weight_decay"]): len(g["params"]) for g in param_groups(cfg, net, 0.01, 0.1)}
    # head (3.*): weight x10 with wd 0.1, bias x10 with wd 0; the rest x0.5: conv weight wd 0.2, 1-D params
    # wd 0
    assert groups == {(10, 0.1): 1, (10, 0.0): 1, (0.5, 0.2): 1, (0.5, 0.0): 3}


def test_param_group_errors() -> None:
    net = _net()
    with pytest.raises(
        ConfigError, match=r"optimizer.param_groups: \['nope\.\*'\] match no parameter of the model"
    ):
        param_groups(OptimizerConfig(param_groups=[ParamGroupConfig(params="nope.*")]), net, 0.1, 0.0)
    net.requires_grad_(False)
    with pytest.raises(ConfigError, match="every parameter is frozen"):
        param_groups(OptimizerConfig(), net, 0.1, 0.0)


def test_per_images_scales_lr_and_weight_decay_with_the_batch() -> None:
    opt = build_optimizer(OptimizerConfig(lr=0.2, weight_decay=0.01, per_images=256), _net(), 64, fused=False)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.05)
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.0025)
    adam = build_optimizer(OptimizerConfig(name="adamw", lr=1e-3, betas=(0.8, 0.9)), _net(), 64, fused=True)
    assert isinstance(adam, torch.optim.AdamW)
    assert adam.defaults["betas"] == (0.8, 0.9)


def test_layer_decay_scales_depth_and_needs_a_timm_model() -> None:
    timm = pytest.importorskip("timm", reason="timm is an optional extra")
    model = timm.create_model("resnet10t", num_classes=3)
    groups = param_groups(OptimizerConfig(layer_decay=0.5), model, 1.0, 0.0)
    mults = sorted({g["lr_mult"] for g in groups})
    assert mults[-1] == 1.0  # the head at the full rate ...
    assert mults[0] < 0.1  # ... the stem decayed layer by layer
    with pytest.raises(ConfigError, match="optimizer.layer_decay: the model exposes no layers"):
        param_groups(OptimizerConfig(layer_decay=0.5), _net(), 1.0, 0.0)


def test_an_added_group_follows_the_schedule_from_where_it_is() -> None:
    net, extra = _net(), nn.Linear(2, 2)
    opt = torch.optim.SGD(net.parameters(), lr=1.0)
    sched = build_scheduler(SchedulerConfig(name="cosine"), opt, epochs=1, steps_per_epoch=10)
    for _ in range(5):
        opt.step()
        sched.step()
    add_param_group(opt, sched, list(extra.parameters()), lr_mult=0.1, weight_decay=0.0)
    assert opt.param_groups[1]["lr"] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    opt.step()
    sched.step()
    assert opt.param_groups[1]["lr"] == pytest.approx(0.1 * opt.param_groups[0]["lr"])


def test_a_glob_over_frozen_parameters_only_is_not_an_error(capsys: pytest.CaptureFixture[str]) -> None:
    """The photos template's `*` group (the backbone at lr x 0.1) in a run that freezes the backbone."""
    net = _net()
    for name, p in net.named_parameters():
        p.requires_grad_(name.startswith("3."))  # only the head trains
    cfg = OptimizerConfig(
        param_groups=[ParamGroupConfig(params="3.*"), ParamGroupConfig(params="*", lr_mult=0.1)]
    )
    groups = param_groups(cfg, net, 0.1, 0.0)
    assert sum(len(g["params"]) for g in groups) == 2
    assert "match only frozen parameters" in capsys.readouterr().out
