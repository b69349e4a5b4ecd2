"""Making an export: from a registered Keras backbone to a SavedModel with its model card.

The registry and the backbone families say what can be exported; ``build`` and ``module``
wrap a backbone in the image API (``preprocessing``, ``precision``, ``serving``); ``save``
writes, verifies and documents the SavedModel (``card``), and ``export`` runs those steps
in order. This side may run the checker on what it wrote, but never imports ``exporter.use``.
"""

from exporter.making import backbones as _backbones

_backbones.register_all()  # Every family's fact sheets, before any lookup.
