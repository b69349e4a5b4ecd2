"""Every backbone family, registered explicitly in one place."""

from exporter.making import registry
from exporter.making.backbones import (
    convnext,
    densenet,
    efficientnet,
    inception,
    mobilenet,
    nasnet,
    resnet,
    vgg,
)

FAMILIES = (convnext, densenet, efficientnet, inception, mobilenet, nasnet, resnet, vgg)


def register_all() -> None:
    """Register each family's fact sheets (once)."""
    for family in FAMILIES:
        for backbone in family.BACKBONES:
            if backbone.name not in registry.names():
                registry.register(backbone)
