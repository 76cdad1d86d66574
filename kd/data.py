"""CIFAR-10 sources, validation, the stratified split and the Dataset files the stages exchange.

One entry point, :func:`load_cifar10`, reads CIFAR-10 from any of the accepted sources
(:data:`ACCEPTED_SOURCES`) into uint8 numpy arrays, validates them and records where they came
from. :func:`make_splits` is the whole data-split stage: load, optional per-class subsample,
stratified train/validation split, class-coverage check, and three Dataset files written
atomically.

Safety: the official python archive holds pickles, which can run code when loaded. They are
parsed with a restricted unpickler that only rebuilds numpy arrays and refuses everything else.
Tar archives are never extracted to disk: members are read in memory, and an archive with a
member that would land outside its folder (absolute path, ``..``, a link pointing outside) is
refused before anything is read.

Memory: images stay uint8 throughout (the full 60,000-image set is 184 MB); nothing makes a
float copy of a whole set.

Dataset file format (what :func:`save_dataset` writes and :func:`load_dataset` reads): one
uncompressed ``.npz`` (a zip of ``.npy`` members) holding ``x`` uint8 (N, 32, 32, 3), ``y``
uint8 (N,), optionally ``indices`` int64 (N,) (positions in the source set) and ``meta`` (a
JSON string: the metadata :func:`save_dataset` returns). The content hash
(:func:`content_sha256`) covers the arrays, not the file bytes.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import io
import json
import lzma
import os
import pickle
import posixpath
import shutil
import tarfile
import tempfile
import zipfile
import zlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np

from kd.config import CLASS_NAMES, IMAGE_SHAPE, NUM_CLASSES, SplitConfig
from kd.errors import ArtifactError, ConfigError, DataError
from kd.storage import atomic_path, gcs_download, is_gcs, safe_join, split_gcs

__all__ = [
    "ACCEPTED_SOURCES",
    "CifarArrays",
    "content_sha256",
    "load_cifar10",
    "load_dataset",
    "make_splits",
    "save_dataset",
    "stratified_split",
    "subsample_per_class",
    "validate_images",
]

OFFICIAL_URL = "https://www.cs.toronto.edu/~kriz/cifar.html"
ACCEPTED_SOURCES = (
    "'sample' (the small real sample shipped with kd), 'keras' "
    "(keras.datasets.cifar10.load_data(), needs internet), cifar-10-python.tar.gz or its "
    "extracted cifar-10-batches-py/ folder, cifar-10-binary.tar.gz or its extracted "
    "cifar-10-batches-bin/ folder, a folder holding train.npz and test.npz (arrays x, y), one "
    ".npz holding x_train, y_train, x_test, y_test, or any of these under gs://BUCKET/PATH"
)
ACCEPTED_FILES = (
    "a tar archive (cifar-10-python.tar.gz or cifar-10-binary.tar.gz, from "
    f"{OFFICIAL_URL}) or an .npz holding x_train, y_train, x_test, y_test"
)

PY_TRAIN = tuple(f"data_batch_{i}" for i in range(1, 6))
PY_TEST = "test_batch"
BIN_TRAIN = tuple(f"{n}.bin" for n in PY_TRAIN)
BIN_TEST = f"{PY_TEST}.bin"
PIXELS = int(np.prod(IMAGE_SHAPE))  # 3072
RECORD_BYTES = 1 + PIXELS  # binary format: 1 label byte + 3072 pixel bytes
_HASH_CHUNK = 4096  # images per sha256 update (bounded memory for non-contiguous arrays)


@dataclass
class CifarArrays:
    """CIFAR-10 as numpy arrays, with where it came from.

    Args:
        x_train: uint8 (N, 32, 32, 3) training images (HWC, RGB).
        y_train: uint8 (N,) training labels 0..9 (Keras class order).
        x_test: uint8 (M, 32, 32, 3) test images.
        y_test: uint8 (M,) test labels.
        provenance: JSON-ready record of the source: ``source`` (the string given),
            ``format`` (``keras|python|binary|npz|sample``), ``files`` (the member or file
            names read), ``sizes`` (bytes of each file read), and where relevant ``path``,
            ``archive``, ``gcs_uri``, ``downloaded_to``.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    provenance: dict[str, Any] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Validation
# --------------------------------------------------------------------------------------------


def validate_images(x: Any, y: Any, where: str, num_classes: int = NUM_CLASSES) -> None:
    """Check one image set: uint8 (N, 32, 32, 3) with N > 0 and N integer labels in range.

    Args:
        x: the images.
        y: the labels.
        where: what is being checked (a file, a member, a split), put first in every message.
        num_classes: labels must lie in ``[0, num_classes)``.

    Raises:
        DataError: naming ``where``, the problem and the fix.
    """
    if not isinstance(x, np.ndarray):
        raise DataError(
            f"{where}: images are a {type(x).__name__}, not a numpy array. Fix: pass a uint8 "
            "numpy array of shape (N, 32, 32, 3)"
        )
    if x.dtype != np.uint8:
        if np.issubdtype(x.dtype, np.inexact) and x.size:
            bad = int(np.count_nonzero(~np.isfinite(x)))
            if bad:
                raise DataError(
                    f"{where}: non-finite pixel values ({bad} NaN/inf of {x.size}) in a "
                    f"{x.dtype} image array. Fix: repair or drop the corrupt images and store "
                    "pixels as uint8 0-255"
                )
        raise DataError(
            f"{where}: images have dtype {x.dtype}, expected uint8. Fix: convert to uint8 0-255 "
            "(for floats in [0, 1]: np.clip(np.round(x * 255), 0, 255).astype(np.uint8))"
        )
    if x.ndim != 4 or tuple(x.shape[1:]) != IMAGE_SHAPE:
        hint = ""
        if x.ndim == 4 and tuple(x.shape[1:]) == (3, 32, 32):
            hint = " (channels-first: transpose with x.transpose(0, 2, 3, 1))"
        raise DataError(
            f"{where}: images have shape {tuple(x.shape)}, expected (N, 32, 32, 3) "
            f"(height, width, RGB). Fix: reshape the images to (N, 32, 32, 3){hint}"
        )
    n = x.shape[0]
    if n == 0:
        raise DataError(
            f"{where}: no images (N=0). Fix: check that the source holds data, or loosen the "
            "subsampling (train_per_class/test_per_class)"
        )
    if not isinstance(y, np.ndarray):
        y = np.asarray(y)
    if y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
        raise DataError(
            f"{where}: labels have dtype {y.dtype}, expected integers 0..{num_classes - 1}. "
            "Fix: store class indices as integers (e.g. y.astype(np.uint8))"
        )
    if y.ndim != 1:
        raise DataError(
            f"{where}: labels have shape {tuple(y.shape)}, expected ({n},). Fix: flatten them "
            "with y.reshape(-1)"
        )
    if y.shape[0] != n:
        raise DataError(
            f"{where}: {n} images but {y.shape[0]} labels. Fix: give exactly one label per image"
        )
    lo, hi = int(y.min()), int(y.max())
    if lo < 0 or hi >= num_classes:
        found = hi if hi >= num_classes else lo
        bad = int(np.count_nonzero((y < 0) | (y >= num_classes)))
        raise DataError(
            f"{where}: labels out of range 0..{num_classes - 1} (found {found}; {bad} of {n} "
            f"labels). Fix: use class indices 0..{num_classes - 1} in the Keras order "
            f"({', '.join(CLASS_NAMES)})"
        )


def _check_all_classes(y: np.ndarray, where: str, fix: str) -> None:
    counts = np.bincount(np.asarray(y, dtype=np.int64), minlength=NUM_CLASSES)
    missing = [c for c in range(NUM_CLASSES) if counts[c] == 0]
    if missing:
        names = ", ".join(f"{c} ({CLASS_NAMES[c]})" for c in missing)
        raise DataError(
            f"{where} has no image of class {names} (class counts {counts.tolist()}). Fix: {fix}"
        )


# --------------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------------


def load_cifar10(source: str, cache_dir: str | Path | None = None) -> CifarArrays:
    """Load CIFAR-10 from any accepted source (see :data:`ACCEPTED_SOURCES`).

    Args:
        source: ``sample``, ``keras``, a local path, or a ``gs://`` URI of any local layout.
        cache_dir: where ``gs://`` sources are downloaded to (kept); default: a temporary
            folder that is removed after loading.

    Returns:
        The validated uint8 arrays and their provenance.

    Raises:
        DataError: unknown, missing, unsafe, corrupt or invalid data (the message names the
            file and the fix).
    """
    if not isinstance(source, str) or not source.strip():
        raise DataError(f"empty data source {source!r}. Fix: give one of: {ACCEPTED_SOURCES}")
    src = source.strip()
    if src == "sample":
        data = _load_sample()
    elif src == "keras":
        data = _load_keras()
    elif is_gcs(src):
        data = _load_gcs(src, cache_dir)
    else:
        path = Path(src).expanduser()
        if not path.exists():
            raise DataError(
                f"data source {source!r} not found: it is not 'sample' or 'keras', not a gs:// "
                f"URI and no such file or folder exists. Fix: give one of: {ACCEPTED_SOURCES}"
            )
        data = _load_local(path)
    data.provenance["source"] = source
    data.provenance["num_train"] = int(data.x_train.shape[0])
    data.provenance["num_test"] = int(data.x_test.shape[0])
    _check_all_classes(
        data.y_train,
        f"the training set of {source!r}",
        "use the complete CIFAR-10 training set (all 10 classes are needed)",
    )
    return data


def _result(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    where: str,
    provenance: dict[str, Any],
) -> CifarArrays:
    """Validate both sets and return them as contiguous uint8 arrays."""
    y_train, y_test = _flat_labels(y_train), _flat_labels(y_test)
    validate_images(x_train, y_train, f"{where} (train set)")
    validate_images(x_test, y_test, f"{where} (test set)")
    return CifarArrays(
        x_train=np.ascontiguousarray(x_train),
        y_train=np.ascontiguousarray(y_train, dtype=np.uint8),
        x_test=np.ascontiguousarray(x_test),
        y_test=np.ascontiguousarray(y_test, dtype=np.uint8),
        provenance=provenance,
    )


def _flat_labels(y: Any) -> Any:
    """(N, 1) label columns (Keras' layout) -> (N,)."""
    if isinstance(y, np.ndarray) and y.ndim == 2 and y.shape[1] == 1:
        return y.reshape(-1)
    return y


def _load_sample() -> CifarArrays:
    ref = resources.files("kd.sample_data").joinpath("cifar10_sample.npz")
    with resources.as_file(ref) as path:
        arrays = _npz_arrays(
            path,
            ("x_train", "y_train", "x_test", "y_test"),
            "reinstall the kd package (the shipped sample is damaged)",
        )
        size = path.stat().st_size
    prov = {
        "format": "sample",
        "path": "kd/sample_data/cifar10_sample.npz",
        "files": ["cifar10_sample.npz"],
        "sizes": {"cifar10_sample.npz": size},
    }
    return _result(
        arrays["x_train"],
        arrays["y_train"],
        arrays["x_test"],
        arrays["y_test"],
        "the shipped sample kd/sample_data/cifar10_sample.npz",
        prov,
    )


def _load_keras() -> CifarArrays:
    try:
        import keras  # heavy; only for this source
    except ImportError as exc:
        raise DataError(
            f"source 'keras' needs keras, which cannot be imported ({exc}). Fix: install the "
            "pinned requirements, or use source 'sample' or a local CIFAR-10 archive"
        ) from exc
    try:
        (x_train, y_train), (x_test, y_test) = keras.datasets.cifar10.load_data()
    except Exception as exc:  # network errors, corrupt cache, ...
        raise DataError(
            f"keras.datasets.cifar10.load_data() failed: {type(exc).__name__}: {exc}. Fix: it "
            f"downloads cifar-10-python.tar.gz from {OFFICIAL_URL} and needs internet; offline, "
            "use source 'sample', or copy the archive here (or to gs://) and give its path"
        ) from exc
    x_train, x_test = np.asarray(x_train), np.asarray(x_test)
    if x_train.ndim == 4 and x_train.shape[1:] == (3, 32, 32):  # channels_first backend config
        x_train, x_test = x_train.transpose(0, 2, 3, 1), x_test.transpose(0, 2, 3, 1)
    prov = {"format": "keras", "files": ["keras.datasets.cifar10.load_data()"], "sizes": {}}
    return _result(
        x_train,
        np.asarray(y_train),
        x_test,
        np.asarray(y_test),
        "keras.datasets.cifar10.load_data()",
        prov,
    )


def _load_gcs(uri: str, cache_dir: str | Path | None) -> CifarArrays:
    bucket, obj = split_gcs(uri)
    tmp_root = None
    if cache_dir is None:
        tmp_root = Path(tempfile.mkdtemp(prefix="kd-cifar10-"))
        root = tmp_root
    else:
        root = Path(cache_dir).expanduser()
        root.mkdir(parents=True, exist_ok=True)
    try:
        dest = safe_join(root, f"{bucket}/{obj}" if obj else bucket)
        try:
            gcs_download(uri, dest)
        except DataError:
            raise
        except Exception as exc:  # network / permission errors while downloading a prefix
            raise DataError(
                f"cannot download {uri}: {type(exc).__name__}: {exc}. Fix: check the path "
                f"(gsutil ls {uri}) and that your credentials can read it"
            ) from exc
        data = _load_local(dest)
    finally:
        if tmp_root is not None:
            shutil.rmtree(tmp_root, ignore_errors=True)
    data.provenance["gcs_uri"] = uri
    data.provenance["downloaded_to"] = None if tmp_root is not None else str(dest)
    if tmp_root is not None:
        data.provenance.pop("path", None)  # the temporary copy is gone
    return data


def _load_local(path: Path) -> CifarArrays:
    if path.is_dir():
        return _load_dir(path)
    kind = _sniff(path)
    if kind == "tar":
        return _load_tar(path)
    if kind == "npz":
        return _load_single_npz(path)
    size = path.stat().st_size
    what = "is empty (0 bytes)" if size == 0 else "is not in a recognised format"
    raise DataError(
        f"file {path}: {what} (neither a tar archive nor an .npz). Fix: give {ACCEPTED_FILES}"
    )


def _sniff(path: Path) -> str | None:
    """``tar`` (plain/gzip/bz2/xz), ``npz`` (zip) or None, from the file's first bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError as exc:
        raise DataError(
            f"file {path}: cannot be read ({exc.strerror or exc}). Fix: check its permissions"
        ) from exc
    if head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ\x00")):
        return "tar"  # a compressed stream: only tar archives are accepted compressed
    if len(head) >= 262 and head[257:262] == b"ustar":
        return "tar"
    if head.startswith((b"PK\x03\x04", b"PK\x05\x06")):
        return "npz"
    return None


def _load_dir(folder: Path) -> CifarArrays:
    if (folder / PY_TEST).is_file() or (folder / PY_TRAIN[0]).is_file():
        return _load_batches_dir(folder, "python")
    if (folder / BIN_TEST).is_file() or (folder / BIN_TRAIN[0]).is_file():
        return _load_batches_dir(folder, "binary")
    if (folder / "train.npz").is_file() or (folder / "test.npz").is_file():
        return _load_npz_dir(folder)
    for sub in ("cifar-10-batches-py", "cifar-10-batches-bin"):
        if (folder / sub).is_dir():
            return _load_dir(folder / sub)
    for name in ("cifar-10-python.tar.gz", "cifar-10-binary.tar.gz"):
        if (folder / name).is_file():
            return _load_local(folder / name)
    files = sorted(p.name for p in folder.iterdir() if not p.name.startswith("."))
    if len(files) == 1 and (folder / files[0]).is_file():
        return _load_local(folder / files[0])
    shown = ", ".join(files[:10]) + (", ..." if len(files) > 10 else "") or "nothing"
    raise DataError(
        f"folder {folder}: no CIFAR-10 layout found (it holds {shown}). Fix: give a folder "
        "holding data_batch_1..5 and test_batch (python), data_batch_1..5.bin and test_batch.bin "
        f"(binary), or train.npz and test.npz; or one of: {ACCEPTED_SOURCES}"
    )


def _load_batches_dir(folder: Path, fmt: str) -> CifarArrays:
    names = (*PY_TRAIN, PY_TEST) if fmt == "python" else (*BIN_TRAIN, BIN_TEST)
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise DataError(
            f"folder {folder}: missing {', '.join(missing)} of the CIFAR-10 {fmt} batches. "
            f"Fix: extract the whole official archive again (it holds {', '.join(names)})"
        )
    parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    sizes: dict[str, int] = {}
    for name in names:
        path = folder / name
        try:
            blob = path.read_bytes()
        except OSError as exc:
            raise DataError(
                f"file {path}: cannot be read ({exc.strerror or exc}). Fix: check its permissions"
            ) from exc
        sizes[name] = len(blob)
        parts[name] = _parse_batch(blob, f"file {path}", fmt)
        del blob
    prov = {"format": fmt, "path": str(folder.resolve()), "files": list(names), "sizes": sizes}
    return _assemble(parts, names, f"folder {folder}", prov)


def _assemble(
    parts: dict[str, tuple[np.ndarray, np.ndarray]],
    names: tuple[str, ...],
    where: str,
    provenance: dict[str, Any],
) -> CifarArrays:
    """Concatenate the five train batches (in order) and take the test batch."""
    x_train = np.concatenate([parts[n][0] for n in names[:-1]])
    y_train = np.concatenate([parts[n][1] for n in names[:-1]])
    x_test, y_test = parts[names[-1]]
    parts.clear()  # free the per-batch copies before validation
    return _result(x_train, y_train, x_test, y_test, where, provenance)


def _parse_batch(blob: bytes, where: str, fmt: str) -> tuple[np.ndarray, np.ndarray]:
    if fmt == "python":
        return _parse_python_batch(blob, where)
    return _parse_binary_batch(blob, where)


def _chw_to_hwc(data: np.ndarray) -> np.ndarray:
    """(N, 3072) CHW-planar rows (1024 R, 1024 G, 1024 B, row-major) -> (N, 32, 32, 3)."""
    n = data.shape[0]
    return np.ascontiguousarray(data.reshape(n, 3, 32, 32).transpose(0, 2, 3, 1))


def _parse_binary_batch(blob: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    if not blob or len(blob) % RECORD_BYTES:
        raise DataError(
            f"{where}: {len(blob)} bytes is not a whole number of {RECORD_BYTES}-byte records "
            "(1 label byte + 3072 pixel bytes): the file is truncated or not a CIFAR-10 binary "
            f"batch. Fix: download cifar-10-binary.tar.gz again from {OFFICIAL_URL}"
        )
    records = np.frombuffer(blob, dtype=np.uint8).reshape(-1, RECORD_BYTES)
    y = records[:, 0].copy()
    x = _chw_to_hwc(records[:, 1:])
    validate_images(x, y, where)
    return x, y


_NUMPY_RECONSTRUCTORS = ("_reconstruct", "scalar")
_NUMPY_CORE_MODULES = ("numpy.core.multiarray", "numpy._core.multiarray")


def _numpy_multiarray() -> Any:
    try:
        return importlib.import_module("numpy._core.multiarray")
    except ImportError:  # numpy < 2
        return importlib.import_module("numpy.core.multiarray")


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds numpy arrays and plain containers, and refuses everything else.

    A pickle names the callables it wants called; a malicious one names ``os.system`` and
    friends. Only the numpy array/dtype constructors are allowed.
    """

    def __init__(self, blob: bytes, where: str) -> None:
        super().__init__(io.BytesIO(blob), encoding="bytes")
        self._where = where

    def find_class(self, module: str, name: str) -> Any:
        if module in _NUMPY_CORE_MODULES and name in _NUMPY_RECONSTRUCTORS:
            return getattr(_numpy_multiarray(), name)
        if module == "numpy" and name in ("ndarray", "dtype"):
            return getattr(np, name)
        if module in ("numpy._core.numeric", "numpy.core.numeric") and name == "_frombuffer":
            numeric = importlib.import_module(module.replace("numpy.core", "numpy._core", 1))
            return numeric._frombuffer
        raise DataError(
            f"{self._where}: pickle wants to load {module}.{name}; refusing to run code from a "
            f"data file. Fix: use the official archive cifar-10-python.tar.gz from {OFFICIAL_URL} "
            "(its pickles hold only numpy arrays, lists and bytes), or convert your data to .npz"
        )


def _parse_python_batch(blob: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    fix = f"Fix: download cifar-10-python.tar.gz again from {OFFICIAL_URL}"
    try:
        obj = _NumpyOnlyUnpickler(blob, where).load()
    except DataError:
        raise
    except Exception as exc:  # truncated/corrupt pickles raise many types
        raise DataError(
            f"{where}: not a readable CIFAR-10 python batch ({type(exc).__name__}: {exc}): the "
            f"file is truncated or corrupt. {fix}"
        ) from exc
    if not isinstance(obj, dict):
        raise DataError(
            f"{where}: the pickle holds a {type(obj).__name__}, expected the CIFAR-10 batch dict "
            f"with 'data' and 'labels'. {fix}"
        )
    data = obj.get(b"data", obj.get("data"))
    labels = obj.get(b"labels", obj.get("labels"))
    if data is None or labels is None:
        keys = sorted(k.decode("latin1") if isinstance(k, bytes) else str(k) for k in obj)
        raise DataError(
            f"{where}: the batch dict has no 'data'/'labels' entries (keys: {keys}); is this "
            f"CIFAR-100 or another dataset? {fix}"
        )
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != PIXELS:
        raise DataError(
            f"{where}: batch 'data' is {data.dtype} {tuple(data.shape)}, expected uint8 "
            f"(N, {PIXELS}) rows of CHW-planar pixels. {fix}"
        )
    y = np.asarray(labels)
    x = _chw_to_hwc(data)
    validate_images(x, y, where)
    return x, y


# --- tar archives -----------------------------------------------------------------------------


def _escapes(name: str, *, allow_dotdot: bool) -> bool:
    """True for an absolute path, or one with ``..`` (or, for links, one resolving outside)."""
    norm = name.replace("\\", "/")
    if norm.startswith("/") or (len(norm) > 1 and norm[1] == ":"):
        return True
    depth = 0
    for part in norm.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not allow_dotdot:
                return True
            depth -= 1
            if depth < 0:
                return True
        else:
            depth += 1
    return False


def _check_tar_members(members: list[tarfile.TarInfo], archive: Path) -> None:
    fix = (
        f"Fix: use the official CIFAR-10 archive from {OFFICIAL_URL}, or repack yours with "
        "relative member paths and no links pointing outside it"
    )
    for m in members:
        if _escapes(m.name, allow_dotdot=False):
            raise DataError(
                f"archive {archive}: refusing tar member {m.name!r}: it would land outside the "
                f"target folder. {fix}"
            )
        if m.issym() or m.islnk():
            link = m.linkname.replace("\\", "/")
            # symlink targets are relative to the member's folder, hard links to the root
            base = posixpath.dirname(m.name.replace("\\", "/")) if m.issym() else ""
            absolute = link.startswith("/") or link[1:2] == ":"
            if absolute or _escapes(posixpath.join(base, link), allow_dotdot=True):
                raise DataError(
                    f"archive {archive}: refusing tar member {m.name!r}: a link to "
                    f"{m.linkname!r}, which points outside the target folder. {fix}"
                )


def _pick_tar_members(
    members: list[tarfile.TarInfo], archive: Path
) -> tuple[str, tuple[str, ...], dict[str, tarfile.TarInfo]]:
    by_base: dict[str, list[tarfile.TarInfo]] = {}
    for m in members:
        if m.isfile():
            by_base.setdefault(os.path.basename(m.name.replace("\\", "/")), []).append(m)
    layouts = (("python", (*PY_TRAIN, PY_TEST)), ("binary", (*BIN_TRAIN, BIN_TEST)))
    for fmt, names in layouts:
        present = [n for n in names if n in by_base]
        if not present:
            continue
        missing = [n for n in names if n not in by_base]
        if missing:
            raise DataError(
                f"archive {archive}: missing {', '.join(missing)} of the CIFAR-10 {fmt} batches "
                f"(the archive is incomplete). Fix: download it again from {OFFICIAL_URL}"
            )
        chosen: dict[str, tarfile.TarInfo] = {}
        for n in names:
            if len(by_base[n]) > 1:
                dup = ", ".join(m.name for m in by_base[n])
                raise DataError(
                    f"archive {archive}: {n} appears more than once ({dup}); which one to use is "
                    "ambiguous. Fix: keep one copy of the batches in the archive"
                )
            chosen[n] = by_base[n][0]
        return fmt, names, chosen
    shown = ", ".join(m.name for m in members[:10]) + (", ..." if len(members) > 10 else "")
    raise DataError(
        f"archive {archive}: holds none of the CIFAR-10 batch files (members: {shown or 'none'}). "
        f"Fix: give cifar-10-python.tar.gz or cifar-10-binary.tar.gz from {OFFICIAL_URL}"
    )


def _read_to_end(tf: tarfile.TarFile) -> None:
    """Read the archive's (decompressed) stream to its end, where gzip, bz2 and xz check it."""
    while tf.fileobj is not None and tf.fileobj.read(1 << 20):
        pass


def _load_tar(path: Path) -> CifarArrays:
    parts: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    try:
        with tarfile.open(path, "r:*") as tf:
            members = tf.getmembers()
            _check_tar_members(members, path)  # before reading any member's data
            try:
                fmt, names, chosen = _pick_tar_members(members, path)
            except DataError:
                # tarfile ends its member list, silently, at the first header it cannot
                # parse: a damaged archive can look like an incomplete one. Read the
                # compressed stream to its end first, so that its checksum names damage as
                # such (the handlers below).
                _read_to_end(tf)
                raise
            # read in archive order: a compressed stream only seeks forward cheaply
            for name in sorted(names, key=lambda n: chosen[n].offset_data):
                f = tf.extractfile(chosen[name])
                if f is None:  # pragma: no cover - isfile() members always have data
                    raise DataError(f"archive {path}: member {chosen[name].name} has no data")
                blob = f.read()
                parts[name] = _parse_batch(blob, f"archive {path} member {chosen[name].name}", fmt)
                del blob
            # gzip/bz2/xz verify their checksum only at the end of the stream: read to it, so
            # a corrupted byte inside a member already read is refused, not loaded
            _read_to_end(tf)
    except DataError:
        raise
    except (tarfile.TarError, EOFError, zlib.error, lzma.LZMAError, OSError) as exc:
        detail = " ".join(str(exc).split())  # tarfile's messages span lines
        raise DataError(
            f"archive {path}: cannot be read ({type(exc).__name__}: {detail}): it is truncated, "
            f"corrupt or not a tar archive. Fix: download it again from {OFFICIAL_URL} and "
            f"check its size; accepted: {ACCEPTED_FILES}"
        ) from exc
    prov = {
        "format": fmt,
        "path": str(path.resolve()),
        "archive": path.name,
        "archive_bytes": path.stat().st_size,
        "files": [chosen[n].name for n in names],
        "sizes": {chosen[n].name: int(chosen[n].size) for n in names},
    }
    return _assemble(parts, names, f"archive {path}", prov)


# --- npz ------------------------------------------------------------------------------------


def _npz_arrays(path: Path, keys: tuple[str, ...], fix: str) -> dict[str, np.ndarray]:
    """Read ``keys`` from an .npz (no pickles), as DataError on any problem."""
    try:
        npz = np.load(path, allow_pickle=False)
        if not isinstance(npz, np.lib.npyio.NpzFile):
            raise DataError(f"file {path}: a single .npy array, not an .npz. Fix: {fix}")
        with npz:
            missing = [k for k in keys if k not in npz.files]
            if missing:
                raise DataError(
                    f"file {path}: missing array(s) {', '.join(missing)} (it holds "
                    f"{', '.join(npz.files) or 'nothing'}). Fix: {fix}"
                )
            return {k: npz[k] for k in keys}
    except DataError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, zlib.error) as exc:
        raise DataError(
            f"file {path}: not a readable .npz ({type(exc).__name__}: {exc}). Fix: {fix}"
        ) from exc


def _load_npz_dir(folder: Path) -> CifarArrays:
    fix = "write train.npz and test.npz each with x uint8 (N, 32, 32, 3) and y (N,) labels 0-9"
    parts = {}
    for name in ("train.npz", "test.npz"):
        p = folder / name
        if not p.is_file():
            raise DataError(f"folder {folder}: has no {name}. Fix: {fix}")
        parts[name] = _npz_arrays(p, ("x", "y"), fix)
    prov = {
        "format": "npz",
        "path": str(folder.resolve()),
        "files": ["train.npz", "test.npz"],
        "sizes": {n: (folder / n).stat().st_size for n in ("train.npz", "test.npz")},
    }
    tr, te = parts["train.npz"], parts["test.npz"]
    return _result(tr["x"], tr["y"], te["x"], te["y"], f"folder {folder}", prov)


def _load_single_npz(path: Path) -> CifarArrays:
    fix = (
        "give one .npz holding x_train, y_train, x_test, y_test (or a folder holding train.npz "
        "and test.npz with x and y)"
    )
    a = _npz_arrays(path, ("x_train", "y_train", "x_test", "y_test"), fix)
    prov = {
        "format": "npz",
        "path": str(path.resolve()),
        "files": [path.name],
        "sizes": {path.name: path.stat().st_size},
    }
    return _result(a["x_train"], a["y_train"], a["x_test"], a["y_test"], f"file {path}", prov)


# --------------------------------------------------------------------------------------------
# Split and subsample
# --------------------------------------------------------------------------------------------


def _labels_1d(y: Any, what: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or y.size == 0 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(
            f"{what}: labels must be a non-empty 1-D integer array (got {y.dtype} "
            f"{tuple(y.shape)}). Fix: pass y with shape (N,)"
        )
    return y


def stratified_split(
    y: np.ndarray, val_fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split indices into train and validation, keeping each class's proportion.

    Each class ``c`` with ``n_c`` images gets ``k_c`` validation images, allocated by largest
    remainder so that the total is ``round(N * val_fraction)`` and ``|k_c - n_c * val_fraction|
    < 1``; a class with at least 2 images keeps at least 1 on each side. Which images go to
    validation is a seeded random draw within each class.

    Args:
        y: (N,) integer labels.
        val_fraction: fraction held out for validation, in (0, 1).
        seed: seed of the draw (same seed, same split).

    Returns:
        ``(train_idx, val_idx)``: sorted int64 indices into ``y``, disjoint, covering 0..N-1.
    """
    y = _labels_1d(y, "stratified_split")
    if isinstance(val_fraction, bool) or not 0.0 < float(val_fraction) < 1.0:
        raise ConfigError(f"invalid val_fraction={val_fraction!r}: must be in (0.0, 1.0)")
    classes, counts = np.unique(y, return_counts=True)
    exact = counts * float(val_fraction)
    k = np.floor(exact).astype(np.int64)
    target = int(np.floor(y.size * float(val_fraction) + 0.5))
    extra = max(target - int(k.sum()), 0)
    order = np.argsort(-(exact - k), kind="stable")
    k[order[:extra]] += 1
    k = np.where(counts >= 2, np.clip(k, 1, counts - 1), k)
    rng = np.random.default_rng(seed)
    val_parts = [
        rng.permutation(np.flatnonzero(y == c))[:kc] for c, kc in zip(classes, k, strict=True)
    ]
    val_idx = np.sort(np.concatenate(val_parts)).astype(np.int64)
    keep = np.ones(y.size, dtype=bool)
    keep[val_idx] = False
    return np.flatnonzero(keep).astype(np.int64), val_idx


def subsample_per_class(y: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Seeded draw of at most ``per_class`` indices of each class.

    Args:
        y: (N,) integer labels.
        per_class: images kept per class (a class with fewer keeps all); 0 keeps everything.
        seed: seed of the draw.

    Returns:
        Sorted int64 indices into ``y``.
    """
    y = _labels_1d(y, "subsample_per_class")
    if isinstance(per_class, bool) or not isinstance(per_class, int | np.integer) or per_class < 0:
        raise ConfigError(f"invalid per_class={per_class!r}: must be an integer >= 0 (0 = all)")
    if per_class == 0:
        return np.arange(y.size, dtype=np.int64)
    rng = np.random.default_rng(seed)
    parts = []
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        if idx.size > per_class:
            idx = rng.choice(idx, size=int(per_class), replace=False)
        parts.append(idx)
    return np.sort(np.concatenate(parts)).astype(np.int64)


# --------------------------------------------------------------------------------------------
# Dataset files
# --------------------------------------------------------------------------------------------


def content_sha256(x: np.ndarray, y: np.ndarray) -> str:
    """sha256 of the data itself (independent of how a file encodes it).

    Hashes a header with the shapes and image dtype, then the images' C-order bytes, then the
    labels as little-endian int64 (so uint8 and int64 labels of equal value hash alike).

    Args:
        x: (N, 32, 32, 3) images.
        y: (N,) labels.

    Returns:
        The hex digest.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    h = hashlib.sha256()
    h.update(f"kd-cifar10/v1 x={x.dtype.str}{tuple(x.shape)} y={tuple(y.shape)}\n".encode())
    if x.ndim and x.shape[0]:
        for i in range(0, x.shape[0], _HASH_CHUNK):
            h.update(np.ascontiguousarray(x[i : i + _HASH_CHUNK]).data)
    else:
        h.update(np.ascontiguousarray(x).tobytes())
    h.update(np.ascontiguousarray(y, dtype="<i8").tobytes())
    return h.hexdigest()


def _metadata(x: np.ndarray, y: np.ndarray) -> dict[str, Any]:
    return {
        "sha256": content_sha256(x, y),
        "num_examples": int(x.shape[0]),
        "class_counts": np.bincount(y, minlength=NUM_CLASSES).astype(int).tolist(),
        "image_shape": list(IMAGE_SHAPE),
    }


def save_dataset(
    path: str | os.PathLike[str],
    x: np.ndarray,
    y: np.ndarray,
    *,
    indices: np.ndarray | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write one Dataset file (uncompressed .npz) at exactly ``path``, atomically.

    Args:
        path: the file to write (no suffix is added; a KFP ``Dataset.path`` works as is).
        x: uint8 (N, 32, 32, 3) images.
        y: (N,) integer labels 0..9 (stored as uint8).
        indices: optional (N,) positions of the images in their source set (stored as int64).
        extra: optional JSON-ready fields added to the metadata (the core fields win).

    Returns:
        ``{"sha256", "num_examples", "class_counts": [10 ints], "image_shape": [32, 32, 3]}``
        plus ``extra``; the same dict is stored in the file as ``meta``.

    Raises:
        DataError: invalid images/labels/indices.
        ArtifactError: the location is not writable or the disk is full (nothing is left).
    """
    where = f"dataset for {path}"
    validate_images(x, y, where)
    y8 = np.asarray(y).astype(np.uint8)
    arrays: dict[str, np.ndarray] = {"x": x, "y": y8}
    if indices is not None:
        idx = np.asarray(indices)
        if idx.shape != (x.shape[0],) or not np.issubdtype(idx.dtype, np.integer):
            raise DataError(
                f"{where}: indices are {idx.dtype} {tuple(idx.shape)}, expected ({x.shape[0]},) "
                "integers (one source position per image). Fix: pass the index array used to "
                "select x and y"
            )
        arrays["indices"] = idx.astype(np.int64, copy=False)
    meta = {**(extra or {}), **_metadata(x, y8)}
    try:
        arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
    except (TypeError, ValueError) as exc:
        raise DataError(
            f"{where}: extra metadata is not JSON-serialisable ({exc}). Fix: pass only "
            "strings, numbers, lists and dicts in extra"
        ) from exc
    with atomic_path(path) as tmp:
        with (
            open(tmp, "wb") as f,
            zipfile.ZipFile(f, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf,
        ):
            for name, arr in arrays.items():
                with zf.open(f"{name}.npy", "w", force_zip64=True) as member:
                    np.save(member, arr, allow_pickle=False)
    return meta


def load_dataset(
    path: str | os.PathLike[str], expected_sha256: str | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Read a Dataset file written by :func:`save_dataset`, validated.

    Args:
        path: the file.
        expected_sha256: if given, the content hash the data-split stage recorded; a different
            hash raises ArtifactError.

    Returns:
        ``(x, y)``: uint8 (N, 32, 32, 3) images and uint8 (N,) labels.

    Raises:
        DataError: the file is missing, corrupt or holds invalid arrays.
        ArtifactError: its content hash differs from ``expected_sha256``.
    """
    p = Path(path)
    fix = "pass the Dataset written by the data_split stage (re-run data_split to recreate it)"
    if not p.is_file():
        raise DataError(f"dataset file {p} does not exist. Fix: {fix}")
    arrays = _npz_arrays(p, ("x", "y"), fix)
    x, y = arrays["x"], _flat_labels(arrays["y"])
    validate_images(x, y, f"dataset file {p}")
    if expected_sha256 is not None:
        actual = content_sha256(x, y)
        if actual != expected_sha256:
            raise ArtifactError(
                f"dataset file {p}: content sha256 {actual} differs from the expected "
                f"{expected_sha256}: the file was changed or belongs to another run. Fix: re-run "
                "data_split and pass its outputs (files and metadata) together"
            )
    return x, y.astype(np.uint8, copy=False)


# --------------------------------------------------------------------------------------------
# The data-split stage
# --------------------------------------------------------------------------------------------


def make_splits(
    cfg: SplitConfig,
    train_path: str | os.PathLike[str],
    val_path: str | os.PathLike[str],
    test_path: str | os.PathLike[str],
    cache_dir: str | Path | None = None,
) -> dict[str, Any]:
    """The data-split stage: load, subsample, split, check, and write three Dataset files.

    ``cfg.train_per_class`` subsamples the official train set before the split;
    ``cfg.test_per_class`` subsamples the test set. Every split must contain every class;
    nothing is written otherwise.

    Args:
        cfg: the validated split config.
        train_path: where the training Dataset is written.
        val_path: where the validation Dataset is written.
        test_path: where the test Dataset is written.
        cache_dir: download folder for ``gs://`` sources (see :func:`load_cifar10`).

    Returns:
        ``{"source", "provenance", "seed", "val_fraction", "train_per_class",
        "test_per_class", "train": meta, "validation": meta, "test": meta}`` where each meta is
        what :func:`save_dataset` returned.

    Raises:
        DataError: bad source data, or a split without some class.
    """
    if not isinstance(cfg, SplitConfig):
        raise ConfigError(
            f"make_splits needs a SplitConfig, got {type(cfg).__name__}. Fix: build one with "
            "kd.config.SplitConfig(...)"
        )
    data = load_cifar10(cfg.source, cache_dir=cache_dir)
    pool = subsample_per_class(data.y_train, cfg.train_per_class, cfg.seed)
    tr_rel, va_rel = stratified_split(data.y_train[pool], cfg.val_fraction, cfg.seed)
    test_idx = subsample_per_class(data.y_test, cfg.test_per_class, cfg.seed)
    splits = {
        "train": (data.x_train, data.y_train, pool[tr_rel], train_path),
        "validation": (data.x_train, data.y_train, pool[va_rel], val_path),
        "test": (data.x_test, data.y_test, test_idx, test_path),
    }
    for name, (_, y, idx, _) in splits.items():
        fix = (
            "use more data (a larger test_per_class, or 0 for the whole test set)"
            if name == "test"
            else "use more data (a larger train_per_class, or 0 for all) or a smaller val_fraction"
        )
        _check_all_classes(y[idx], f"split {name!r} of {cfg.source!r}", fix)
    result: dict[str, Any] = {
        "source": cfg.source,
        "provenance": data.provenance,
        "seed": cfg.seed,
        "val_fraction": cfg.val_fraction,
        "train_per_class": cfg.train_per_class,
        "test_per_class": cfg.test_per_class,
    }
    # All or nothing: each file goes to a temporary name (every output location is checked
    # before any is written) and the three are renamed into place only when all are written.
    with contextlib.ExitStack() as stack:
        tmps = {name: stack.enter_context(atomic_path(s[3])) for name, s in splits.items()}
        for name, (x, y, idx, _) in splits.items():
            result[name] = save_dataset(
                tmps[name],
                x[idx],
                y[idx],
                indices=idx,
                extra={"split": name, "source": cfg.source, "seed": cfg.seed},
            )
    return result
