"""Bad inputs: each one gets a clear error, a non-zero exit, and no half-written artifact.

Each test, or each parametrized case, is one row of ``docs/BAD_INPUTS.md``.
``test_docs_table_lists_every_case`` keeps the table and this file in step. Every case checks
three things:

1. **The exception type**: a :class:`kd.errors.KDError` subclass, :class:`submit.SubmitError`
   or :class:`local_runner.run.RunnerError`. On the command line, the exit status instead.
2. **The message** is one line. It names the problem (the file, field or URI involved) and
   gives a fix. The rule for the fix (:data:`FIX`) is the same everywhere: the message holds
   ``Fix: <what to do>``, or a clause that starts with an imperative or ``must``/``choose``
   right after ``:``, ``.`` or ``;`` (``invalid alpha=1.5: must be in [0.0, 1.0]``).
3. **No output is half-written**: the output folder holds exactly what it held before. A
   previous run's file stays byte for byte the same, no new output appears, and no temporary
   (``.*.tmp``, ``*.part``) is left behind.

All data is tiny and written here: 100 training and 20 test images of random pixels, in the
real on-disk formats. Command-line cases run ``python -m local_runner`` and ``python
pipeline.py`` as subprocesses with a timeout. ``gs://`` cases use the GCS emulator fixture, and
submissions use the fake KFP/Vertex servers of ``tests/fake_servers.py``.
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

_TESTS = Path(__file__).resolve().parent
REPO = _TESTS.parent
for _path in (str(REPO), str(_TESTS)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from fake_servers import (  # noqa: E402
    FakeKFPServer,
    FakeVertexServer,
    StaticTokenCredentials,
    closed_port,
)
from test_data import py2_pickle  # noqa: E402  (the Python-2 style pickle writer)

import submit  # noqa: E402
from kd import stages  # noqa: E402
from kd.config import (  # noqa: E402
    EvalConfig,
    SplitConfig,
    StudentConfig,
    TeacherConfig,
    defaults,
    loss_defaults,
)
from kd.data import CifarArrays, content_sha256, save_dataset  # noqa: E402
from kd.errors import ArtifactError, ConfigError, DataError, KDError  # noqa: E402
from local_runner.run import RunnerError  # noqa: E402
from submit import SubmitError  # noqa: E402

THIS = "tests/test_bad_inputs.py"
DOC = REPO / "docs" / "BAD_INPUTS.md"
CLI_TIMEOUT_S = 120
PREVIOUS = b"a previous run's output: must survive a failed run unchanged"

# The fix rule (see the module docstring).
FIX = re.compile(
    r"(?:\bFix: |[:.;] (?:must|choose|use|pass|give|check|run|set|write|re-run|download|free) )"
    r"\w"
)


# ----------------------------------------------------------------------------------------------
# Assertions
# ----------------------------------------------------------------------------------------------


_BASETEMP: list[str] = []  # pytest's temporary root, set by _remember_basetemp


@pytest.fixture(autouse=True, scope="session")
def _remember_basetemp(tmp_path_factory: pytest.TempPathFactory) -> None:
    _BASETEMP[:] = [str(tmp_path_factory.getbasetemp())]


def assert_clear(error: BaseException | str, *names: str) -> str:
    """The message is one line, names each of ``names`` and gives a fix (:data:`FIX`).

    A name that is not a path is looked for with pytest's temporary folder blanked out: pytest
    names each test's folder after the test ("..._truncated0"), which would match by luck.
    """
    message = str(error)
    assert message.strip(), "empty error message"
    assert "\n" not in message, f"not one line: {message!r}"
    scrubbed = message
    for base in _BASETEMP:  # the base and the test's own folder in it
        scrubbed = re.sub(re.escape(base) + r"(/[^/\s'\"]*)?", "<tmp>", scrubbed)
    for name in names:
        haystack = message if any(b in name for b in _BASETEMP) else scrubbed
        assert name in haystack, f"{name!r} not named in: {message}"
    assert FIX.search(scrubbed), f"no fix in: {message}"
    return message


def snapshot(root: Path) -> dict[str, str]:
    """Every file (sha256) and folder under ``root``, hidden ones included."""
    if not root.exists():
        return {}
    if root.is_file():
        return {".": hashlib.sha256(root.read_bytes()).hexdigest()}
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root).as_posix()
        out[rel] = "<dir>" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


class Outputs:
    """The output location of a case: a folder holding a previous run's file.

    ``split_paths`` are where the data-split stage writes; ``train.npz`` already exists (the
    previous run's). :meth:`assert_untouched` checks that a failed run left the folder
    exactly as it found it.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True)
        (root / "train.npz").write_bytes(PREVIOUS)
        self.before = snapshot(root)

    @property
    def split_paths(self) -> tuple[str, str, str]:
        return tuple(str(self.root / n) for n in ("train.npz", "validation.npz", "test.npz"))

    def add_previous(self, name: str, data: bytes = PREVIOUS) -> Path:
        path = self.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        self.before = snapshot(self.root)
        return path

    def assert_untouched(self) -> None:
        after = snapshot(self.root)
        new = sorted(set(after) - set(self.before))
        assert not new, f"a failed run left {new} in {self.root}"
        changed = sorted(k for k in self.before if after.get(k) != self.before[k])
        assert not changed, f"a failed run changed or removed {changed} in {self.root}"
        assert (self.root / "train.npz").read_bytes() == PREVIOUS


@pytest.fixture
def outputs(tmp_path: Path) -> Outputs:
    return Outputs(tmp_path / "out")


# ----------------------------------------------------------------------------------------------
# Tiny data in the real formats
# ----------------------------------------------------------------------------------------------


def make_arrays(seed: int = 0) -> CifarArrays:
    """100 training images (10 per class) and 20 test images (2 per class), random pixels."""
    rng = np.random.default_rng(seed)
    return CifarArrays(
        x_train=rng.integers(0, 256, (100, 32, 32, 3), dtype=np.uint8),
        y_train=rng.permutation(np.arange(100) % 10).astype(np.uint8),
        x_test=rng.integers(0, 256, (20, 32, 32, 3), dtype=np.uint8),
        y_test=rng.permutation(np.arange(20) % 10).astype(np.uint8),
    )


A = make_arrays()
PY_NAMES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")


def chw_rows(x: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> (N, 3072) CHW-planar rows, as the official batches store them."""
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2).reshape(len(x), -1))


def _batches(a: CifarArrays) -> list[tuple[str, np.ndarray, np.ndarray]]:
    parts = [
        (PY_NAMES[i], a.x_train[i * 20 : (i + 1) * 20], a.y_train[i * 20 : (i + 1) * 20])
        for i in range(5)
    ]
    return [*parts, ("test_batch", a.x_test, a.y_test)]


def python_dir(folder: Path, a: CifarArrays = A, skip: str = "") -> Path:
    """The official python layout: pickled dicts with b'data' rows and b'labels'."""
    folder.mkdir(parents=True)
    for name, x, y in _batches(a):
        if name != skip:
            blob = py2_pickle({b"data": chw_rows(x), b"labels": [int(v) for v in y]})
            (folder / name).write_bytes(blob)
    return folder


def binary_dir(folder: Path, a: CifarArrays = A) -> Path:
    """The official binary layout: records of 1 label byte + 3072 pixel bytes."""
    folder.mkdir(parents=True)
    for name, x, y in _batches(a):
        records = np.concatenate([y.reshape(-1, 1), chw_rows(x)], axis=1).astype(np.uint8)
        (folder / f"{name}.bin").write_bytes(records.tobytes())
    return folder


def _fixed_times(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime = 0
    return info


def tar_gz(
    folder: Path, archive: Path, extra: tuple[tarfile.TarInfo, ...] = (), level: int = 9
) -> Path:
    """``folder`` as a .tar.gz, the same bytes on every run (no timestamps): the damaged-archive
    cases invert bytes at fixed offsets, and what the damage breaks first must not vary.
    ``level`` 0 stores the tar bytes uncompressed inside the gzip stream."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        tf.add(folder, arcname=folder.name, filter=_fixed_times)
        for info in extra:
            data = b"evil" if info.isfile() else None
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    archive.write_bytes(gzip.compress(buf.getvalue(), compresslevel=level, mtime=0))
    return archive


def npz(path: Path, **arrays: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:  # a file object: numpy adds no .npz suffix
        np.savez(f, **arrays)
    return path


def cifar_npz(path: Path, **override: Any) -> Path:
    arrays = {"x_train": A.x_train, "y_train": A.y_train, "x_test": A.x_test, "y_test": A.y_test}
    arrays.update(override)
    return npz(path, **arrays)


class RunsCommand:
    """Pickles as a call of ``os.system(cmd)``: loading it with plain pickle runs ``cmd``."""

    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (self.cmd,))


def _sentinel(tmp: Path) -> Path:
    """The file a malicious payload would create (``tmp`` is the case's source folder)."""
    return tmp.parent / "SENTINEL"


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


# --- one builder per bad source: (tmp) -> the source string ----------------------------------


def src_truncated_tar(tmp: Path) -> str:
    good = tar_gz(python_dir(tmp / "cifar-10-batches-py"), tmp / "good.tar.gz")
    bad = tmp / "cifar-10-python.tar.gz"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    return str(bad)


def _damaged_tar(offset: Callable[[int], int]) -> Callable[[Path], str]:
    """A cifar-10-python.tar.gz with 64 bytes inverted at ``offset(size)``."""

    def build(tmp: Path) -> str:
        good = tar_gz(python_dir(tmp / "cifar-10-batches-py"), tmp / "good.tar.gz")
        blob = bytearray(good.read_bytes())
        start = offset(len(blob))
        for i in range(start, min(start + 64, len(blob))):
            blob[i] ^= 0xFF
        bad = tmp / "cifar-10-python.tar.gz"
        bad.write_bytes(bytes(blob))
        return str(bad)

    return build


def src_corrupt_tar_header(tmp: Path) -> str:
    """Damage on a member's tar header: tarfile ends its member list at a header it cannot
    parse, so the archive would read as merely incomplete; its gzip checksum says corrupt.
    (Stored uncompressed, so the damage lands exactly on the header of data_batch_3.)"""
    good = tar_gz(python_dir(tmp / "cifar-10-batches-py"), tmp / "good.tar.gz", level=0)
    blob = bytearray(good.read_bytes())
    start = blob.find(b"cifar-10-batches-py/data_batch_3\x00")
    assert start > 0
    for i in range(start, start + 64):
        blob[i] ^= 0xFF
    bad = tmp / "cifar-10-python.tar.gz"
    bad.write_bytes(bytes(blob))
    return str(bad)


def src_truncated_binary(tmp: Path) -> str:
    folder = binary_dir(tmp / "cifar-10-batches-bin")
    batch = folder / "data_batch_3.bin"
    batch.write_bytes(batch.read_bytes()[:-100])
    return str(folder)


def src_corrupt_pickle(tmp: Path) -> str:
    folder = python_dir(tmp / "cifar-10-batches-py")
    batch = folder / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[:5000])  # cut inside the pixel data
    return str(folder)


def src_png_file(tmp: Path) -> str:
    tmp.mkdir(parents=True)
    path = tmp / "cifar10.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(600))
    return str(path)


def src_empty_file(tmp: Path) -> str:
    tmp.mkdir(parents=True)
    path = tmp / "cifar-10-python.tar.gz"
    path.write_bytes(b"")
    return str(path)


def src_zip_not_npz(tmp: Path) -> str:
    tmp.mkdir(parents=True)
    path = tmp / "cifar10.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("README.txt", "not CIFAR-10")
    return str(path)


def src_npz_missing_arrays(tmp: Path) -> str:
    return str(npz(tmp / "cifar10.npz", x_train=A.x_train, y_train=A.y_train))


def src_pickle_runs_code(tmp: Path) -> str:
    folder = python_dir(tmp / "cifar-10-batches-py")
    evil = {b"data": RunsCommand(f"touch {_sentinel(tmp)}"), b"labels": []}
    (folder / "data_batch_1").write_bytes(py2_pickle(evil))
    return str(folder)


def src_pickle_runs_code_in_tar(tmp: Path) -> str:
    return str(tar_gz(Path(src_pickle_runs_code(tmp)), tmp / "cifar-10-python.tar.gz"))


def src_npz_object_array(tmp: Path) -> str:
    payload = np.empty(1, dtype=object)
    payload[0] = RunsCommand(f"touch {_sentinel(tmp)}")
    return str(cifar_npz(tmp / "cifar10.npz", x_train=payload))


def _tar_with(member: tarfile.TarInfo) -> Callable[[Path], str]:
    def build(tmp: Path) -> str:
        folder = python_dir(tmp / "cifar-10-batches-py")
        return str(tar_gz(folder, tmp / "cifar-10-python.tar.gz", extra=(member,)))

    return build


def src_tar_no_cifar(tmp: Path) -> str:
    folder = tmp / "photos"
    folder.mkdir(parents=True)
    (folder / "cat.txt").write_text("meow")
    return str(tar_gz(folder, tmp / "photos.tar.gz"))


def src_tar_missing_batch(tmp: Path) -> str:
    folder = python_dir(tmp / "cifar-10-batches-py", skip="data_batch_3")
    return str(tar_gz(folder, tmp / "cifar-10-python.tar.gz"))


def src_folder_without_layout(tmp: Path) -> str:
    tmp.mkdir(parents=True)
    (tmp / "notes.txt").write_text("hello")
    (tmp / "labels.csv").write_text("0,1,2")
    return str(tmp)


def src_missing_path(tmp: Path) -> str:
    return str(tmp / "no-such-cifar-10-python.tar.gz")


def src_channels_first(tmp: Path) -> str:
    return str(cifar_npz(tmp / "cifar10.npz", x_train=A.x_train.transpose(0, 3, 1, 2)))


def src_wrong_size(tmp: Path) -> str:
    return str(cifar_npz(tmp / "cifar10.npz", x_test=np.zeros((20, 28, 28, 3), np.uint8)))


def src_float_pixels(tmp: Path) -> str:
    return str(cifar_npz(tmp / "cifar10.npz", x_train=A.x_train.astype(np.float32) / 255))


def src_nan_pixels(tmp: Path) -> str:
    x = A.x_train.astype(np.float32)
    x[3, 4, 5, 1] = np.nan
    x[7, 0, 0, 0] = np.inf
    return str(cifar_npz(tmp / "cifar10.npz", x_train=x))


def src_label_too_big(tmp: Path) -> str:
    y = A.y_train.copy()
    y[5] = 10
    return str(cifar_npz(tmp / "cifar10.npz", y_train=y))


def src_label_negative(tmp: Path) -> str:
    y = A.y_test.astype(np.int64)
    y[0] = -1
    return str(cifar_npz(tmp / "cifar10.npz", y_test=y))


def src_float_labels(tmp: Path) -> str:
    return str(cifar_npz(tmp / "cifar10.npz", y_train=A.y_train.astype(np.float32)))


def src_label_count(tmp: Path) -> str:
    return str(cifar_npz(tmp / "cifar10.npz", y_train=A.y_train[:-1]))


def src_train_missing_class(tmp: Path) -> str:
    keep = A.y_train != 7
    return str(cifar_npz(tmp / "cifar10.npz", x_train=A.x_train[keep], y_train=A.y_train[keep]))


def src_test_missing_class(tmp: Path) -> str:
    keep = A.y_test != 3
    return str(cifar_npz(tmp / "cifar10.npz", x_test=A.x_test[keep], y_test=A.y_test[keep]))


def src_class_with_one_image(tmp: Path) -> str:
    # class 5 has a single training image: the train/validation split cannot hold it twice
    drop = np.flatnonzero(A.y_train == 5)[1:]
    keep = np.setdiff1d(np.arange(len(A.y_train)), drop)
    return str(cifar_npz(tmp / "cifar10.npz", x_train=A.x_train[keep], y_train=A.y_train[keep]))


def src_empty_test_set(tmp: Path) -> str:
    return str(
        cifar_npz(
            tmp / "cifar10.npz",
            x_test=np.zeros((0, 32, 32, 3), np.uint8),
            y_test=np.zeros((0,), np.uint8),
        )
    )


DATA_CASES = [
    pytest.param(
        src_truncated_tar,
        DataError,
        ("{source}", "EOFError", "it is truncated, corrupt or not a tar archive"),
        id="truncated-tar-gz",
    ),
    pytest.param(
        _damaged_tar(lambda size: 20),
        DataError,
        ("{source}", "cannot be read (ReadError", "zlib error"),
        id="corrupt-tar-gz-stream",
    ),
    pytest.param(
        _damaged_tar(lambda size: 5000),
        DataError,
        ("{source}", "CRC check failed"),
        id="corrupt-tar-gz-pixels",
    ),
    pytest.param(
        _damaged_tar(lambda size: size - 8),
        DataError,
        ("{source}", "CRC check failed"),
        id="corrupt-tar-gz-checksum",
    ),
    pytest.param(
        src_corrupt_tar_header,
        DataError,
        ("{source}", "CRC check failed", "it is truncated, corrupt"),
        id="corrupt-tar-gz-header",
    ),
    pytest.param(
        src_truncated_binary,
        DataError,
        ("data_batch_3.bin", "not a whole number of 3073-byte records"),
        id="truncated-binary-batch",
    ),
    pytest.param(
        src_corrupt_pickle,
        DataError,
        ("data_batch_2", "not a readable CIFAR-10 python batch"),
        id="corrupt-pickle-batch",
    ),
    pytest.param(
        src_png_file, DataError, ("{source}", "not in a recognised format"), id="png-file"
    ),
    pytest.param(src_empty_file, DataError, ("{source}", "is empty (0 bytes)"), id="empty-file"),
    pytest.param(
        src_zip_not_npz, DataError, ("{source}", "missing array(s) x_train"), id="zip-not-npz"
    ),
    pytest.param(
        src_npz_missing_arrays,
        DataError,
        ("{source}", "missing array(s) x_test, y_test"),
        id="npz-missing-arrays",
    ),
    pytest.param(
        src_pickle_runs_code,
        DataError,
        ("data_batch_1", "system; refusing to run code"),
        id="pickle-that-runs-code",
    ),
    pytest.param(
        src_pickle_runs_code_in_tar,
        DataError,
        ("{source}", "refusing to run code"),
        id="pickle-that-runs-code-in-tar",
    ),
    pytest.param(
        src_npz_object_array,
        DataError,
        ("{source}", "Object arrays cannot be loaded"),
        id="npz-with-pickled-object-array",
    ),
    pytest.param(
        _tar_with(_member("../evil")),
        DataError,
        ("'../evil'", "would land outside the target folder"),
        id="tar-member-dotdot",
    ),
    pytest.param(
        _tar_with(_member("/tmp/kd-evil")),
        DataError,
        ("'/tmp/kd-evil'", "would land outside the target folder"),
        id="tar-member-absolute",
    ),
    pytest.param(
        _tar_with(_member("cifar-10-batches-py/x", tarfile.SYMTYPE, "../../etc/passwd")),
        DataError,
        ("'../../etc/passwd'", "points outside the target folder"),
        id="tar-symlink-outside",
    ),
    pytest.param(
        _tar_with(_member("cifar-10-batches-py/z", tarfile.LNKTYPE, "../outside")),
        DataError,
        ("'../outside'", "points outside the target folder"),
        id="tar-hardlink-outside",
    ),
    pytest.param(
        src_tar_no_cifar,
        DataError,
        ("{source}", "holds none of the CIFAR-10 batch files"),
        id="tar-without-cifar",
    ),
    pytest.param(
        src_tar_missing_batch,
        DataError,
        ("{source}", "missing data_batch_3"),
        id="tar-missing-a-batch",
    ),
    pytest.param(
        src_folder_without_layout,
        DataError,
        ("{source}", "no CIFAR-10 layout found"),
        id="folder-without-layout",
    ),
    pytest.param(src_missing_path, DataError, ("{source}", "not found"), id="missing-path"),
    pytest.param(
        src_channels_first,
        DataError,
        ("images have shape (100, 3, 32, 32)", "channels-first"),
        id="image-shape-channels-first",
    ),
    pytest.param(
        src_wrong_size,
        DataError,
        ("images have shape (20, 28, 28, 3)", "(test set)"),
        id="image-shape-28x28",
    ),
    pytest.param(
        src_float_pixels,
        DataError,
        ("images have dtype float32, expected uint8",),
        id="image-dtype-float32",
    ),
    pytest.param(
        src_nan_pixels, DataError, ("non-finite pixel values (2 NaN/inf",), id="non-finite-pixels"
    ),
    pytest.param(
        src_label_too_big, DataError, ("labels out of range 0..9 (found 10",), id="label-10"
    ),
    pytest.param(
        src_label_negative,
        DataError,
        ("(test set)", "labels out of range 0..9 (found -1"),
        id="label-negative",
    ),
    pytest.param(
        src_float_labels, DataError, ("labels have dtype float32",), id="labels-not-integers"
    ),
    pytest.param(
        src_label_count, DataError, ("100 images but 99 labels",), id="label-count-mismatch"
    ),
    pytest.param(
        src_train_missing_class,
        DataError,
        ("training set", "no image of class 7 (horse)"),
        id="class-missing-from-training-set",
    ),
    pytest.param(
        src_test_missing_class,
        DataError,
        ("split 'test'", "no image of class 3 (cat)"),
        id="class-missing-from-test-split",
    ),
    pytest.param(
        src_class_with_one_image,
        DataError,
        ("split 'validation'", "no image of class 5 (dog)"),
        id="class-missing-from-validation-split",
    ),
    pytest.param(
        src_empty_test_set, DataError, ("(test set)", "no images (N=0)"), id="empty-test-set"
    ),
]


@pytest.mark.parametrize(("build", "error", "names"), DATA_CASES)
def test_bad_data_source(
    build: Callable[[Path], str],
    error: type[KDError],
    names: tuple[str, ...],
    tmp_path: Path,
    outputs: Outputs,
) -> None:
    source = build(tmp_path / "src")
    with pytest.raises(error) as err:
        stages.split_data(SplitConfig(source=source), *outputs.split_paths)
    assert_clear(err.value, *(n.format(source=source) for n in names))
    outputs.assert_untouched()
    assert not _sentinel(tmp_path / "src").exists(), "a data file ran code"
    assert not Path("/tmp/kd-evil").exists()


# --- gs:// sources ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("uri", "names"),
    [
        pytest.param(
            "gs://kd-test/cifar/cifar-10-python.tar.gz",
            ("no object at gs://kd-test/cifar/cifar-10-python.tar.gz",),
            id="missing-object",
        ),
        pytest.param(
            "gs://kd-no-such-bucket/cifar-10-python.tar.gz",
            ("cannot read gs://kd-no-such-bucket/cifar-10-python.tar.gz",),
            id="missing-bucket",
        ),
        pytest.param("gs://", ("'gs://' has no bucket",), id="uri-without-bucket"),
    ],
)
def test_bad_gcs_source(
    uri: str, names: tuple[str, ...], gcs_emulator: Any, outputs: Outputs
) -> None:
    with pytest.raises(DataError) as err:
        stages.split_data(SplitConfig(source=uri), *outputs.split_paths)
    assert_clear(err.value, *names)
    outputs.assert_untouched()


def test_gcs_source_without_credentials(
    outputs: Outputs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "no-such-key.json"))
    with pytest.raises(DataError) as err:
        stages.split_data(SplitConfig(source="gs://kd-test/cifar.npz"), *outputs.split_paths)
    assert_clear(err.value, "cannot open Google Cloud Storage", "no-such-key.json")
    outputs.assert_untouched()


# ----------------------------------------------------------------------------------------------
# Hyper-parameters: each invalid value, refused when the component builds its config
# ----------------------------------------------------------------------------------------------


def _art(cls_name: str, path: Path, metadata: dict | None = None) -> Any:
    from kfp import dsl

    return getattr(dsl, cls_name)(uri=str(path), metadata=dict(metadata or {}))


def _train_args(**override: Any) -> dict[str, Any]:
    values = {k: v for k, v in defaults(StudentConfig).items()}
    values.update(override)
    return values


def call_data_split(o: Outputs, **override: Any) -> None:
    from components.data_split import data_split

    kwargs = dict(source="sample", val_fraction=0.2, split_seed=0)
    kwargs.update(train_per_class=0, test_per_class=0)
    kwargs.update(override)
    train, val, test = (Path(p) for p in o.split_paths)
    data_split.python_func(
        **kwargs,
        train=_art("Dataset", train),
        validation=_art("Dataset", val),
        test=_art("Dataset", test),
    )


def call_train_teacher(o: Outputs, **override: Any) -> None:
    from components.train_teacher import train_teacher

    missing = o.root.parent / "never-read"
    train_teacher.python_func(
        train=_art("Dataset", missing / "train"),
        validation=_art("Dataset", missing / "validation"),
        **_train_args(**override),
        model=_art("Model", o.root / "model"),
        metrics=_art("Metrics", o.root / "metrics"),
    )


def call_train_scratch(o: Outputs, **override: Any) -> None:
    from components.train_student_scratch import train_student_scratch

    missing = o.root.parent / "never-read"
    own = override.pop("scratch_learning_rate", 0.0)
    train_student_scratch.python_func(
        train=_art("Dataset", missing / "train"),
        validation=_art("Dataset", missing / "validation"),
        **_train_args(**override),
        scratch_learning_rate=own,
        model=_art("Model", o.root / "model"),
        metrics=_art("Metrics", o.root / "metrics"),
    )


# The distillation loss's parameters at DistillConfig's defaults (kd_loss and its weights).
LOSS_DEFAULTS = loss_defaults()


def call_distill(o: Outputs, **override: Any) -> None:
    from components.distill_student import distill_student

    missing = o.root.parent / "never-read"
    kd_values = {
        "temperature": 5.0,
        "alpha": 0.1,
        "teacher_views": 0,
        "teacher_mixup_views": 0,
        **LOSS_DEFAULTS,
    }
    kd_values.update({k: override.pop(k) for k in list(override) if k in kd_values})
    distill_student.python_func(
        teacher=_art("Model", missing / "teacher"),
        train=_art("Dataset", missing / "train"),
        validation=_art("Dataset", missing / "validation"),
        **_train_args(**override),
        **kd_values,
        model=_art("Model", o.root / "model"),
        metrics=_art("Metrics", o.root / "metrics"),
    )


def call_evaluate(o: Outputs, **override: Any) -> None:
    from components.evaluate import evaluate

    missing = o.root.parent / "never-read"
    kwargs = dict(
        min_kd_gain=0.0, min_accuracy=0.0, refuse_collapsed=True, batch_size=256, latency_runs=5
    )
    kwargs.update(override)
    evaluate.python_func(
        teacher=_art("Model", missing / "teacher"),
        student_distilled=_art("Model", missing / "distilled"),
        student_scratch=_art("Model", missing / "scratch"),
        test=_art("Dataset", missing / "test"),
        validation=_art("Dataset", missing / "validation"),
        **kwargs,
        metrics=_art("Metrics", o.root / "metrics"),
        teacher_confusion=_art("ClassificationMetrics", o.root / "tc"),
        distilled_confusion=_art("ClassificationMetrics", o.root / "dc"),
        scratch_confusion=_art("ClassificationMetrics", o.root / "sc"),
        report=_art("HTML", o.root / "report"),
        summary=_art("Markdown", o.root / "summary"),
        report_files=_art("Artifact", o.root / "report_files"),
    )


def call_eval_config(o: Outputs, **override: Any) -> None:
    EvalConfig(**override)


def _hp(call: Callable[..., None], field: str, value: Any, case_id: str) -> Any:
    return pytest.param(call, field, value, id=case_id)


HYPERPARAMETER_CASES = [
    _hp(call_data_split, "source", "  ", "source-blank"),
    _hp(call_data_split, "val_fraction", 0.0, "val_fraction-0"),
    _hp(call_data_split, "val_fraction", 1.0, "val_fraction-1"),
    _hp(call_data_split, "split_seed", -1, "split_seed-negative"),
    _hp(call_data_split, "train_per_class", -5, "train_per_class-negative"),
    _hp(call_data_split, "test_per_class", 2.5, "test_per_class-fractional"),
    _hp(call_train_teacher, "preset", "vgg16", "preset-unknown"),
    _hp(call_train_teacher, "epochs", 0, "epochs-0"),
    _hp(call_train_teacher, "batch_size", 0, "batch_size-0"),
    _hp(call_train_teacher, "optimizer", "rmsprop", "optimizer-unknown"),
    _hp(call_train_teacher, "learning_rate", 0.0, "learning_rate-0"),
    _hp(call_train_teacher, "learning_rate", float("nan"), "learning_rate-nan"),
    _hp(call_train_teacher, "learning_rate", 50.0, "learning_rate-too-large"),
    _hp(call_train_teacher, "momentum", 1.0, "momentum-1"),
    _hp(call_train_teacher, "weight_decay", -1e-4, "weight_decay-negative"),
    _hp(call_train_teacher, "schedule", "step", "schedule-unknown"),
    _hp(call_train_teacher, "warmup_epochs", -1, "warmup_epochs-negative"),
    _hp(call_train_teacher, "clipnorm", -1.0, "clipnorm-negative"),
    _hp(call_train_teacher, "label_smoothing", 1.0, "label_smoothing-1"),
    _hp(call_train_teacher, "augment", "yes", "augment-not-bool"),
    _hp(call_train_teacher, "mixed_precision", 1, "mixed_precision-not-bool"),
    _hp(call_train_teacher, "early_stopping_patience", -1, "early_stopping_patience-negative"),
    _hp(call_train_teacher, "divergence_check_epoch", -1, "divergence_check_epoch-negative"),
    _hp(call_train_teacher, "seed", -1, "seed-negative"),
    _hp(call_train_scratch, "epochs", True, "scratch-epochs-bool"),
    _hp(call_train_scratch, "batch_size", 12.5, "scratch-batch_size-fractional"),
    _hp(call_train_scratch, "scratch_learning_rate", -0.01, "scratch_learning_rate-negative"),
    _hp(call_distill, "temperature", 0.0, "temperature-0"),
    _hp(call_distill, "temperature", -2.0, "temperature-negative"),
    _hp(call_distill, "temperature", float("inf"), "temperature-inf"),
    _hp(call_distill, "alpha", 1.5, "alpha-above-1"),
    _hp(call_distill, "alpha", -0.1, "alpha-negative"),
    _hp(call_distill, "teacher_views", -1, "teacher_views-negative"),
    _hp(call_distill, "teacher_views", 65, "teacher_views-too-many"),
    _hp(call_distill, "teacher_mixup_views", -1, "teacher_mixup_views-negative"),
    _hp(call_distill, "teacher_mixup_views", 2, "teacher_mixup_views-without-cache"),
    _hp(call_distill, "kd_loss", "kl", "kd_loss-unknown"),
    _hp(call_distill, "dkd_beta", -1.0, "dkd_beta-negative"),
    _hp(call_distill, "dist_gamma", float("nan"), "dist_gamma-nan"),
    _hp(call_evaluate, "batch_size", 0, "eval-batch_size-0"),
    _hp(call_evaluate, "latency_runs", 0, "latency_runs-0"),
    _hp(call_evaluate, "min_kd_gain", 500.0, "min_kd_gain-out-of-range"),
    _hp(call_evaluate, "min_accuracy", 1.5, "min_accuracy-above-1"),
    _hp(call_eval_config, "ece_bins", 0, "ece_bins-0"),
    _hp(call_eval_config, "collapse_threshold", 0.0, "collapse_threshold-0"),
]

# the config field each component parameter lands in
_FIELD = {"split_seed": "seed"}


@pytest.mark.parametrize(("call", "param", "value"), HYPERPARAMETER_CASES)
def test_invalid_hyperparameter(
    call: Callable[..., None],
    param: str,
    value: Any,
    outputs: Outputs,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import kd.data
    import kd.model_folder

    def must_not_run(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("data was loaded or training started despite a bad config")

    for mod, name in ((kd.data, "load_cifar10"), (kd.data, "load_dataset")):
        monkeypatch.setattr(mod, name, must_not_run)
    monkeypatch.setattr(kd.model_folder, "load_model", must_not_run)
    with pytest.raises(ConfigError) as err:
        call(outputs, **{param: value})
    assert_clear(err.value, f"invalid {_FIELD.get(param, param)}=")
    outputs.assert_untouched()


# ----------------------------------------------------------------------------------------------
# Dataset artifacts handed to a component
# ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def datasets(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Good train/validation/test Dataset files and their metadata (as data_split writes)."""
    root = tmp_path_factory.mktemp("datasets")
    out: dict[str, Any] = {}
    for name, x, y in (
        ("train", A.x_train[:60], A.y_train[:60]),
        ("validation", A.x_train[60:], A.y_train[60:]),
        ("test", A.x_test, A.y_test),
    ):
        path = root / name
        out[name] = (path, save_dataset(path, x, y))
    return out


def _bad_dataset(kind: str, tmp: Path, datasets: dict[str, Any]) -> tuple[Path, dict]:
    """(Dataset path, its metadata) of one kind of bad Dataset artifact."""
    path, meta = datasets["train"]
    tmp.mkdir(parents=True, exist_ok=True)
    if kind == "sha256-mismatch":
        return path, {**meta, "sha256": "0" * 64}
    if kind == "no-sha256":
        return path, {k: v for k, v in meta.items() if k != "sha256"}
    if kind == "missing-file":
        return tmp / "gone", meta
    if kind == "not-npz":
        (tmp / "train").write_text("x,y\n1,2\n")
        return tmp / "train", meta
    if kind == "pickled-object-array":
        payload = np.empty(1, dtype=object)
        payload[0] = RunsCommand(f"touch {tmp.parent / 'SENTINEL'}")
        return npz(tmp / "train", x=payload, y=np.zeros(1, np.uint8)), meta
    x, y = {
        "empty": (np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0, np.uint8)),
        "wrong-shape": (A.x_train[:60, :, :, 0], A.y_train[:60]),
        "labels-out-of-range": (A.x_train[:60], np.full(60, 12, np.uint8)),
    }[kind]
    return npz(tmp / "train", x=x, y=y), {**meta, "sha256": content_sha256(x, y)}


DATASET_CASES = [
    pytest.param("sha256-mismatch", ArtifactError, ("differs from the expected",), id="sha256"),
    pytest.param("no-sha256", ArtifactError, ("has no sha256",), id="no-sha256"),
    pytest.param("missing-file", DataError, ("does not exist",), id="missing-file"),
    pytest.param("not-npz", DataError, ("not a readable .npz",), id="not-npz"),
    pytest.param(
        "pickled-object-array",
        DataError,
        ("Object arrays cannot be loaded",),
        id="pickled-object-array",
    ),
    pytest.param("empty", DataError, ("no images (N=0)",), id="empty-split"),
    pytest.param("wrong-shape", DataError, ("images have shape (60, 32, 32)",), id="wrong-shape"),
    pytest.param(
        "labels-out-of-range",
        DataError,
        ("labels out of range 0..9 (found 12",),
        id="labels-out-of-range",
    ),
]


@pytest.mark.parametrize(("kind", "error", "names"), DATASET_CASES)
def test_bad_dataset_artifact(
    kind: str,
    error: type[KDError],
    names: tuple[str, ...],
    datasets: dict[str, Any],
    tmp_path: Path,
    outputs: Outputs,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """train_teacher's component gets a bad train Dataset: refused before training starts."""
    import kd.train
    from components.train_teacher import train_teacher

    def must_not_run(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("training started on a bad Dataset")

    monkeypatch.setattr(kd.train, "train_supervised", must_not_run)
    path, meta = _bad_dataset(kind, tmp_path / "bad", datasets)
    val_path, val_meta = datasets["validation"]
    with pytest.raises(error) as err:
        train_teacher.python_func(
            train=_art("Dataset", path, meta),
            validation=_art("Dataset", val_path, val_meta),
            **_train_args(epochs=1),
            model=_art("Model", outputs.root / "model"),
            metrics=_art("Metrics", outputs.root / "metrics"),
        )
    assert_clear(err.value, str(path), *names)
    outputs.assert_untouched()
    assert not (tmp_path / "SENTINEL").exists(), "a Dataset file ran code"


def test_export_refuses_test_dataset_with_wrong_sha256(
    datasets: dict[str, Any], tmp_path: Path, outputs: Outputs
) -> None:
    """export_model's component: the test Dataset is checked before the model is touched."""
    from components.export_model import export_model

    path, meta = datasets["test"]
    with pytest.raises(ArtifactError) as err:
        export_model.python_func(
            student=_art("Model", tmp_path / "never-read"),
            train=_art("Dataset", datasets["train"][0], datasets["train"][1]),
            test=_art("Dataset", path, {**meta, "sha256": "f" * 64}),
            check_images=4,
            calibration_images=4,
            blessed=_art("Model", outputs.root / "blessed"),
            edge=_art("Model", outputs.root / "edge"),
            edge_metrics=_art("Metrics", outputs.root / "edge_metrics"),
        )
    assert_clear(err.value, str(path), "differs from the expected")
    outputs.assert_untouched()


# ----------------------------------------------------------------------------------------------
# Model artifacts
# ----------------------------------------------------------------------------------------------


def _save_tiny_model(folder: Path, *, shape: tuple = (32, 32, 3), classes: int = 10) -> Path:
    import keras

    inp = keras.Input(shape)
    out = keras.layers.Dense(classes)(keras.layers.GlobalAveragePooling2D()(inp))
    folder.mkdir(parents=True, exist_ok=True)
    keras.Model(inp, out).save(folder / "model.keras")
    return folder


def _model_folder(kind: str, tmp: Path) -> Path:
    folder = tmp / kind
    folder.mkdir(parents=True)
    if kind == "text-file":
        (folder / "model.keras").write_text("this is not a model")
    elif kind == "zip-not-keras":
        with zipfile.ZipFile(folder / "model.keras", "w") as zf:
            zf.writestr("weights.txt", "0 1 2")
    elif kind == "lambda-layer":
        import keras

        inp = keras.Input((32, 32, 3))
        out = keras.layers.Lambda(lambda t: keras.ops.mean(t, axis=(1, 2)))(inp)
        keras.Model(inp, keras.layers.Dense(10)(out)).save(folder / "model.keras")
    elif kind == "five-classes":
        _save_tiny_model(folder, classes=5)
    elif kind == "input-64x64":
        _save_tiny_model(folder, shape=(64, 64, 3))
    return folder


MODEL_CASES = [
    pytest.param("text-file", ("not a loadable Keras model",), id="text-file"),
    pytest.param("zip-not-keras", ("not a loadable Keras model",), id="zip-not-keras"),
    pytest.param("lambda-layer", ("Lambda", "arbitrary code"), id="lambda-layer-runs-code"),
    pytest.param("empty", ("no model at",), id="folder-without-model"),
    pytest.param(
        "five-classes",
        ("teacher predicts 5 classes but the student predicts 10",),
        id="teacher-other-number-of-classes",
    ),
    pytest.param(
        "input-64x64",
        ("teacher takes inputs of shape (64, 64, 3) but the student takes (32, 32, 3)",),
        id="teacher-other-input-shape",
    ),
]


@pytest.mark.parametrize(("kind", "names"), MODEL_CASES)
def test_bad_teacher_model(
    kind: str,
    names: tuple[str, ...],
    datasets: dict[str, Any],
    tmp_path: Path,
    outputs: Outputs,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """distill_student's component gets a bad teacher Model: refused before training starts."""
    import kd.distill
    from components.distill_student import distill_student

    def must_not_train(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("training started with a bad teacher")

    monkeypatch.setattr(kd.distill, "fit", must_not_train)
    teacher = _model_folder(kind, tmp_path / "models")
    (tr, tr_meta), (va, va_meta) = datasets["train"], datasets["validation"]
    with pytest.raises(ArtifactError) as err:
        distill_student.python_func(
            teacher=_art("Model", teacher),
            train=_art("Dataset", tr, tr_meta),
            validation=_art("Dataset", va, va_meta),
            **_train_args(epochs=1),
            temperature=5.0,
            alpha=0.1,
            teacher_views=0,
            teacher_mixup_views=0,
            **LOSS_DEFAULTS,
            model=_art("Model", outputs.root / "model"),
            metrics=_art("Metrics", outputs.root / "metrics"),
        )
    assert_clear(err.value, *names)
    outputs.assert_untouched()


def test_evaluate_refuses_a_model_artifact_that_is_not_a_model(
    datasets: dict[str, Any], tmp_path: Path, outputs: Outputs
) -> None:
    """evaluate's component: every model is loaded (and checked) before any evaluation."""
    from components.evaluate import evaluate

    good = _save_tiny_model(tmp_path / "good")
    bad = _model_folder("text-file", tmp_path / "models")
    path, meta = datasets["test"]
    with pytest.raises(ArtifactError) as err:
        evaluate.python_func(
            teacher=_art("Model", good),
            student_distilled=_art("Model", good),
            student_scratch=_art("Model", bad),
            test=_art("Dataset", path, meta),
            validation=_art("Dataset", *datasets["validation"]),
            min_kd_gain=0.0,
            min_accuracy=0.0,
            refuse_collapsed=True,
            batch_size=64,
            latency_runs=2,
            metrics=_art("Metrics", outputs.root / "metrics"),
            teacher_confusion=_art("ClassificationMetrics", outputs.root / "tc"),
            distilled_confusion=_art("ClassificationMetrics", outputs.root / "dc"),
            scratch_confusion=_art("ClassificationMetrics", outputs.root / "sc"),
            report=_art("HTML", outputs.root / "report"),
            summary=_art("Markdown", outputs.root / "summary"),
            report_files=_art("Artifact", outputs.root / "report_files"),
        )
    assert_clear(err.value, str(bad / "model.keras"), "not a loadable Keras model")
    outputs.assert_untouched()


def test_training_refuses_an_empty_split(outputs: Outputs) -> None:
    from kd.train import train_teacher

    x, y = A.x_train, A.y_train
    with pytest.raises(ArtifactError) as err:
        train_teacher((x[:0], y[:0]), (x, y), TeacherConfig(epochs=1), outputs.root / "teacher")
    assert_clear(err.value, "the train split is empty")
    outputs.assert_untouched()


# ----------------------------------------------------------------------------------------------
# Output locations: disk full, unwritable
# ----------------------------------------------------------------------------------------------


def _enospc(*args: Any, **kwargs: Any) -> None:
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _tiny_keras_model() -> Any:
    import keras

    inp = keras.Input((32, 32, 3))
    return keras.Model(inp, keras.layers.Dense(10)(keras.layers.Flatten()(inp)))


def test_disk_full_while_saving_a_model(outputs: Outputs, monkeypatch: pytest.MonkeyPatch) -> None:
    """Keras writes part of the file, then the disk is full: no model.keras, no temp file."""
    import keras

    from kd.model_folder import save_outputs

    def half_save(self: Any, filepath: str, *args: Any, **kwargs: Any) -> None:
        Path(filepath).write_bytes(b"PK\x03\x04 half a model")
        _enospc()

    model = _tiny_keras_model()
    monkeypatch.setattr(keras.Model, "save", half_save)
    with pytest.raises(ArtifactError) as err:
        save_outputs(model, outputs.root, {"loss": [1.0]}, {"role": "teacher"})
    assert_clear(err.value, "model.keras", "No space left on device")
    assert not (outputs.root / "model.keras").exists()
    outputs.assert_untouched()


def test_disk_full_inside_the_keras_writer_keeps_the_previous_model(
    outputs: Outputs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real Keras save runs and its zip writer hits ENOSPC; the previous model stays."""
    from kd.model_folder import save_outputs

    outputs.add_previous("model.keras")
    real_writestr = zipfile.ZipFile.writestr

    def writestr_then_full(self: zipfile.ZipFile, *args: Any, **kwargs: Any) -> None:
        real_writestr(self, *args, **kwargs)
        _enospc()

    model = _tiny_keras_model()
    monkeypatch.setattr(zipfile.ZipFile, "writestr", writestr_then_full)
    with pytest.raises(ArtifactError) as err:
        save_outputs(model, outputs.root, {"loss": [1.0]}, {"role": "teacher"})
    assert_clear(err.value, "model.keras", "No space left on device")
    outputs.assert_untouched()
    assert (outputs.root / "model.keras").read_bytes() == PREVIOUS


def test_disk_full_while_writing_the_datasets(
    tmp_path: Path, outputs: Outputs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills while the third Dataset is written: none of the three appears."""
    source = cifar_npz(tmp_path / "src" / "cifar10.npz")
    real_save = np.save
    calls = {"n": 0}

    def save_until_full(*args: Any, **kwargs: Any) -> None:
        calls["n"] += 1
        if calls["n"] > 8:  # two Dataset files (4 arrays each) fit, the third does not
            _enospc()
        real_save(*args, **kwargs)

    monkeypatch.setattr(np, "save", save_until_full)
    with pytest.raises(ArtifactError) as err:
        stages.split_data(SplitConfig(source=str(source)), *outputs.split_paths)
    assert_clear(err.value, str(outputs.root), "No space left on device")
    assert calls["n"] == 9
    outputs.assert_untouched()


def test_output_location_under_a_regular_file(tmp_path: Path, outputs: Outputs) -> None:
    """The test Dataset would go under a file: refused before the other two are written."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file")
    train, val, _ = outputs.split_paths
    with pytest.raises(ArtifactError) as err:
        stages.split_data(SplitConfig(source="sample"), train, val, str(blocker / "test.npz"))
    assert_clear(err.value, str(blocker), "cannot create output folder")
    outputs.assert_untouched()
    assert blocker.read_text() == "a file"


def test_read_only_output_folder(
    tmp_path: Path, outputs: Outputs, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A folder without write permission (chmod 0o500). Root ignores permission bits, so
    os.access is made to answer as it would for an ordinary user."""
    import kd.storage

    read_only = tmp_path / "read-only"
    read_only.mkdir()
    read_only.chmod(0o500)
    real_access = os.access

    def access(path: Any, mode: int, *args: Any, **kwargs: Any) -> bool:
        if Path(path) == read_only and mode & os.W_OK:
            return False
        return real_access(path, mode, *args, **kwargs)

    monkeypatch.setattr(kd.storage.os, "access", access)
    train, val, _ = outputs.split_paths
    try:
        with pytest.raises(ArtifactError) as err:
            stages.split_data(SplitConfig(source="sample"), train, val, str(read_only / "test"))
    finally:
        read_only.chmod(0o700)
    assert_clear(err.value, str(read_only), "is not writable")
    assert list(read_only.iterdir()) == []
    outputs.assert_untouched()


def test_training_output_under_a_regular_file(
    datasets: dict[str, Any], tmp_path: Path, outputs: Outputs
) -> None:
    """A training stage whose model folder would go under a file: refused before training."""
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file")
    (tr, tr_meta), (va, va_meta) = datasets["train"], datasets["validation"]
    with pytest.raises(ArtifactError) as err:
        stages.train_student_scratch(
            (str(tr), tr_meta["sha256"]),
            (str(va), va_meta["sha256"]),
            StudentConfig(epochs=1),
            str(blocker / "model"),
        )
    assert_clear(err.value, str(blocker), "cannot create the output folder")
    assert blocker.read_text() == "a file"
    outputs.assert_untouched()


# ----------------------------------------------------------------------------------------------
# Command line: python -m local_runner run
# ----------------------------------------------------------------------------------------------


def _env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KFP_", "KF_PIPELINES"))}
    env.pop("STORAGE_EMULATOR_HOST", None)
    env.update(HOME=str(tmp_path / "home"), PYTHONPATH=str(REPO), TF_CPP_MIN_LOG_LEVEL="3")
    env.update(extra)
    return env


def run_cli(args: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args],
        cwd=REPO,
        env=_env(tmp_path, **env),
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )


def assert_one_error_line(proc: subprocess.CompletedProcess[str], rc: int, *names: str) -> str:
    assert proc.returncode == rc, (proc.returncode, proc.stdout, proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one line on stderr, got: {proc.stderr}"
    assert lines[0].startswith("error: "), lines[0]
    return assert_clear(lines[0], *names)


CLI_CASES = [
    pytest.param(
        ["--param", "temperature=0"], ("invalid temperature=0", "must be"), id="temperature-0"
    ),
    pytest.param(
        ["--param", "alpha=2"], ("invalid alpha=2", "must be in [0.0, 1.0]"), id="alpha-2"
    ),
    pytest.param(
        ["--param", "student_augment=false", "--param", "teacher_views=4"],
        ("invalid teacher_views=4", "augment=False"),
        id="teacher-views-without-augment",
    ),
    pytest.param(
        ["--param", "kd_loss=dist", "--param", "logit_standardization=true"],
        ("invalid logit_standardization=True", "must be false with kd_loss=dist"),
        id="logit-standardization-with-dist",
    ),
    pytest.param(
        ["--param", "kd_loss=dkd", "--param", "dkd_alpha=0", "--param", "dkd_beta=0"],
        ("invalid dkd_beta=0.0", "both 0"),
        id="dkd-without-weights",
    ),
    pytest.param(
        ["--param", "student_devices=-1"],
        ("invalid devices=-1", "must be an integer >= 0"),
        id="negative-devices",
    ),
    pytest.param(
        ["--param", "student_devices=3"],
        ("invalid batch_size=32", "must be a multiple of devices=3"),
        id="batch-not-divisible-by-devices",
    ),
    pytest.param(
        ["--param", "feature_weight=0.5"],
        ("invalid teacher_feature_layer=''", "must name a layer with feature_weight=0.5"),
        id="feature-weight-without-layers",
    ),
    pytest.param(
        ["--param", "feature_weight=0.5", "--param", "teacher_feature_layer=b2_pool"]
        + ["--param", "student_feature_layer=pool2"],
        ("invalid teacher_views=2", "must be 0 with feature_weight > 0"),
        id="feature-weight-with-cached-teacher",
    ),
    pytest.param(
        ["--param", "registry_upload=true"],
        ("registry_upload=true", "Fix: submit to Vertex AI"),
        id="registry-upload-in-a-local-run",
    ),
    pytest.param(
        ["--param", "teacher_learning_rate=NaN"],
        ("learning_rate=nan", "finite"),
        id="learning-rate-nan",
    ),
    pytest.param(
        ["--param", "scratch_learning_rate=-0.01"],
        ("invalid scratch_learning_rate=-0.01", "must be in [0.0, 10.0]"),
        id="scratch-learning-rate-negative",
    ),
    pytest.param(
        ["--param", "teacher_views=4", "--param", "teacher_mixup_views=61"],
        ("invalid teacher_mixup_views=61", "must be <= 64 - teacher_views (60)"),
        id="teacher-mixup-views-too-many",
    ),
    pytest.param(["--teacher-epochs", "0"], ("invalid epochs=0",), id="teacher-epochs-0"),
    pytest.param(
        ["--param", "no_such_knob=1"],
        ("unknown pipeline parameter(s) 'no_such_knob'",),
        id="unknown-parameter",
    ),
    pytest.param(["--param", "teacher_epochs=many"], ("'many'",), id="parameter-of-the-wrong-type"),
    pytest.param(
        ["--data", "{tmp}/no-such-cifar-10-python.tar.gz"],
        ("no-such-cifar-10-python.tar.gz", "does not exist"),
        id="missing-data-path",
    ),
]


@pytest.mark.parametrize(("args", "names"), CLI_CASES)
def test_local_runner_refuses_before_any_stage(
    args: list[str], names: tuple[str, ...], tmp_path: Path
) -> None:
    root = tmp_path / "runs"
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = run_cli(
        ["-m", "local_runner", "run", "--runner", "subprocess", "--pipeline-root", str(root)]
        + args,
        tmp_path,
    )
    assert_one_error_line(proc, 2, *names)
    assert "=== stage" not in proc.stdout
    run_dirs = [p for p in root.iterdir() if p.is_dir()] if root.exists() else []
    assert run_dirs == [], f"a run folder was created: {run_dirs}"


def test_local_runner_pipeline_root_is_a_file(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    root.write_bytes(PREVIOUS)
    proc = run_cli(
        ["-m", "local_runner", "run", "--runner", "subprocess", "--pipeline-root", str(root)],
        tmp_path,
    )
    assert_one_error_line(proc, 2, str(root), "is a file")
    assert root.read_bytes() == PREVIOUS


def test_runner_error_for_a_missing_data_path_in_process(tmp_path: Path) -> None:
    from local_runner.run import check_source

    with pytest.raises(RunnerError) as err:
        check_source(str(tmp_path / "nowhere"))
    assert_clear(err.value, "nowhere", "does not exist")


# ----------------------------------------------------------------------------------------------
# Submission: python pipeline.py submit, submit.py
# ----------------------------------------------------------------------------------------------


def test_submit_to_unreachable_kfp_endpoint(tmp_path: Path) -> None:
    host = f"http://127.0.0.1:{closed_port()}"
    proc = run_cli(["pipeline.py", "submit", "--target", "kfp", "--host", host], tmp_path)
    assert_one_error_line(proc, 1, f"cannot reach KFP at {host}", "connection refused")


def test_submit_to_kfp_without_credentials(tmp_path: Path) -> None:
    with FakeKFPServer(required_token="the-right-token") as server:
        proc = run_cli(["pipeline.py", "submit", "--target", "kfp", "--host", server.url], tmp_path)
        created = server.find("POST", "/apis/v2beta1/runs")
    assert_one_error_line(proc, 1, "rejected the credentials", "401", "--token")
    assert created == [], "a run was created without credentials"


def test_submit_to_kfp_without_host(tmp_path: Path) -> None:
    proc = run_cli(["pipeline.py", "submit", "--target", "kfp"], tmp_path)
    assert_one_error_line(proc, 1, "--target kfp needs --host")


def test_submit_to_vertex_without_credentials(tmp_path: Path) -> None:
    key = tmp_path / "no-such-key.json"
    proc = run_cli(
        ["pipeline.py", "submit", "--target", "vertex", "--project", "p", "--region"]
        + ["us-central1", "--pipeline-root", "gs://kd-bucket/root"],
        tmp_path,
        GOOGLE_APPLICATION_CREDENTIALS=str(key),
        CLOUDSDK_CONFIG=str(tmp_path / "gcloud"),
    )
    assert_one_error_line(proc, 1, "no Google Cloud credentials found")


def test_submit_to_vertex_with_a_non_gcs_pipeline_root(tmp_path: Path) -> None:
    proc = run_cli(
        ["pipeline.py", "submit", "--target", "vertex", "--project", "p", "--region"]
        + ["us-central1", "--pipeline-root", str(tmp_path / "root")],
        tmp_path,
    )
    assert_one_error_line(proc, 1, "--pipeline-root must be a Cloud Storage URI")


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> str:
    import pipeline

    return str(pipeline.compile_pipeline(tmp_path_factory.mktemp("pkg") / "pipeline.yaml"))


def test_submit_to_vertex_that_rejects_the_credentials(
    package: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from google.cloud.aiplatform.utils import resource_manager_utils

    server = FakeVertexServer(reject_status=401).start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
    monkeypatch.setattr(
        resource_manager_utils, "get_project_number", lambda *a, **k: server.project_number
    )
    try:
        with pytest.raises(SubmitError) as err:
            submit.submit_vertex(
                package,
                project="p",
                region="us-central1",
                pipeline_root="gs://kd-bucket/root",
                api_endpoint=server.url,
                credentials=StaticTokenCredentials("expired-token"),
            )
        assert not server.jobs, "a job was created with rejected credentials"
    finally:
        server.stop()
    message = assert_clear(err.value, "rejected the credentials", "401 Unauthorized")
    assert "expired-token" not in message


def test_submit_a_missing_package(tmp_path: Path) -> None:
    missing = tmp_path / "pipeline.yaml"
    with pytest.raises(SubmitError) as err:
        submit.submit_kfp(str(missing), host=f"http://127.0.0.1:{closed_port()}")
    assert_clear(err.value, str(missing), "does not exist")


# ----------------------------------------------------------------------------------------------
# Teachers the user brings: check_teacher (kd.teacher), the local runner, submit
# ----------------------------------------------------------------------------------------------


def _teacher_file(kind: str, path: Path, val_labels: np.ndarray) -> Path:
    """A bad teacher of each kind at ``path`` (a .keras file, or nothing for 'missing')."""
    import keras

    if kind == "missing":
        return path
    if kind == "not-keras":
        path.write_text("this is not a model")
        return path
    shape, classes = (32, 32, 3), 10
    if kind == "input-shape":
        shape = (28, 28, 3)
    if kind == "classes":
        classes = 100
    inputs = keras.Input(shape)
    x = keras.layers.GlobalAveragePooling2D()(inputs)
    if kind == "lambda":
        x = keras.layers.Lambda(lambda t: t * 1.0)(x)
    head = keras.layers.Dense(classes, name="logits")
    model = keras.Model(inputs, head(x))
    w, b = head.get_weights()
    if kind == "at-chance":  # always the class the validation split holds least of
        b = np.zeros_like(b)
        b[int(np.argmin(np.bincount(val_labels, minlength=10)))] = 10.0
        w = np.zeros_like(w)
    if kind == "nan":
        b = np.full_like(b, np.nan)
    head.set_weights([w, b])
    model.save(str(path))
    return path


TEACHER_CASES = [
    pytest.param("missing", ("bad-teacher.keras", "no model file"), id="missing-file"),
    pytest.param("not-keras", ("bad-teacher.keras", "not a loadable Keras model"), id="not-keras"),
    pytest.param("lambda", ("bad-teacher.keras", "not a loadable Keras model"), id="lambda-layer"),
    pytest.param("input-shape", ("bad-teacher.keras", "takes inputs of shape"), id="input-shape"),
    pytest.param("classes", ("bad-teacher.keras", "(None, 100)"), id="other-number-of-classes"),
    pytest.param("nan", ("bad-teacher.keras", "non-finite logits"), id="non-finite-logits"),
    pytest.param("at-chance", ("bad-teacher.keras", "no better than chance"), id="at-chance"),
]


@pytest.mark.parametrize(("kind", "names"), TEACHER_CASES)
def test_check_teacher_refuses_a_bad_teacher(
    kind: str, names: tuple[str, ...], datasets: dict[str, Any], tmp_path: Path, outputs: Outputs
) -> None:
    """The check_teacher component (right after the import) refuses it; nothing is written."""
    from components.check_teacher import check_teacher
    from kd.data import load_dataset

    va, va_meta = datasets["validation"]
    labels = load_dataset(va)[1]
    teacher = _teacher_file(kind, tmp_path / "bad-teacher.keras", labels)
    with pytest.raises(ArtifactError) as err:
        check_teacher.python_func(
            teacher=_art("Model", teacher),
            validation=_art("Dataset", va, va_meta),
            teacher_uri=str(teacher),
            student_preset="seed",
            model=_art("Model", outputs.root / "model"),
        )
    assert_clear(err.value, *names)
    outputs.assert_untouched()


def test_local_runner_refuses_a_missing_teacher_before_any_stage(tmp_path: Path) -> None:
    root = tmp_path / "runs"
    proc = run_cli(
        ["-m", "local_runner", "run", "--runner", "subprocess", "--pipeline-root", str(root)]
        + ["--teacher", str(tmp_path / "no-such-teacher.keras")],
        tmp_path,
    )
    assert_one_error_line(proc, 2, "no-such-teacher.keras", "does not exist")
    assert "=== stage" not in proc.stdout
    assert not [p for p in root.iterdir() if p.is_dir() and p.name != "teachers"]


VERTEX = ["--target", "vertex", "--project", "p", "--region", "us-central1"]
VERTEX += ["--pipeline-root", "gs://b/root"]
REGISTRY = ["--param", "registry_upload=true", "--param", "registry_serving_image=img:1"]
SUBMIT_TEACHER_CASES = [
    pytest.param(
        ["--target", "vertex", "--project", "p", "--region", "us-central1"]
        + ["--pipeline-root", "gs://b/root", "--param", "teacher_model=shipped"],
        ("teacher_model='shipped'", "cannot be read by Vertex AI"),
        id="vertex-shipped",
    ),
    pytest.param(
        ["--target", "kfp", "--host", "http://127.0.0.1:9", "--param"]
        + ["teacher_model=/home/me/teacher.keras"],
        ("/home/me/teacher.keras", "not a URI the KFP launcher can download"),
        id="kfp-local-path",
    ),
    pytest.param(
        ["--target", "kfp", "--host", "http://127.0.0.1:9", "--param", "tempreature=4"],
        ("'tempreature'", "did you mean 'temperature'"),
        id="misspelt-parameter",
    ),
    pytest.param(
        ["--target", "kfp", "--host", "http://127.0.0.1:9", "--param", "temperature=-1"],
        ("invalid temperature=-1.0", "must be in"),
        id="bad-value",
    ),
    pytest.param(
        ["--target", "kfp", "--host", "http://127.0.0.1:9", "--param", "calibration_images=-5"],
        ("invalid calibration_images=-5", "must be"),
        id="negative-calibration-images",
    ),
    pytest.param(
        [*VERTEX, "--param", "registry_upload=true"],
        ("invalid registry_serving_image=''", "must name a serving container image"),
        id="registry-upload-without-serving-image",
    ),
    pytest.param(
        [*VERTEX, *REGISTRY, "--param", "registry_parent_model=kd-student"],
        ("invalid registry_parent_model='kd-student'", "must be a model resource name"),
        id="registry-parent-model-not-a-resource-name",
    ),
    pytest.param(  # --region us-central1 is the registry's region unless told otherwise
        [*VERTEX, *REGISTRY, "--param"]
        + ["registry_parent_model=projects/p/locations/europe-west4/models/5"],
        ("invalid registry_parent_model", "must be in registry_location 'us-central1'"),
        id="registry-parent-model-in-another-region",
    ),
    pytest.param(
        [
            *VERTEX,
            "--param",
            "registry_deploy_endpoint=projects/p/locations/us-central1/endpoints/1",
        ],
        ("invalid registry_deploy_endpoint", "must be empty unless registry_upload=true"),
        id="registry-deploy-without-upload",
    ),
    pytest.param(
        [*VERTEX, *REGISTRY, "--param", "registry_accelerator_count=1"],
        ("invalid registry_accelerator_count=1", "registry_accelerator_type is set"),
        id="registry-accelerator-count-without-type",
    ),
    pytest.param(
        [*VERTEX, *REGISTRY, "--param", "registry_accelerator_type=T4"],
        ("invalid registry_accelerator_type='T4'", "NVIDIA_TESLA_T4"),
        id="registry-unknown-accelerator",
    ),
    pytest.param(
        [*VERTEX, *REGISTRY, "--param", "registry_min_replicas=3", "--param"]
        + ["registry_max_replicas=2"],
        ("invalid registry_max_replicas=2", "must be >= registry_min_replicas (3)"),
        id="registry-max-replicas-below-min",
    ),
    pytest.param(
        [*VERTEX, *REGISTRY, "--param", "registry_version_aliases=Blessed"],
        ("alias 'Blessed'", "must be lower-case letters"),
        id="registry-bad-alias",
    ),
    pytest.param(
        ["--target", "kfp", "--host", "http://127.0.0.1:9", "--param", "registry_upload=true"],
        ("registry_upload=true", "Fix: submit to Vertex AI"),
        id="registry-upload-on-kfp",
    ),
    pytest.param(
        ["--target", "kfp", "--host", "http://127.0.0.1:9", "--replicas", "2"],
        ("invalid replicas=2", "needs --target vertex", "--gpus N"),
        id="replicas-on-kfp",
    ),
    pytest.param(
        [*VERTEX, "--replicas", "2", "--gpus", "3", "--accelerator", "A100"],
        ("no default machine type for 3 x NVIDIA_TESLA_A100", "Fix:", "--machine-type"),
        id="replicas-without-a-machine-type",
    ),
    pytest.param(
        [*VERTEX, "--replicas", "3", "--gpus", "1"],
        ("invalid teacher_batch_size=128", "3 replicas x 1 GPU(s)", "multiple of 3"),
        id="replicas-batch-not-divisible",
    ),
    pytest.param(
        [*VERTEX, "--replicas", "2", "--gpus", "1", "--param", "student_devices=1"],
        ("invalid student_devices=1", "with 2 replicas", "leave student_devices at 0"),
        id="replicas-with-step-devices",
    ),
    pytest.param(
        [*VERTEX, "--machine-type", "n1-standard-4"],
        ("invalid machine_type='n1-standard-4'", "Fix: pass --replicas R"),
        id="machine-type-without-replicas",
    ),
]


@pytest.mark.parametrize(("args", "names"), SUBMIT_TEACHER_CASES)
def test_submit_refuses_bad_parameters_before_any_network_call(
    args: list[str], names: tuple[str, ...], tmp_path: Path
) -> None:
    """Checked as the local runner checks them; the endpoint (port 9, closed) is never asked."""
    proc = run_cli(["pipeline.py", "submit", *args], tmp_path)
    message = assert_one_error_line(proc, 1, *names)
    assert "cannot reach" not in message


def test_submit_refuses_a_missing_gcs_teacher(gcs_emulator: Any, tmp_path: Path) -> None:
    import parameters

    uri = "gs://kd-test/teachers/none.keras"
    with pytest.raises(parameters.ParameterError) as err:
        parameters.check_teacher_exists(uri)
    assert_clear(err.value, uri, "no such object")
    gcs_emulator.bucket("kd-test").blob("teachers/here.keras").upload_from_string(b"x")
    parameters.check_teacher_exists("gs://kd-test/teachers/here.keras")  # no error


# ----------------------------------------------------------------------------------------------
# Resuming a run: python -m local_runner run --resume RUN
# ----------------------------------------------------------------------------------------------

EARLIER = "kd-cifar10-2026-01-02-03-04-05-000006"
RESUME_CASES = [
    pytest.param(
        ["--resume", "nope"],
        {"status": "FAILED", "parameters": {}},
        ("--resume nope", "no run 'nope'"),
        id="resume-an-unknown-run",
    ),
    pytest.param(
        ["--resume", EARLIER],
        {"status": "SUCCEEDED", "parameters": {}},
        (EARLIER, "it finished (SUCCEEDED)"),
        id="resume-a-finished-run",
    ),
    pytest.param(
        ["--resume", EARLIER],
        {"status": "FAILED"},
        (EARLIER, "holds no parameters"),
        id="resume-a-run-of-an-older-runner",
    ),
    pytest.param(
        ["--resume", EARLIER, "--student-epochs", "3", "--param", "alpha=0.2"],
        {"status": "CANCELLED", "parameters": {}},
        ("--param, --student-epochs would change them",),
        id="resume-with-new-parameters",
    ),
]


@pytest.mark.parametrize(("args", "record", "names"), RESUME_CASES)
def test_local_runner_refuses_a_resume_it_cannot_do(
    args: list[str], record: dict, names: tuple[str, ...], tmp_path: Path
) -> None:
    root = tmp_path / "runs"
    (root / EARLIER).mkdir(parents=True)
    written = json.dumps({"version": 1, **record})
    (root / EARLIER / "kd_run.json").write_text(written)
    proc = run_cli(
        ["-m", "local_runner", "run", "--runner", "subprocess", "--pipeline-root", str(root)]
        + args,
        tmp_path,
    )
    assert_one_error_line(proc, 2, *names)
    assert "=== stage" not in proc.stdout
    assert sorted(p.name for p in root.iterdir()) == [EARLIER], "a run folder was created"
    assert (root / EARLIER / "kd_run.json").read_text() == written  # left as it was


# ----------------------------------------------------------------------------------------------
# The table in docs/BAD_INPUTS.md lists exactly these cases
# ----------------------------------------------------------------------------------------------


def declared_node_ids() -> set[str]:
    """The node id of every test and parametrized case in this file (but this check)."""
    ids = set()
    for name, fn in globals().items():
        if (
            not name.startswith("test_")
            or not callable(fn)
            or name == "test_docs_table_lists_every_case"
        ):
            continue
        marks = [m for m in getattr(fn, "pytestmark", []) if m.name == "parametrize"]
        if not marks:
            ids.add(f"{THIS}::{name}")
        for mark in marks:
            ids.update(f"{THIS}::{name}[{p.id}]" for p in mark.args[1])
    return ids


def test_docs_table_lists_every_case() -> None:
    text = DOC.read_text(encoding="utf-8")
    rows = [line for line in text.splitlines() if re.match(r"\|\s*\d+\s*\|", line)]
    numbers = [int(line.split("|")[1]) for line in rows]
    assert numbers == list(range(1, len(rows) + 1)), "rows must be numbered 1..N"
    listed = [m for line in rows for m in re.findall(rf"`({re.escape(THIS)}::[^`]+)`", line)]
    assert len(listed) == len(rows), "every row names exactly one test"
    assert len(set(listed)) == len(listed), "a test is listed twice"
    declared = declared_node_ids()
    assert not set(listed) - declared, f"rows without a test: {sorted(set(listed) - declared)}"
    assert not declared - set(listed), f"tests without a row: {sorted(declared - set(listed))}"
    assert len(rows) >= 30
