"""The choices our commands offer, importable without TensorFlow.

A command parses and checks its flags before anything slow is imported, so the lists its
flags offer live here; the library modules that act on a choice take the same list from here.
"""

COMPUTE_DTYPES = ("float32", "bfloat16", "float16")
COMPUTE_DTYPE_HELP = (
    "float32, bfloat16 or float16: the dtype the backbone and head compute in (Keras' mixed "
    "policy: weights, input and output stay float32)"
)
# Named preprocessing modes (exporter.making.preprocessing defines what each does).
PREPROCESSING_MODES = ("caffe", "identity", "raw255", "tf", "torch")
WEIGHTS_HELP = (
    "'imagenet' (Keras' own download and cache), 'none' (random initialization), or a path "
    "to a .weights.h5 or .keras file saved from the same architecture"
)
# What --pooling may ask for: a feature map's global avg or max; a keras-hub token model's
# class token or the mean of its tokens. Which of them a backbone takes depends on it.
MAP_POOLINGS = ("avg", "max")
TOKEN_POOLINGS = ("token", "gap")
POOLINGS = MAP_POOLINGS + TOKEN_POOLINGS
# Conversion targets and LiteRT's quantizations.
RUNTIMES = ("litert", "onnx")
QUANTIZATIONS = ("none", "float16", "dynamic_int8", "int8")
# Full-integer int8 (exporter.use.quantize): its input and output dtypes, its calibration.
INT8_IO_TYPES = ("float32", "uint8", "int8")
# TensorFlow's guide asks for "around 100-500" samples; 100 calibrates a MobileNetV2 as well
# as 300 did in our measurements (docs/deploying.md) at a third of the time.
DEFAULT_CALIBRATION_STEPS = 100
HELD_OUT_SHARE = 0.2  # Of the calibration files, when no validation images are named.
# Chosen from measurements (docs/deploying.md, "Full-integer quantization"): a faithful
# int8 conversion keeps >= 0.97 top-1 agreement and a mean cosine >= 0.98; a broken
# calibration (all-black images) falls to chance and below 0.5.
DEFAULT_MIN_AGREEMENT = 0.9
DEFAULT_MIN_COSINE = 0.9
# Batch embedding's record formats, and its runner: local and offline (DirectRunner first
# fetches a Prism binary).
EMBED_FORMATS = ("parquet", "tfrecord", "jsonl")
DEFAULT_RUNNER = "FnApiRunner"
# The most pixels (height x width) embed decodes from one file, read from its header first.
DEFAULT_MAX_PIXELS = 100_000_000
