"""Inference with a trained model: find it, decode images, predict the top-k classes.

- :func:`resolve_model` turns a model *spec* into a local model file: a ``.keras`` file, a
  model folder (``model.keras`` inside), a ``.tflite`` or ``.onnx`` file (:mod:`kd.export`),
  a ``gs://`` URI of any of these (downloaded), or ``RUN:NAME`` / ``NAME`` naming a model of a
  pipeline run under a pipeline root (local or ``gs://``), found with
  :func:`kd.runs.describe_run`. ``NAME`` is one of :data:`MODEL_NAMES`;
  without ``RUN`` the latest run is used.
- :func:`load_images` decodes PNG/JPEG files (any size and mode), folders of them and ``.npz``
  arrays into uint8 (N, 32, 32, 3) RGB.
- :func:`predict` returns the softmax top-k classes of each image; :func:`predict_files` does
  all three steps (what ``python -m local_runner predict`` runs).

Only decoding, RGB conversion and resizing happen here: the standardisation is the model's
first layer (see :mod:`kd.models`), so the pixels go in as they are, exactly as in training
and evaluation.

Image decoding (Pillow):

1. EXIF orientation is applied (photos from phones are stored rotated).
2. Conversion to RGB: grayscale is replicated into the three channels, palette images are
   expanded, 16-bit images are scaled to 8 bits (``v >> 8``), CMYK is converted by Pillow,
   and transparent pixels (RGBA, LA, palette transparency) are composited onto white.
3. ``fit="crop"`` (default) takes the largest centred square first, so objects keep their
   aspect ratio; ``fit="stretch"`` resizes the whole image to a square.
4. Resize to 32 x 32: ``Image.Resampling.BOX`` (area averaging, like OpenCV's
   ``INTER_AREA``) when downscaling, ``Image.Resampling.BICUBIC`` when upscaling; a 32 x 32
   image is used as is, pixel for pixel.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from kd import runs
from kd.config import CLASS_NAMES, IMAGE_SHAPE, NUM_CLASSES
from kd.errors import ArtifactError, ConfigError, DataError
from kd.model_folder import MODEL_FILE
from kd.storage import gcs_client, gcs_download, is_gcs, split_gcs

#: Model names a run spec accepts, and the (tasks, output) that holds each in a pipeline run:
#: the teacher is trained (train-teacher) or brought in and checked (check-teacher).
MODEL_ARTIFACTS: dict[str, tuple[tuple[str, ...], str]] = {
    "teacher": ((runs.TRAIN_TEACHER, runs.CHECK_TEACHER), "model"),
    "student_distilled": ((runs.DISTILL_STUDENT,), "model"),
    "student_scratch": ((runs.TRAIN_STUDENT_SCRATCH,), "model"),
    "blessed": ((runs.EXPORT_MODEL,), "blessed"),
}
MODEL_NAMES = tuple(MODEL_ARTIFACTS)
MODEL_SUFFIXES = (".keras", ".tflite", ".onnx")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff")
FITS = ("crop", "stretch")
DEFAULT_FIT = FITS[0]  # non-square images: the centre square
TOP_K = 3  # classes listed per image
SIZE = IMAGE_SHAPE[0]


# --------------------------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------------------------


def resolve_model(spec: str, root: str = "runs", cache_dir: str | Path | None = None) -> Path:
    """The local model file a spec names (``.keras``, ``.tflite`` or ``.onnx``).

    Args:
        spec: one of

            - a local ``.keras``, ``.tflite`` or ``.onnx`` file, or a model folder holding
              ``model.keras`` (a training stage's Model artifact, or the blessed serving
              export);
            - ``gs://BUCKET/PATH`` of any of these (a Model artifact written by KFP / Vertex
              AI): downloaded into ``cache_dir``;
            - ``RUN:NAME`` or ``NAME``: the model ``NAME`` (one of :data:`MODEL_NAMES`) of run
              ``RUN`` (its id, a unique prefix, or ``latest``; default ``latest``) under
              ``root``.
        root: the pipeline root for run specs: a local folder or ``gs://BUCKET/ROOT``.
        cache_dir: where ``gs://`` models are downloaded to (default: a new temporary folder
            that the caller may delete once the model is loaded).

    An existing local path always wins over the ``NAME`` reading (``./teacher/`` is a folder).

    Returns:
        The path of the model file.

    Raises:
        ArtifactError: no model there (the message says what was looked for and the fix).
        DataError: the pipeline root, the run or the ``gs://`` object cannot be read.
    """
    return _resolve(spec, root, cache_dir)[0]


def _resolve(spec: str, root: str, cache_dir: str | Path | None) -> tuple[Path, str]:
    """(local model file, where it came from: a local path or the gs:// URI)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ArtifactError(
            f"empty model spec {spec!r}. Fix: pass a .keras/.tflite/.onnx file, a model folder, a "
            f"gs:// URI, or RUN:NAME / NAME with NAME one of {', '.join(MODEL_NAMES)}"
        )
    spec = spec.strip()
    if is_gcs(spec):
        return _download_model(spec, cache_dir), spec
    path = Path(spec).expanduser()
    if path.exists():
        file = _local_model_file(path, spec)
        return file, str(file)
    run, sep, name = spec.rpartition(":")
    if name in MODEL_ARTIFACTS and (not sep or run):
        return _run_model(run or "latest", name, root, cache_dir)
    looks_like_path = "/" in spec or os.sep in spec or spec.endswith((*MODEL_SUFFIXES, ".h5"))
    if looks_like_path:
        raise ArtifactError(
            f"no model file or folder at {spec}. Fix: check the path (a .keras, .tflite or "
            f".onnx file, or a folder holding {MODEL_FILE})"
        )
    raise ArtifactError(
        f"model spec {spec!r} is not a file, a folder, a gs:// URI or a run model: "
        f"{name!r} is not one of {', '.join(MODEL_NAMES)}. Fix: pass e.g. teacher, "
        "latest:student_distilled or RUN_ID:blessed (run ids: python -m local_runner inspect)"
    )


def _local_model_file(path: Path, shown: str) -> Path:
    """``path`` itself for a file; ``path/model.keras`` for a model folder."""
    if path.is_file():
        return path
    if (path / MODEL_FILE).is_file():
        return path / MODEL_FILE
    held = sorted(p.name for p in path.iterdir())[:10] if path.is_dir() else []
    raise ArtifactError(
        f"model folder {shown} holds no {MODEL_FILE} (it holds {', '.join(held) or 'nothing'}). "
        "Fix: pass the Model artifact folder of a training stage, the blessed export, or a "
        ".keras/.tflite/.onnx file"
    )


def _cache_folder(uri: str, cache_dir: str | Path | None) -> Path:
    base = Path(cache_dir) if cache_dir is not None else Path(tempfile.mkdtemp(prefix="kd-model-"))
    folder = base / hashlib.sha256(uri.encode()).hexdigest()[:16]
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def _gcs_object_exists(uri: str) -> bool:
    """Whether one object (not a prefix) exists at ``uri``."""
    bucket, path = split_gcs(uri)
    if not path:
        return False
    try:
        return bool(gcs_client().bucket(bucket).blob(path).exists())
    except DataError:
        raise
    except Exception as exc:  # Forbidden, transport errors
        raise DataError(
            f"cannot read {uri}: {exc}. Fix: check the bucket and path (gsutil ls {uri}) and "
            "that your credentials can read it"
        ) from exc


def _download_model(uri: str, cache_dir: str | Path | None) -> Path:
    """Download a model object (``.keras``/``.tflite``/``.onnx``), a Model artifact folder's
    ``model.keras`` (nothing else of the folder), or a suffix-less object taken as a ``.keras``
    file. Never downloads a whole prefix."""
    uri = uri.rstrip("/")
    dest = _cache_folder(uri, cache_dir)
    name = uri.rsplit("/", 1)[-1]
    if name.endswith(MODEL_SUFFIXES):
        return gcs_download(uri, dest / name)
    for candidate in (f"{uri}/{MODEL_FILE}", uri):
        if _gcs_object_exists(candidate):
            return gcs_download(candidate, dest / MODEL_FILE)
    raise ArtifactError(
        f"no model at {uri}: neither {uri}/{MODEL_FILE} nor an object {uri} exists. Fix: pass "
        "the gs:// URI of a Model artifact (a folder holding model.keras) or of a "
        ".keras/.tflite/.onnx file (gsutil ls to check)"
    )


def _run_model(run: str, name: str, root: str, cache_dir: str | Path | None) -> tuple[Path, str]:
    """The model ``name`` of ``run`` under the pipeline ``root`` (via :mod:`kd.runs`)."""
    try:
        described = runs.describe_run(root, run)
    except DataError as exc:
        raise type(exc)(
            f"cannot find model {run}:{name} under pipeline root {root} (set it with "
            f"--pipeline-root / root=): {exc}",
            *([exc.known] if isinstance(exc, runs.RunNotFoundError) else []),
        ) from exc
    tasks, output = MODEL_ARTIFACTS[name]
    found = [a for a in described["artifacts"] if a["task"] in tasks and a["name"] == output]
    task_names = " or ".join(tasks)
    run_id = described["run_id"]
    if not found or not found[0]["exists"]:
        listed = ", ".join(f"{t['name']} ({t['status']})" for t in described["tasks"]) or "none"
        why = "it was not written" if found else f"task {task_names} has no output {output!r}"
        hint = (
            " (blessed is only exported when the quality gate passes)" if name == "blessed" else ""
        )
        raise ArtifactError(
            f"run {run_id} in {root} has no {name} model: {why}{hint}. Its tasks: {listed}. "
            "Fix: pick a run that finished (python -m local_runner inspect --pipeline-root "
            f"{root}) and pass RUN_ID:{name}"
        )
    uri = str(found[0]["uri"])
    if is_gcs(uri):
        return _download_model(uri, cache_dir), uri
    file = _local_model_file(Path(uri), uri)
    return file, str(file)


@dataclass
class TFLiteModel:
    """A TFLite model file ready to predict (see :func:`kd.export.tflite_logits`)."""

    path: Path
    interpreter: Any = field(repr=False, default=None)


@dataclass
class OnnxModel:
    """An ONNX model file ready to predict (see :func:`kd.export.onnx_logits`)."""

    path: Path
    session: Any = field(repr=False, default=None)


def load_predict_model(path: str | Path) -> Any:
    """Load a model file for :func:`predict`, checking that it is a CIFAR-10 classifier.

    Args:
        path: a ``.keras`` file or model folder (loaded with ``safe_mode=True``, see
            :func:`kd.model_folder.load_model`), a ``.tflite`` or an ``.onnx`` file.

    Returns:
        A Keras model, a :class:`TFLiteModel` or an :class:`OnnxModel`.

    Raises:
        ArtifactError: not a model, or a model whose input is not (32, 32, 3) images or whose
            output is not 10 logits; the message names the file.
    """
    p = Path(path)
    if p.suffix == ".tflite":
        from kd.export import load_tflite

        return TFLiteModel(p, load_tflite(p))
    if p.suffix == ".onnx":
        from kd.export import onnx_session

        return OnnxModel(p, onnx_session(p))
    from kd.model_folder import load_model

    model = load_model(p)
    file = p / MODEL_FILE if p.is_dir() else p
    inputs, outputs = list(model.inputs or []), list(model.outputs or [])
    in_shape = tuple(inputs[0].shape[1:]) if len(inputs) == 1 else None
    out_shape = tuple(outputs[0].shape[1:]) if len(outputs) == 1 else None
    if in_shape != IMAGE_SHAPE or out_shape != (NUM_CLASSES,):
        raise ArtifactError(
            f"model {file} takes inputs {[tuple(t.shape) for t in inputs]} and returns "
            f"{[tuple(t.shape) for t in outputs]}; expected one (N, 32, 32, 3) image input and "
            f"(N, {NUM_CLASSES}) logits. Fix: pass a CIFAR-10 model written by train_teacher, "
            "distill_student, train_student_scratch or export_model"
        )
    return model


def model_logits(model: Any, x: np.ndarray) -> np.ndarray:
    """Logits (N, 10) of a Keras model, a :class:`TFLiteModel` or an :class:`OnnxModel` on
    images (N, 32, 32, 3)."""
    if isinstance(model, TFLiteModel):
        from kd.export import tflite_logits

        return tflite_logits(model.interpreter or model.path, x)
    if isinstance(model, OnnxModel):
        from kd.export import onnx_logits

        return onnx_logits(model.session or model.path, x)
    from kd.evaluate import predict_logits

    return predict_logits(model, x)


# --------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------


@dataclass
class Inputs:
    """Decoded inputs: ``x`` uint8 (N, 32, 32, 3), a name per image, labels when known."""

    x: np.ndarray
    names: list[str]
    labels: list[int | None]


def _to_rgb(img: Any) -> Any:
    """Any Pillow mode -> RGB (see the module docstring)."""
    from PIL import Image

    if img.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N"):  # 16-bit grayscale
        arr = np.asarray(img, dtype=np.uint32)
        img = Image.fromarray((np.clip(arr, 0, 65535) >> 8).astype(np.uint8), mode="L")
    elif img.mode == "F":
        img = Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8), mode="L")
    if img.mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
    if img.mode in ("RGBA", "LA", "PA") or (
        img.mode in ("RGB", "L") and "transparency" in img.info
    ):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _fit(img: Any, fit: str) -> Any:
    from PIL import Image

    w, h = img.size
    if fit == "crop" and w != h:
        s = min(w, h)
        left, top = (w - s) // 2, (h - s) // 2
        img = img.crop((left, top, left + s, top + s))
        w = h = s
    if (w, h) == (SIZE, SIZE):
        return img
    down = w >= SIZE and h >= SIZE
    method = Image.Resampling.BOX if down else Image.Resampling.BICUBIC
    return img.resize((SIZE, SIZE), method)


def decode_image(path: str | Path, fit: str = DEFAULT_FIT) -> np.ndarray:
    """One image file -> uint8 (32, 32, 3) RGB.

    Args:
        path: a PNG/JPEG (or any format Pillow reads) of any size and mode.
        fit: ``crop`` (centre square, then resize) or ``stretch`` (resize the whole image).

    Raises:
        DataError: the file cannot be read or decoded (named in the message).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError

    p = Path(path)
    try:
        with Image.open(p) as opened:
            opened.load()
            upright = ImageOps.exif_transpose(opened) or opened
            rgb = _fit(_to_rgb(upright), fit)
            return np.asarray(rgb, dtype=np.uint8).copy()
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(
            f"cannot decode image {p} ({type(exc).__name__}: {exc}). Fix: pass a readable "
            "PNG or JPEG file (re-save it, or remove it from the folder)"
        ) from exc
    except Image.DecompressionBombError as exc:
        raise DataError(
            f"image {p} is too large to decode safely ({exc}). Fix: downscale it first"
        ) from exc


def _npz_inputs(path: Path) -> Inputs:
    fix = (
        "write an .npz with x (or x_test): uint8 (N, 32, 32, 3) RGB 0-255, and optionally "
        "y (or y_test): N labels 0-9"
    )
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.files)
            xk, yk = ("x", "y") if "x" in keys else ("x_test", "y_test")
            if xk not in keys:
                raise DataError(
                    f"file {path}: no array x or x_test (it holds {', '.join(keys) or 'nothing'})."
                    f" Fix: {fix}"
                )
            x = np.asarray(npz[xk])
            y = np.asarray(npz[yk]).reshape(-1) if yk in keys else None
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, AttributeError) as exc:
        raise DataError(
            f"file {path}: not a readable .npz ({type(exc).__name__}: {exc}). Fix: {fix}"
        ) from exc
    if x.ndim != 4 or x.shape[1:] != IMAGE_SHAPE or len(x) == 0:
        raise DataError(f"file {path}: {xk} has shape {x.shape}. Fix: {fix}")
    if x.dtype != np.uint8:
        if not np.issubdtype(x.dtype, np.number) or x.min() < 0 or x.max() > 255:
            raise DataError(f"file {path}: {xk} is {x.dtype} with values outside 0-255. Fix: {fix}")
        if np.issubdtype(x.dtype, np.floating) and not np.array_equal(x, np.round(x)):
            raise DataError(
                f"file {path}: {xk} is {x.dtype} with fractional values (scaled to 0-1?). "
                f"Fix: {fix}"
            )
        x = x.astype(np.uint8)
    labels: list[int | None] = [None] * len(x)
    if y is not None:
        if len(y) != len(x) or not np.issubdtype(y.dtype, np.integer):
            raise DataError(
                f"file {path}: {yk} has {len(y)} {y.dtype} values for {len(x)} images. Fix: {fix}"
            )
        labels = [int(v) for v in y]
    return Inputs(x, [f"{path}[{i}]" for i in range(len(x))], labels)


def load_inputs(inputs: Sequence[str | Path], fit: str = DEFAULT_FIT) -> Inputs:
    """Decode image files, folders of images (sorted by name, non-recursive, files with an
    image suffix only) and ``.npz`` arrays, in the order given.

    Args:
        inputs: paths of images, folders or ``.npz`` files.
        fit: ``crop`` or ``stretch`` (see the module docstring).

    Returns:
        The images, their names (file paths; ``file.npz[i]`` for arrays) and labels (from an
        ``.npz`` ``y``/``y_test``; None for image files).

    Raises:
        DataError: a missing path, an empty folder, an undecodable image, a malformed .npz.
        ConfigError: an unknown ``fit``.
    """
    if fit not in FITS:
        raise ConfigError(f"invalid fit={fit!r}: choose one of {', '.join(FITS)}")
    if not inputs:
        raise DataError("no inputs given. Fix: pass image files, folders of images or an .npz")
    xs: list[np.ndarray] = []
    names: list[str] = []
    labels: list[int | None] = []
    for item in inputs:
        p = Path(item).expanduser()
        if p.is_dir():
            files = sorted(
                f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
            )
            if not files:
                raise DataError(
                    f"folder {p} holds no image (looked for {', '.join(IMAGE_SUFFIXES)}). "
                    "Fix: pass a folder of PNG/JPEG files"
                )
            for f in files:
                xs.append(decode_image(f, fit)[None])
                names.append(str(f))
                labels.append(None)
        elif p.is_file() and p.suffix.lower() == ".npz":
            got = _npz_inputs(p)
            xs.append(got.x)
            names += got.names
            labels += got.labels
        elif p.is_file():
            xs.append(decode_image(p, fit)[None])
            names.append(str(p))
            labels.append(None)
        else:
            raise DataError(
                f"input {item} does not exist. Fix: pass existing image files, folders or .npz"
            )
    return Inputs(np.concatenate(xs).astype(np.uint8, copy=False), names, labels)


def load_images(
    inputs: Sequence[str | Path], fit: str = DEFAULT_FIT
) -> tuple[np.ndarray, list[str]]:
    """Images as the models take them: ``(uint8 (N, 32, 32, 3) RGB, names)``.

    See :func:`load_inputs` (which also returns the labels of ``.npz`` inputs).
    """
    got = load_inputs(inputs, fit)
    return got.x, got.names


# --------------------------------------------------------------------------------------------
# Prediction
# --------------------------------------------------------------------------------------------


def predict(
    model: Any,
    x: np.ndarray,
    top_k: int = TOP_K,
    class_names: Sequence[str] = CLASS_NAMES,
) -> list[dict[str, Any]]:
    """Top-k classes of each image.

    Args:
        model: a Keras model (:func:`load_predict_model`, :func:`kd.model_folder.load_model`),
            or a :class:`TFLiteModel`.
        x: images uint8 (N, 32, 32, 3) RGB 0-255 (e.g. from :func:`load_images`).
        top_k: how many classes to return per image (1 to the number of classes).
        class_names: the name of each class index.

    Returns:
        One dict per image: ``class`` (top-1 name), ``index`` (top-1 class index),
        ``probability`` (its softmax probability, 0-1) and ``top_k``: a list of
        ``{"class", "index", "probability"}``, most probable first.

    Raises:
        ConfigError: ``top_k`` out of range.
        ArtifactError: the model's number of outputs differs from ``len(class_names)``.
    """
    from kd.evaluate import softmax

    k = len(class_names)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 1 <= top_k <= k:
        raise ConfigError(f"invalid top_k={top_k!r}: must be an integer in [1, {k}]")
    logits = model_logits(model, x)
    if logits.shape[1] != k:
        raise ArtifactError(
            f"the model returns {logits.shape[1]} logits but {k} class names were given. "
            "Fix: pass the class names of the model's classes"
        )
    probs = softmax(logits)
    order = np.argsort(-probs, axis=1, kind="stable")[:, :top_k]
    rows = []
    for p, idx in zip(probs, order, strict=True):
        top = [
            {"class": class_names[int(i)], "index": int(i), "probability": float(p[i])} for i in idx
        ]
        rows.append({**top[0], "top_k": top})
    return rows


def predict_files(
    model_spec: str,
    inputs: Sequence[str | Path] | Inputs,
    top_k: int = TOP_K,
    root: str = "runs",
    *,
    fit: str = DEFAULT_FIT,
    class_names: Sequence[str] = CLASS_NAMES,
) -> list[dict[str, Any]]:
    """Resolve a model, decode the inputs and predict: what the ``predict`` command runs.

    The images are decoded before the model is loaded or downloaded, so a bad input fails
    fast.

    Args:
        model_spec: see :func:`resolve_model`.
        inputs: see :func:`load_inputs`; or its result (images decoded already).
        top_k: classes per image.
        root: pipeline root for ``RUN:NAME`` / ``NAME`` specs (local folder or ``gs://``).
        fit: ``crop`` or ``stretch``.
        class_names: the name of each class index.

    Returns:
        :func:`predict`'s dicts, each with ``input`` (the image's name) first, ``label`` and
        ``label_class`` when the input had labels, and ``model`` (the model file, or the
        ``gs://`` URI it was downloaded from).
    """
    got = inputs if isinstance(inputs, Inputs) else load_inputs(inputs, fit)
    with tempfile.TemporaryDirectory(prefix="kd-predict-") as cache:
        path, source = _resolve(model_spec, root, cache)
        model = load_predict_model(path)
        rows = predict(model, got.x, top_k, class_names)
    out = []
    for name, label, row in zip(got.names, got.labels, rows, strict=True):
        entry: dict[str, Any] = {"input": name, **row}
        if label is not None:
            entry["label"] = label
            entry["label_class"] = class_names[label] if 0 <= label < len(class_names) else None
        entry["model"] = source
        out.append(entry)
    return out
