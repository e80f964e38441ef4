"""Transfer learning: pretrained weights (library defaults or a file), the classifier head, freezing with
BatchNorm kept in eval mode, and a trainable/frozen summary."""

from __future__ import annotations

import contextlib
import fnmatch
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from kiln.checkpoint import read_weights
from kiln.console import log
from kiln.errors import ConfigError

Head = tuple[torch.Tensor, torch.Tensor]  # a classifier's (weight, bias)


def head_name(model: nn.Module) -> str:
    """The classifier's module name: timm's get_classifier(), else the last nn.Linear registered."""
    modules = dict(model.named_modules())
    if hasattr(model, "get_classifier"):
        clf = model.get_classifier()
        for name, m in modules.items():
            if m is clf and name:
                return name
    linears = [name for name, m in modules.items() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError(f"model: cannot find a classifier head (no nn.Linear) in {type(model).__name__}")
    return linears[-1]


def replace_head(model: nn.Module, num_classes: int) -> str:
    """Swap the head for a fresh Linear with ``num_classes`` outputs (if it has another count)."""
    name = head_name(model)
    old = model.get_submodule(name)
    if isinstance(old, nn.Linear) and old.out_features != num_classes:
        parent, _, attr = name.rpartition(".")
        new = nn.Linear(old.in_features, num_classes, bias=old.bias is not None)
        setattr(model.get_submodule(parent) if parent else model, attr, new)
    return name


def load_pretrained(model: nn.Module, path: str | Path, strict: bool, head: str) -> dict[str, list[str]]:
    """Load a weights file; the head's tensors are skipped when their shapes differ (a new class count)."""
    state, own = read_weights(path), model.state_dict()
    skipped = [k for k, v in state.items() if k in own and own[k].shape != v.shape]
    bad = [k for k in skipped if not k.startswith(head + ".")]
    if bad:
        raise ConfigError(
            f"model.pretrained: shapes differ outside the head for {bad[:5]}; is this the same "
            f"architecture as model.name?"
        )
    result = model.load_state_dict({k: v for k, v in state.items() if k not in skipped}, strict=False)
    reset = getattr(model.get_submodule(head), "reset_parameters", None)
    if skipped and callable(reset):
        # a new class count: the head starts as a fresh nn.Linear does (U(+-1/sqrt(in_features))). timm
        # builds EfficientNet heads with U(+-1/sqrt(classes)): for 3 classes logits in the tens, a first
        # train loss of 7.7 instead of ln 3 and a frozen head stuck at chance (measured)
        reset()
    missing = [k for k in result.missing_keys if not k.startswith(head + ".")]
    if strict and (missing or result.unexpected_keys):
        raise ConfigError(
            f"model.pretrained: {path} does not match the model: missing {missing[:5]}, "
            f"unexpected {result.unexpected_keys[:5]} (set model.strict=false to load anyway)"
        )
    return {
        "missing": missing,
        "unexpected": list(result.unexpected_keys),
        "head_reset": skipped,
        "old_head": [state[f"{head}.weight"], state[f"{head}.bias"]]
        if f"{head}.weight" in skipped and f"{head}.bias" in state
        else [],
    }


def select(model: nn.Module, freeze: list[str] | str, head: str) -> list[str]:
    """Names of the parameters to freeze: glob patterns, or 'backbone' = everything outside the head."""
    names = [n for n, _ in model.named_parameters()]
    if freeze == "backbone":
        return [n for n in names if not n.startswith(head + ".")]
    chosen = [n for n in names if any(fnmatch.fnmatchcase(n, pat) for pat in freeze)]
    unused = [pat for pat in freeze if not any(fnmatch.fnmatchcase(n, pat) for n in names)]
    if unused:
        raise ConfigError(f"model.freeze: {unused} match no parameter (names look like {names[:3]})")
    return chosen


def frozen_batchnorms(model: nn.Module) -> list[nn.Module]:
    """BatchNorm layers whose parameters are all frozen: kept in eval mode while training."""
    return [
        m
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and all(not p.requires_grad for p in m.parameters())
    ]


def param_table(model: nn.Module) -> str:
    rows: dict[str, list[int]] = {}
    for name, p in model.named_parameters():
        row = rows.setdefault(name.split(".")[0], [0, 0])
        row[0 if p.requires_grad else 1] += p.numel()
    total = [sum(r[0] for r in rows.values()), sum(r[1] for r in rows.values())]
    width = max(len(k) for k in [*rows, "module"])
    lines = [f"{'module':<{width}}  {'trainable':>12}  {'frozen':>12}"]
    lines += [f"{k:<{width}}  {t:>12,}  {f:>12,}" for k, (t, f) in rows.items()]
    lines.append(f"{'total':<{width}}  {total[0]:>12,}  {total[1]:>12,}")
    return "\n".join(lines)


def summary_line(info: dict[str, Any]) -> str:
    return ", ".join(f"{k}: {len(v)}{' ' + str(v[:3]) if v else ''}" for k, v in info.items())


def prepare(
    model: nn.Module, pretrained: bool | str, strict: bool, freeze: list[str] | str | None
) -> tuple[list[str], Head | None]:
    """Load a weights file and freeze parameters as the config says; print what was done. Returns the
    names of the frozen parameters (for gradual unfreezing) and the weights file's own classifier (weight,
    bias) when the new head replaced one of another size (for model.head_init: pretrained_classes)."""
    if not pretrained and not freeze:
        return [], None
    head = head_name(model)
    old_head = None
    if isinstance(pretrained, str):
        info = load_pretrained(model, pretrained, strict, head)
        old = info.pop("old_head")
        old_head = (old[0], old[1]) if old else None
        log(f"kiln: loaded {pretrained} (new head '{head}'; {summary_line(info)})")
    elif pretrained:
        log(f"kiln: pretrained weights from the model library; new head '{head}'")
    frozen = select(model, freeze, head) if freeze else []
    names = set(frozen)
    for n, p in model.named_parameters():
        if n in names:
            p.requires_grad_(False)
    log(param_table(model))
    return frozen, old_head


@contextlib.contextmanager
def without_head(model: nn.Module) -> Iterator[nn.Module]:
    """The model with an identity in its head's place, in eval mode, for the duration: it gives the
    features the head takes."""
    head = head_name(model)
    parent_name, _, attr = head.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    layer, training = getattr(parent, attr), model.training
    setattr(parent, attr, nn.Identity())
    model.eval()
    try:
        yield model
    finally:
        setattr(parent, attr, layer)
        model.train(training)


@torch.no_grad()
def init_head_from_classes(
    head: nn.Linear, old: tuple[torch.Tensor, torch.Tensor], features: torch.Tensor, labels: torch.Tensor
) -> list[int]:
    """A new head from the pretrained classifier, found from the data: each class takes the pretrained row
    of the pretrained class its training images are most often predicted as (their mean softmax's top); two
    classes that would share a row take their mean-softmax mixes of rows instead. The model starts from what
    it already knows (a data-driven zero-shot start, no class names needed). Returns the classes that had no
    images (their rows keep the default init). Multi-label ``labels`` ([N, K] 0/1): a class's images are
    those that carry its label."""
    weight, bias = (t.to(features) for t in old)
    probs = torch.softmax(features @ weight.T + bias, 1)
    labels = labels.to(probs.device)
    members = [labels[:, k] > 0.5 if labels.ndim == 2 else labels == k for k in range(head.out_features)]
    mixes = {k: probs[m].mean(0) for k, m in enumerate(members) if bool(m.any())}
    tops = [int(m.argmax()) for m in mixes.values()]
    for k, mix in mixes.items():
        shared = tops.count(int(mix.argmax())) > 1
        row = mix if shared else torch.nn.functional.one_hot(mix.argmax(), len(mix)).to(mix)
        head.weight[k] = (row @ weight).to(head.weight)
        if head.bias is not None:
            head.bias[k] = (row @ bias).to(head.bias)
    return [k for k in range(head.out_features) if k not in mixes]
