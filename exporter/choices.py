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
QUANTIZATIONS = ("none", "float16", "dynamic_int8")
# Batch embedding's record formats, and its runner: local and offline (DirectRunner first
# fetches a Prism binary).
EMBED_FORMATS = ("parquet", "tfrecord", "jsonl")
DEFAULT_RUNNER = "FnApiRunner"
# The most pixels (height x width) embed decodes from one file, read from its header first.
DEFAULT_MAX_PIXELS = 100_000_000
