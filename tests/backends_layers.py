"""A registered custom layer in a module of its own, for ``tests/backends_worker.py``."""

import keras


@keras.saving.register_keras_serializable(package="exporter_tests")
class Scale(keras.layers.Layer):
    """Multiplies by a constant factor (saved in its config)."""

    def __init__(self, factor: float, **kwargs):
        super().__init__(**kwargs)
        self.factor = factor

    def call(self, inputs):
        return inputs * self.factor

    def get_config(self):
        return {**super().get_config(), "factor": self.factor}
