"""What a trained model is, beside its weights: ``ModelRecipe``, the network (the model's name and args, the
user modules it needs), its input (``spec.Preprocess``) and its outputs (``ClassList``: class ids, display
names, whether labels are multi-label, and their thresholds). Training writes it into every checkpoint
(``recipe``); ``kiln eval``, every export (a safetensors export's ``model.json`` is one), ``kiln predict``
and ``kiln serve`` read it, typed, instead of working it out again from the config.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from kiln.errors import ArtifactError, KilnError, brief, clip
from kiln.spec import Preprocess

UNTUNED = 0.5  # a multi-label class's threshold when none was tuned (a checkpoint written mid-training)


@dataclass(frozen=True)
class ClassList:
    """The model's outputs, in label order: class ids, display names (the ids when the run gave none) and,
    for a multi-label model, each class's threshold on its sigmoid score (a label is predicted at >=)."""

    ids: tuple[str, ...]
    names: tuple[str, ...]
    multi_label: bool = False
    thresholds: tuple[float, ...] | None = None  # multi-label only: one per class

    def __post_init__(self) -> None:
        if self.multi_label and self.thresholds is None:  # not tuned yet: 0.5 each
            object.__setattr__(self, "thresholds", (UNTUNED,) * len(self.ids))

    def __len__(self) -> int:
        return len(self.ids)

    def to_json(self) -> dict[str, Any]:
        return {
            "classes": list(self.ids),
            "class_names": list(self.names),  # what predict, Triton's labels.txt and serve show
            "multi_label": self.multi_label,
            "thresholds": None if self.thresholds is None else list(self.thresholds),
        }

    @classmethod
    def from_json(cls, record: Any, source: str) -> ClassList:
        """Read ``to_json``'s keys back. A damaged or incomplete record is an error naming ``source``."""
        try:
            ids = record["classes"]
            names = record["class_names"]
            multi_label = bool(record["multi_label"])
            raw = record["thresholds"]
            thresholds = None if raw is None else tuple(float(t) for t in raw)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ArtifactError(
                f"{source}: not a kiln record of classes ({type(e).__name__}: {clip(str(e))})"
            ) from None
        if not isinstance(ids, list) or not isinstance(names, list) or not ids:
            raise ArtifactError(f"{source}: 'classes' and 'class_names' must be non-empty lists of names")
        if len(names) != len(ids) or (thresholds is not None and len(thresholds) != len(ids)):
            raise ArtifactError(
                f"{source}: {len(ids)} classes but {len(names)} class_names and "
                f"{brief(None if thresholds is None else len(thresholds))} thresholds"
            )
        return cls(tuple(map(str, ids)), tuple(map(str, names)), multi_label, thresholds)


@dataclass(frozen=True)
class ModelRecipe:
    """Everything but the weights that rebuilding, exporting and serving a trained model need."""

    model: str  # model.name
    preprocess: Preprocess
    classes: ClassList
    args: dict[str, Any] = field(default_factory=dict)  # model.args
    imports: tuple[str, ...] = ()  # the user modules that register the model
    run_name: str = "model"

    def with_thresholds(self, thresholds: list[float]) -> ModelRecipe:
        return replace(self, classes=replace(self.classes, thresholds=tuple(float(t) for t in thresholds)))

    def to_json(self) -> dict[str, Any]:
        return {
            "model": {"name": self.model, "args": dict(self.args)},
            "imports": list(self.imports),
            "preprocess": self.preprocess.to_json(),
            "run_name": self.run_name,
            **self.classes.to_json(),
        }

    @classmethod
    def from_json(cls, record: Any, source: str) -> ModelRecipe:
        """Read ``to_json``'s keys back; a damaged or incomplete recipe is one line naming ``source``."""
        try:
            model = record["model"]
            name, args = str(model["name"]), dict(model.get("args") or {})
            imports = tuple(str(m) for m in record["imports"])
            preprocess = Preprocess.from_json(record["preprocess"], f"{source} (its preprocess record)")
            run_name = str(record["run_name"])
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ArtifactError(
                f"{source}: not a kiln model recipe ({type(e).__name__}: {clip(str(e))})"
            ) from None
        except KilnError as e:
            raise ArtifactError(str(e)) from None
        return cls(name, preprocess, ClassList.from_json(record, source), args, imports, run_name)
