"""Using an export: what people do with a SavedModel once it is made.

Each module here consumes a SavedModel (ours or anyone's) and never builds one; the making
side (``exporter.making``: ``build``, ``module``, ``save``) never imports this package.
Capabilities that need more than TensorFlow and Keras import their extra only where used.
"""
