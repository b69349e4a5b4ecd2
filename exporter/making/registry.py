"""Named backbones: a frozen fact sheet per variant, and a strict registry of them."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from exporter import choices
from exporter.errors import ArgumentError
from exporter.making import preprocessing


@dataclasses.dataclass(frozen=True)
class Backbone:
    """The facts about one backbone variant, each checked against the real model by tests.

    Attributes:
        name: Registry name: the keras.applications function name in snake case.
        build: The keras.applications constructor.
        family: The keras.applications submodule holding its ``preprocess_input``.
        preprocessing: The mode that maps [0, 1] RGB to what the backbone expects.
        native_size: The height and width it was trained at.
        min_size: The smallest height and width the export accepts.
        num_features: Width of the pooled last feature map.
        num_classes: Classes of its own (ImageNet) classifier.
        top_dropout: Dropout rate before its own classifier.
        fixed_size: Whether it only works at ``native_size``.
        classifier_fixed_size: Whether its own classifier only works at ``native_size``
            (it flattens a feature map instead of pooling it).
        norm_after_pooling: The normalization the family applies to its pooled last stage
            (ConvNeXt: ``"LayerNorm"``), or None. Its bottleneck is then
            ``norm(pool(feature_map))``, which Keras builds only when asked to pool, so
            such a backbone is built pooled (``include_top=False, pooling=...``).
    """

    name: str
    build: Callable
    family: str
    preprocessing: str
    native_size: int
    min_size: int
    num_features: int
    num_classes: int = 1000
    top_dropout: float = 0.0
    fixed_size: bool = False
    classifier_fixed_size: bool = False
    norm_after_pooling: str | None = None

    def __post_init__(self):
        preprocessing.check_mode(self.preprocessing)
        if not 0 < self.min_size <= self.native_size:
            raise ValueError(
                f"Backbone {self.name!r}: need 0 < min_size <= native_size; "
                f"received min_size={self.min_size}, native_size={self.native_size}."
            )

    @property
    def source(self) -> str:
        """Where the architecture comes from, e.g. ``keras.applications.ResNet50``."""
        return f"keras.applications.{self.build.__name__}"

    @property
    def poolings(self) -> tuple[str, ...]:
        """The ``pooling`` values it takes: a global pooling of its last feature map."""
        return choices.MAP_POOLINGS

    def check_pooling(self, pooling: str | None) -> str:
        """``pooling`` (default ``"avg"``) if this backbone takes it; an ArgumentError naming
        the ones it takes otherwise."""
        if pooling is None:
            return "avg"
        if pooling not in self.poolings:
            raise ArgumentError(
                f"Expected pooling to be one of {', '.join(self.poolings)} for {self.name} "
                f'(a global pooling of its last feature map). Received: pooling="{pooling}".'
            )
        return pooling

    def bottleneck(self, pooling: str) -> str:
        """What the feature vector is, in words, e.g. "the avg-pooled last feature map"."""
        if self.norm_after_pooling:
            return f"{self.norm_after_pooling} of the pooled last stage ({pooling} pooling)"
        return f"the {pooling}-pooled last feature map"


_REGISTRY: dict[str, Backbone] = {}


def register(backbone: Backbone) -> Backbone:
    """Add ``backbone`` to the registry; a second backbone with the same name is an error."""
    if backbone.name in _REGISTRY:
        raise ValueError(f"Backbone {backbone.name!r} is already registered.")
    _REGISTRY[backbone.name] = backbone
    return backbone


def get(name: str) -> Backbone:
    """Return the fact sheet registered as ``name``.

    Raises:
        ExportError: If no backbone has that name; the message lists the known ones.
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ArgumentError(
            f"Unknown backbone {name!r}: expected a registered name ({', '.join(names())}), "
            "a keras-hub preset folder or handle, or a .keras file."
        ) from None


def resolve(backbone: str | Backbone) -> Backbone:
    """``backbone``'s fact sheet: itself, or the one registered under that name (``get``)."""
    return backbone if isinstance(backbone, Backbone) else get(backbone)


def names() -> list[str]:
    """Return the registered names, sorted."""
    return sorted(_REGISTRY)


def table() -> str:
    """Return the registered backbones as a Markdown table (docs/backbones.md has the same one)."""
    rows = [
        "| backbone | native size | min size | num_features | preprocessing |",
        "|---|---|---|---|---|",
    ]
    for name in names():
        b = _REGISTRY[name]
        size = f"{b.native_size} (fixed)" if b.fixed_size else str(b.native_size)
        rows.append(f"| {name} | {size} | {b.min_size} | {b.num_features} | {b.preprocessing} |")
    return "\n".join(rows)
