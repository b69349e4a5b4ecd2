"""Write a module as a SavedModel: atomically, verified, and never half-written.

The export is written into a hidden temporary sibling of the destination, reloaded and
compared with the in-memory module there, and only then moved into place with a rename.
A failure or Ctrl-C removes the temporary directory; after a hard kill it stays hidden
beside the destination and the next export to the same destination removes it.
"""

from __future__ import annotations

import contextlib
import ctypes
import dataclasses
import errno
import gc
import os
import re
import shutil
import signal
import tempfile
import threading
from pathlib import Path

import numpy as np
import tensorflow as tf

from exporter import siblings, spec
from exporter.checking import conformance, numeric, savedmodel
from exporter.console import native_logs_filtered
from exporter.errors import ExportError, UnsafeOpsError
from exporter.making import card, precision, serving
from exporter.making.module import ImageModule
from exporter.making.tracing import SAVE_OPTIONS, saver_tracing
from exporter.progress import stage

# An export of ours must load without unsafe ops: the way out is to change the model.
_NO_UNSAFE_OPS = "An export must load without them: remove them from the model."
_OLD_TAG = "exporter-old"  # A replaced export, while the new one moves into place.


# What an export writes at the top of its directory: TensorFlow's SavedModel layout, and our
# model card in assets.extra/. ``overwrite`` replaces a directory that holds nothing else.
EXPORT_NAMES = frozenset(
    {spec.SAVED_MODEL_FILE, "fingerprint.pb", "variables", "assets", "assets.extra"}
)
_KEEP = "Nothing was changed; choose another output directory, or remove it yourself."


def check_destination(out: str | os.PathLike, overwrite: bool) -> Path:
    """Return ``out`` as an absolute path, or raise if writing there would lose data.

    An empty directory may be replaced. A non-empty one needs ``overwrite``, and even then
    only a SavedModel (a ``saved_model.pb`` that parses) holding nothing but what an export
    writes (``EXPORT_NAMES``) is replaced, never an arbitrary directory. A symbolic link is
    never written through: the export would replace the link, not what it points to.
    """
    given = out
    out = Path(os.path.abspath(os.path.expanduser(out)))  # Normalized: "a/.." is not a name.
    if out.parent == out:
        raise ExportError(
            f"Expected out to name a directory inside another one. Received: out={given}, "
            f"which is {out}, the root. {_KEEP}"
        )
    if out.is_symlink():
        raise ExportError(
            f"Expected out={given} to be a directory path, not a symbolic link (it links to "
            f"{os.readlink(out)}). Nothing was changed; pass the path it links to, or remove "
            "the link."
        )
    if out.exists() and not out.is_dir():
        raise ExportError(f"Expected out={out} to be a directory path. Received a file.")
    ancestor = next(parent for parent in out.parents if parent.exists())
    if not ancestor.is_dir():
        raise ExportError(f"Expected out={out} inside a directory, but {ancestor} is a file.")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ExportError(
                f"Output directory {out} exists and is not empty; pass overwrite=True to "
                "replace it."
            )
        _check_replaceable(out)
    return out


def _check_replaceable(out: Path) -> None:
    """Raise unless ``out`` holds a SavedModel and nothing that an export does not write."""
    foreign = sorted(name for name in os.listdir(out) if name not in EXPORT_NAMES)
    if foreign:
        shown = ", ".join(foreign[:5]) + (f" and {len(foreign) - 5} more" if foreign[5:] else "")
        raise ExportError(
            f"Refusing to replace {out}: it holds {shown}, which no export writes, so it is "
            f"not a SavedModel to replace. {_KEEP}"
        )
    try:
        savedmodel.read(out)
    except savedmodel.UnreadableError as error:
        message = f"Refusing to replace {out}: it is not a SavedModel: {error} {_KEEP}"
        raise ExportError(message) from None


# Long: its docstring documents the public API.
@native_logs_filtered  # TensorFlow's C++ lines while it saves and verifies: exporter.console.
def save(
    module: ImageModule,
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    serving_inputs: str | list[str] | None = None,
    serving_size: int | None = None,
) -> Path:
    """Save ``module`` as a SavedModel at ``out``, verified, or leave ``out`` untouched.

    Args:
        module: The module to export.
        out: The SavedModel directory to create (or replace, see ``overwrite``).
        overwrite: Replace an existing SavedModel at ``out``.
        serving_inputs: The serving signatures' inputs (``exporter.making.serving``): ``float32``
            (``serving_default``, always), ``uint8`` (``serving_uint8``) and
            ``image_bytes`` (``serving_bytes``, encoded images).
        serving_size: The size ``serving_bytes`` resizes to; default the native size.

    Returns:
        The absolute path of the export.

    Raises:
        ExportError: If ``out`` cannot be written, or the written export fails verification.

    Example:
        >>> save(build_feature_vector("mobilenet_v2", weights=None), "/tmp/mobilenet_v2")
        PosixPath('/tmp/mobilenet_v2')
    """
    # The caller keeps ``module``: nothing of the model could be freed before the reload.
    return save_owned(
        [module], out, overwrite=overwrite, serving_inputs=serving_inputs,
        serving_size=serving_size, release=False,
    )  # fmt: skip


def save_owned(
    owned: list[ImageModule],
    out: str | os.PathLike,
    *,
    overwrite: bool = False,
    serving_inputs: str | list[str] | None = None,
    serving_size: int | None = None,
    release: bool = True,
) -> Path:
    """``save`` the module in the one-item list ``owned``, and empty the list before the reload.

    Verification compares the reloaded export with outputs of the in-memory module computed
    before the reload (``_References``). Where ``owned`` held the only reference (``export_*``
    build the module and pass it here), the Keras model, its traces and the saver's state are
    freed before the second, loaded copy is made: peak memory is the larger of the two phases,
    not their sum. A caller that keeps the module (``save``) keeps it in memory, unchanged,
    and passes ``release=False``: the collections and the cache clearing would free nothing
    of it, and cost a long-lived process seconds.
    """
    out = check_destination(out, overwrite)
    module = owned[0]
    kinds = serving.parse_inputs(serving_inputs)
    serving.check_size_applies(kinds, serving_size)
    if "image_bytes" in kinds:
        serving_size = serving.check_size(module, serving_size)
    created = []
    tmp = None
    try:
        with _explained_io_errors(out):
            created = siblings.make_parents(out.parent)
            _sweep_leftovers(out)
            tmp = siblings.directory(out)
        with stage("trace"), saver_tracing():  # The saver reuses these traces.
            module.trace()
            signatures = serving.signatures(module, kinds, serving_size)
        with stage("save"), _explained_io_errors(out):
            references = _write(module, tmp, signatures, kinds, serving_size)
        del module, signatures
        owned.clear()
        if release:
            _release_memory()
        with stage("verify"):
            _verify(tmp, references)
        with _signals_held(), _explained_io_errors(out):
            _move_into_place(tmp, out)
    except BaseException:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        for directory in created:
            with contextlib.suppress(OSError):
                directory.rmdir()
        raise
    return out


def _release_memory() -> None:
    """Free what is unreachable now (the Keras model and its traces hold reference cycles),
    and hand glibc's free heap pages back to the system, so the reload reuses them.

    The eager runtime's kernel cache holds on to the model's weights after tracing (ResNet50:
    94 MB still allocated with every Python object of the model gone; BUILD_NOTES); clearing
    it only costs the next eager op of each kind its kernel lookup again.
    """
    gc.collect()
    # An internal API: a future TensorFlow may move it.
    with contextlib.suppress(ImportError, AttributeError):
        from tensorflow.python.eager import context

        context.context().clear_kernel_cache()
    gc.collect()  # What the cleared kernels held, and what finalizers of the first pass freed.
    with contextlib.suppress(OSError, AttributeError):  # Not glibc: nothing to hand back.
        ctypes.CDLL("libc.so.6").malloc_trim(0)


@contextlib.contextmanager
def _explained_io_errors(out: Path):
    """Turn a failed write (full disk, file-size limit, permissions) into one ExportError.

    TensorFlow reports a full disk or a file-size limit from deep inside ``SaveV2`` as an
    ``OutOfRangeError`` (TF 2.21); the user needs the cause and that ``out`` is unchanged.
    """
    try:
        yield
    except (OSError, tf.errors.OpError) as error:
        cause = error.message if isinstance(error, tf.errors.OpError) else str(error)
        # "{{function_node ...}} PATH; File too large [Op:SaveV2]": keep the path and reason.
        cause = re.sub(r"\{\{.*?\}\}|\[Op:\w+\]", "", cause).strip()
        cause = cause.splitlines()[0] if cause else type(error).__name__
        raise ExportError(
            f"Could not write the export beside {out} ({type(error).__name__}: {cause}). "
            f"Nothing was changed at {out}; check the free space, the file-size limit "
            "(ulimit -f) and the permissions of its parent directory."
        ) from error


def _write(module: ImageModule, directory: Path, signatures: dict, kinds, serving_size):
    """Save, compute what verification compares the reload with, then write the card."""
    with tempfile.TemporaryDirectory() as scratch, module.labels_asset(scratch):
        tf.saved_model.save(module, str(directory), signatures=signatures, options=SAVE_OPTIONS)
    references = _References.of(module, kinds, serving_size)
    card.write(
        module, directory, list(signatures), serving_size=serving_size,
        compute=references.deviation,
    )  # fmt: skip
    return references


@dataclasses.dataclass(frozen=True)
class _References:
    """The in-memory module's side of verification, computed before the module is freed."""

    task: str
    output_name: str
    num_variables: int
    signatures: tuple[str, ...]  # The serving signatures asked for.
    images: tf.Tensor  # Random float32 images at the rules' first size.
    inference: np.ndarray  # The module's inference on them.
    pixels: np.ndarray | None  # Random uint8 images at the serving size, if a signature takes them.
    pixels_inference: np.ndarray | None
    deviation: precision.Deviation | None  # From float32, for a module built in lower precision.

    @classmethod
    def of(cls, module: ImageModule, kinds, serving_size: int | None) -> _References:
        # Batch 3 at the rules' first size: the shape they call with too, so traced once.
        sizes = spec.probe_sizes(module.min_size, module.native_size, module.fixed_size is not None)
        shape = (3, sizes[0], sizes[0], 3)
        images = tf.constant(np.random.default_rng(0).random(shape, np.float32))
        pixels = pixels_inference = None
        if set(kinds) & {"uint8", "image_bytes"}:
            side = serving_size or module.native_size
            pixels = np.random.default_rng(1).integers(0, 256, (2, side, side, 3), dtype=np.uint8)
            as_floats = tf.constant(pixels, tf.float32) / 255.0
            pixels_inference = module.traced_inference(as_floats).numpy()
        deviation = None
        if module.float32_twin is not None:
            dtype = precision.compute_dtype_of(module.keras_backbone)
            deviation = precision.deviation(dtype, module(images), module.float32_twin(images))
        return cls(
            task=module.task, output_name=module.output_name,
            num_variables=len(module.variables),
            signatures=tuple(spec.SERVING_SIGNATURES[kind][0] for kind in kinds), images=images,
            inference=module.traced_inference(images).numpy(), pixels=pixels,
            pixels_inference=pixels_inference, deviation=deviation,
        )  # fmt: skip


def _verify(directory: Path, references: _References) -> None:
    """Reload ``directory`` and check it against ``references``; raise ExportError if it differs.

    Compares inference, through ``__call__`` and ``serving_default`` (and ``serving_uint8`` and
    ``serving_bytes`` where saved), with the in-memory module's outputs on the same random
    images, then runs every conformance rule (``exporter.checking.conformance``, which calls
    both training modes on the reloaded copy) with the card and metadata required.
    """
    problems = []
    try:  # Scanned like anybody's: an export that runs unsafe ops is a failed export.
        graphs = []  # The graph load reads and scans, for the conformance rules below.
        loaded = savedmodel.load(directory, opt_in=_NO_UNSAFE_OPS, inspect=graphs.append)
        proto = graphs[0]
    except (savedmodel.UnreadableError, UnsafeOpsError) as error:
        raise ExportError(f"The export failed verification: {error}") from None
    images, expected = references.images, references.inference
    outputs = {
        "__call__(training=False)": numeric.shape_free_call(loaded, False)(images),
        "serving_default": loaded.signatures["serving_default"](images=images)[
            references.output_name
        ],
    }
    for name, output in outputs.items():
        if output.dtype != tf.float32 or output.shape != expected.shape:
            problems.append(
                f"{name} gave {output.dtype.name} {output.shape}, expected float32 {expected.shape}"
            )
        elif not numeric.close(output.numpy(), expected):
            problems.append(f"{name} differs from the in-memory model")
    problems += _serving_problems(loaded, references)
    deviation = references.deviation
    if deviation is not None and not deviation.within_bound():
        problems.append(f"the {deviation.describe()} is past its bound")
    if len(loaded.variables) != references.num_variables:
        problems.append(
            f"{len(loaded.variables)} variables saved, {references.num_variables} expected"
        )
    # The shared rules call training=True too (and restore what it changes).
    try:
        report = conformance.check(
            directory, task=references.task, strict_metadata=True, loaded=loaded, proto=proto
        )
    except conformance.UnreadableError as error:
        raise ExportError(f"The export failed verification: {error}") from None
    problems += [
        f"rule {r.rule}: {r.message}" for r in report.results if r.status == conformance.FAIL
    ]
    if problems:
        raise ExportError(f"The export failed verification: {'; '.join(problems)}.")


def _serving_problems(loaded, references: _References) -> list[str]:
    """Compare serving_uint8 and serving_bytes with the module's inference on the same pixels."""
    if references.pixels is None:
        return []
    problems = []
    pixels, name_out = references.pixels, references.output_name
    inputs = {
        "serving_uint8": {"images": tf.constant(pixels)},
        # PNG is lossless, and the images already have the size serving_bytes resizes to.
        "serving_bytes": {"image_bytes": tf.stack([tf.io.encode_png(p) for p in pixels])},
    }
    for name, arguments in inputs.items():
        if name not in references.signatures:
            continue
        if name not in loaded.signatures:
            problems.append(f"{name} is missing")
            continue
        outputs = loaded.signatures[name](**arguments)
        if list(outputs) != [name_out]:
            problems.append(f"{name} has outputs {sorted(outputs)}, expected {name_out}")
        elif not numeric.close(outputs[name_out].numpy(), references.pixels_inference):
            problems.append(f"{name} differs from __call__ on the same pixels")
    return problems


@contextlib.contextmanager
def _signals_held():
    """Hold SIGINT and SIGTERM until the block is done, then deliver them.

    Moving into place must not be cut in two (between the two renames of the fallback,
    ``out`` is missing): an interrupt takes effect before the move or after it, and the
    caller can tell which from ``out``. Python runs signal handlers in the main thread
    only, so only there can they cut the block, and only there can they be replaced.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    held = []
    try:
        with contextlib.ExitStack() as restore:  # Each handler is put back, whatever happens.
            for signum in (signal.SIGINT, signal.SIGTERM):
                handler = signal.getsignal(signum)
                if handler is None or handler == signal.SIG_IGN:  # None: not set from Python.
                    continue
                restore.callback(signal.signal, signum, handler)
                signal.signal(signum, lambda number, _: held.append(number))
            yield
    finally:
        for signum in dict.fromkeys(held):
            signal.raise_signal(signum)  # Runs the handler put back, e.g. KeyboardInterrupt.


def _move_into_place(tmp: Path, out: Path) -> None:
    if not out.exists():
        os.rename(tmp, out)
        return
    # Replacing: swap atomically where the OS can, so `out` is never missing or partial.
    # Once the new export is in place, failing to remove the old one is no failure of the
    # export: what is left is a hidden sibling that the next export to ``out`` removes.
    if _exchange(tmp, out):
        shutil.rmtree(tmp, ignore_errors=True)  # Now holds the old content.
        return
    old = siblings.directory(out, _OLD_TAG)
    os.rename(out, old / "content")
    try:
        os.rename(tmp, out)
    except BaseException:  # Put the original back, so that "nothing was changed" is true.
        os.rename(old / "content", out)
        os.rmdir(old)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with Linux's renameat2(RENAME_EXCHANGE); False if unsupported."""
    rename_exchange, at_fdcwd = 2, -100
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(code, os.strerror(code), str(b))


def _sweep_leftovers(out: Path) -> None:
    """Remove what killed exports to ``out`` left behind, restoring a displaced original."""
    for path in out.parent.iterdir():
        match = re.fullmatch(
            rf"\.{re.escape(out.name)}\.({siblings.TMP_TAG}|{_OLD_TAG})-(\d+)-.*", path.name
        )
        if not match or _alive(int(match.group(2))):
            continue
        if match.group(1) == _OLD_TAG and not out.exists() and (path / "content").is_dir():
            os.rename(path / "content", out)
        shutil.rmtree(path, ignore_errors=True)


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
