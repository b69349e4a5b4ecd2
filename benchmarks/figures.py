"""What the benchmarks measure: the things compared, each figure's label and unit, the pairs.

The keys here (``ours``, ``keras3``, ``export_wall_s``, ``latency_b16_ms``, ...) are the ones
every measurement, summary row, ratio, table and chart is keyed by.
"""

from __future__ import annotations

# Exporters compared in the export and load figures.
EXPORTERS = {
    "ours": "python -m exporter.feature_vector --weights=none",
    "keras3": "Keras 3 model.export",
    "tf_keras": 'tf-keras model.save(save_format="tf")',
}
# The export from a JAX process (compare.py's jax_export group): one KERAS_BACKEND=jax
# process builds the model and exports it, ours through the TensorFlow rebuild child.
JAX_EXPORTERS = {
    "ours_jax": "exporter.export_feature_vector(model) in a KERAS_BACKEND=jax process "
    "(its TensorFlow rebuild child included)",
    "keras3_jax": 'Keras 3 model.export(format="tf_saved_model") in a KERAS_BACKEND=jax '
    "process (jax2tf)",
}
# Variants of the latency and fine-tune figures.
LATENCY_VARIANTS = {
    "ours_call": "ours __call__",
    "ours_serving_default": "ours serving_default",
    "keras_function": "Keras 3 model in memory, tf.function",
}
FINETUNE_VARIANTS = {
    "hub_layer": "tf-keras + hub.KerasLayer(ours, trainable=True)",
    "tf_keras_native": "tf-keras native (tf_keras.applications)",
}
VARIANT_LABELS = {**EXPORTERS, **JAX_EXPORTERS, **LATENCY_VARIANTS, **FINETUNE_VARIANTS}
# Short names for table cells and chart titles (the long ones are in the report's legend).
SHORT_LABELS = {
    "ours": "ours",
    "keras3": "Keras 3 export",
    "tf_keras": "tf-keras save",
    "ours_jax": "ours from JAX",
    "keras3_jax": "Keras 3 export from JAX",
    "ours_call": "ours __call__",
    "ours_serving_default": "ours serving_default",
    "keras_function": "Keras 3 tf.function",
    "hub_layer": "hub.KerasLayer(ours)",
    "tf_keras_native": "tf-keras native",
}

# Each measured figure: (label, unit). Latency figures are named latency_b{batch}_ms.
FIGURES = {
    "export_wall_s": ("export wall time, whole process", "s"),
    "export_peak_rss_mb": ("export peak RSS", "MB"),
    "export_cpu_s": ("export CPU time, user + system", "s"),
    "export_tree_rss_mb": ("export peak RSS, process tree summed (sampled)", "MB"),
    "export_call_s": ("the export call alone, in process", "s"),
    "variables_ratio": ("variables/ bytes / raw weight bytes", "x"),
    "variables_mb": ("variables/ size", "MB"),
    "saved_model_pb_mb": ("saved_model.pb size", "MB"),
    "load_s": ("tf.saved_model.load time", "s"),
    "first_call_ms": ("first call after load, batch 1", "ms"),
    "finetune_step_s": ("fine-tune step, train_on_batch", "s"),
    "finetune_first_step_s": ("first fine-tune step (tracing)", "s"),
}
# (ours, anchor) pairs compared for each kind of figure: ours / anchor is the published ratio.
_EXPORT_PAIRS = (("ours", "keras3"), ("ours", "tf_keras"), ("ours_jax", "keras3_jax"))
_JAX_PAIRS = (("ours_jax", "keras3_jax"),)
_PAIRS = {
    "export_tree_rss_mb": _JAX_PAIRS,
    "export_call_s": _JAX_PAIRS,
    "export_wall_s": _EXPORT_PAIRS,
    "export_peak_rss_mb": _EXPORT_PAIRS,
    "variables_ratio": _EXPORT_PAIRS,
    "saved_model_pb_mb": _EXPORT_PAIRS,
    "load_s": _EXPORT_PAIRS,
    "first_call_ms": _EXPORT_PAIRS,
    "latency": (("ours_call", "keras_function"), ("ours_serving_default", "keras_function")),
    "finetune_step_s": (("hub_layer", "tf_keras_native"),),
    "finetune_first_step_s": (("hub_layer", "tf_keras_native"),),
}


def latency_figure(batch: int) -> str:
    """The figure key of the steady-state latency at ``batch`` (``latency_b16_ms``)."""
    return f"latency_b{batch}_ms"


def figure_label(figure: str) -> tuple[str, str]:
    """(label, unit) of a figure key, latency figures included."""
    if figure.startswith("latency_b"):
        return f"steady-state latency, batch {figure[len('latency_b') : -len('_ms')]}", "ms"
    return FIGURES[figure]


def pairs_for(figure: str) -> tuple[tuple[str, str], ...]:
    """The (ours, anchor) variant pairs compared on ``figure`` (none for informative ones)."""
    return _PAIRS.get("latency" if figure.startswith("latency_b") else figure, ())
