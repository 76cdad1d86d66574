"""Tests of kd.data: every CIFAR-10 source format, safety, validation, split and Dataset files.

All data is generated here, small (5 batches x 20 training images + 20 test images, random
pixels, labels covering every class), and written in the real on-disk formats: Python-2 style
pickled batches, binary records, tar.gz archives, npz. ``gs://`` sources go through a real GCS
emulator (the ``gcs_emulator`` fixture of conftest.py).
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import struct
import subprocess
import sys
import tarfile
import textwrap
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from kd import data as kdata
from kd.config import SplitConfig
from kd.data import (
    CifarArrays,
    content_sha256,
    load_cifar10,
    load_dataset,
    make_splits,
    save_dataset,
    stratified_split,
    subsample_per_class,
    validate_images,
)
from kd.errors import ArtifactError, ConfigError, DataError

PER_BATCH = 20
N_TEST = 20
REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------
# Writers of the real formats
# ----------------------------------------------------------------------------------------------


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined,misc]
    """Writes bytes and str as Python 2 ``str`` (BINSTRING), like the official archive."""

    dispatch = pickle._Pickler.dispatch.copy()  # type: ignore[attr-defined]

    def _save_py2_str(self, obj: bytes | str) -> None:
        raw = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str
    dispatch[str] = _save_py2_str


def py2_pickle(obj: Any) -> bytes:
    """A protocol-2 pickle as Python 2 + numpy 1 wrote it (numpy.core.multiarray globals)."""
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def chw_rows(x: np.ndarray) -> np.ndarray:
    """(N, 32, 32, 3) -> (N, 3072) rows: 1024 R, 1024 G, 1024 B, each row-major."""
    return np.concatenate([x[..., c].reshape(len(x), 1024) for c in range(3)], axis=1)


def make_arrays(seed: int = 0) -> CifarArrays:
    rng = np.random.default_rng(seed)
    n_train = 5 * PER_BATCH
    return CifarArrays(
        x_train=rng.integers(0, 256, (n_train, 32, 32, 3), dtype=np.uint8),
        y_train=rng.permutation(np.arange(n_train) % 10).astype(np.uint8),
        x_test=rng.integers(0, 256, (N_TEST, 32, 32, 3), dtype=np.uint8),
        y_test=rng.permutation(np.arange(N_TEST) % 10).astype(np.uint8),
    )


def _batches(a: CifarArrays) -> list[tuple[str, np.ndarray, np.ndarray]]:
    out = []
    for i in range(5):
        sl = slice(i * PER_BATCH, (i + 1) * PER_BATCH)
        out.append((f"data_batch_{i + 1}", a.x_train[sl], a.y_train[sl]))
    out.append(("test_batch", a.x_test, a.y_test))
    return out


def python_batch_bytes(name: str, x: np.ndarray, y: np.ndarray) -> bytes:
    return py2_pickle(
        {
            b"batch_label": f"{name} of CIFAR-10 (test copy)".encode(),
            b"labels": [int(v) for v in y],
            b"data": chw_rows(x),
            b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(y))],
        }
    )


def write_python_dir(folder: Path, a: CifarArrays) -> Path:
    folder.mkdir(parents=True)
    for name, x, y in _batches(a):
        (folder / name).write_bytes(python_batch_bytes(name, x, y))
    (folder / "batches.meta").write_bytes(py2_pickle({b"label_names": [b"airplane"] * 10}))
    return folder


def write_binary_dir(folder: Path, a: CifarArrays) -> Path:
    folder.mkdir(parents=True)
    for name, x, y in _batches(a):
        records = np.concatenate([y.reshape(-1, 1), chw_rows(x)], axis=1).astype(np.uint8)
        (folder / f"{name}.bin").write_bytes(records.tobytes())
    (folder / "batches.meta.txt").write_text("airplane\n" * 10)
    return folder


def write_tar(folder: Path, archive: Path, extra: list[tarfile.TarInfo] | None = None) -> Path:
    with tarfile.open(archive, "w:gz") as tf:
        tf.add(folder, arcname=folder.name)
        for info in extra or []:
            data = b"evil" if info.isfile() else None
            if data is not None:
                info.size = len(data)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    return archive


def write_npz_dir(folder: Path, a: CifarArrays) -> Path:
    folder.mkdir(parents=True)
    np.savez(folder / "train.npz", x=a.x_train, y=a.y_train)
    np.savez(folder / "test.npz", x=a.x_test, y=a.y_test)
    return folder


def write_npz(path: Path, **arrays: np.ndarray) -> Path:
    with open(path, "wb") as f:  # a file object: numpy adds no .npz suffix
        np.savez(f, **arrays)
    return path


def single_npz(path: Path, a: CifarArrays) -> Path:
    return write_npz(path, x_train=a.x_train, y_train=a.y_train, x_test=a.x_test, y_test=a.y_test)


def assert_same(got: CifarArrays, want: CifarArrays) -> None:
    for name in ("x_train", "y_train", "x_test", "y_test"):
        g, w = getattr(got, name), getattr(want, name)
        assert g.dtype == np.uint8, name
        assert g.shape == w.shape, name
        np.testing.assert_array_equal(g, w, err_msg=name)


@pytest.fixture(scope="module")
def arrays() -> CifarArrays:
    return make_arrays(0)


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory, arrays: CifarArrays) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("sources")
    py_dir = write_python_dir(root / "py" / "cifar-10-batches-py", arrays)
    bin_dir = write_binary_dir(root / "bin" / "cifar-10-batches-bin", arrays)
    return {
        "py_dir": py_dir,
        "py_tar": write_tar(py_dir, root / "cifar-10-python.tar.gz"),
        "bin_dir": bin_dir,
        "bin_tar": write_tar(bin_dir, root / "cifar-10-binary.tar.gz"),
        "npz_dir": write_npz_dir(root / "npz", arrays),
        "npz_file": single_npz(root / "cifar10.npz", arrays),
    }


# ----------------------------------------------------------------------------------------------
# Every format loads exactly
# ----------------------------------------------------------------------------------------------

FORMATS = {
    "py_dir": "python",
    "py_tar": "python",
    "bin_dir": "binary",
    "bin_tar": "binary",
    "npz_dir": "npz",
    "npz_file": "npz",
}


@pytest.mark.parametrize("kind", sorted(FORMATS))
def test_every_local_format_loads_exactly(
    kind: str, sources: dict[str, Path], arrays: CifarArrays
) -> None:
    got = load_cifar10(str(sources[kind]))
    assert_same(got, arrays)
    prov = got.provenance
    assert prov["source"] == str(sources[kind])
    assert prov["format"] == FORMATS[kind]
    assert prov["num_train"] == 100 and prov["num_test"] == N_TEST
    assert prov["files"] and set(prov["sizes"]) == set(prov["files"])
    json.dumps(prov)  # JSON-ready
    if kind in ("py_dir", "bin_dir"):
        assert len(prov["files"]) == 6
        for name in prov["files"]:
            assert prov["sizes"][name] == (sources[kind] / name).stat().st_size
    if kind.endswith("_tar"):
        assert all(
            f.startswith(sources[kind.replace("tar", "dir")].name + "/") for f in prov["files"]
        )
        assert prov["archive_bytes"] == sources[kind].stat().st_size


def test_pixel_order_chw_planar_to_hwc(tmp_path: Path) -> None:
    """Row offset ch*1024 + r*32 + c holds pixel (r, c) of channel ch, in both formats."""
    row = (np.arange(3072) % 251).astype(np.uint8)
    labels = np.arange(10, dtype=np.uint8)
    data = np.tile(row, (10, 1))
    py = tmp_path / "py"
    py.mkdir()
    for name in (*kdata.PY_TRAIN, kdata.PY_TEST):
        blob = py2_pickle({b"labels": labels.tolist(), b"data": data, b"batch_label": b"x"})
        (py / name).write_bytes(blob)
    binary = tmp_path / "bin"
    binary.mkdir()
    for name in (*kdata.BIN_TRAIN, kdata.BIN_TEST):
        (binary / name).write_bytes(np.concatenate([labels[:, None], data], axis=1).tobytes())
    for folder in (py, binary):
        x = load_cifar10(str(folder)).x_train
        for r, c, ch in [(0, 0, 0), (2, 5, 1), (31, 31, 2), (17, 3, 0), (9, 30, 2)]:
            assert x[0, r, c, ch] == row[ch * 1024 + r * 32 + c]


def test_parent_folder_of_batches_is_accepted(sources: dict[str, Path], arrays: CifarArrays):
    assert_same(load_cifar10(str(sources["py_dir"].parent)), arrays)


def test_benign_link_inside_archive_is_accepted(
    tmp_path: Path, sources: dict[str, Path], arrays: CifarArrays
) -> None:
    link = tarfile.TarInfo("cifar-10-batches-py/alias")
    link.type = tarfile.SYMTYPE
    link.linkname = "data_batch_1"
    archive = write_tar(sources["py_dir"], tmp_path / "a.tar.gz", extra=[link])
    assert_same(load_cifar10(str(archive)), arrays)


def test_sample_source() -> None:
    got = load_cifar10("sample")
    assert got.x_train.shape == (2500, 32, 32, 3) and got.x_test.shape == (5000, 32, 32, 3)
    assert got.x_train.dtype == np.uint8 and got.y_train.dtype == np.uint8
    assert np.bincount(got.y_train).tolist() == [250] * 10
    assert np.bincount(got.y_test).tolist() == [500] * 10
    assert got.provenance["format"] == "sample" and got.provenance["source"] == "sample"


def test_keras_source_via_monkeypatch(monkeypatch: pytest.MonkeyPatch, arrays: CifarArrays):
    keras = pytest.importorskip("keras")

    def fake_load_data() -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
        # Keras returns labels as (N, 1) columns
        return (
            (arrays.x_train, arrays.y_train.reshape(-1, 1)),
            (arrays.x_test, arrays.y_test.reshape(-1, 1)),
        )

    monkeypatch.setattr(keras.datasets.cifar10, "load_data", fake_load_data)
    got = load_cifar10("keras")
    assert_same(got, arrays)
    assert got.y_train.shape == (100,)
    assert got.provenance["format"] == "keras"

    def offline() -> None:
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(keras.datasets.cifar10, "load_data", offline)
    with pytest.raises(DataError, match="needs internet.*'sample'"):
        load_cifar10("keras")


# ----------------------------------------------------------------------------------------------
# gs:// through a real emulator
# ----------------------------------------------------------------------------------------------


def test_gcs_tar_object(
    gcs_emulator: Any, tmp_path: Path, sources: dict[str, Path], arrays: CifarArrays
) -> None:
    bucket = gcs_emulator.bucket("kd-test")
    bucket.blob("raw/cifar-10-python.tar.gz").upload_from_filename(str(sources["py_tar"]))
    uri = "gs://kd-test/raw/cifar-10-python.tar.gz"
    got = load_cifar10(uri, cache_dir=tmp_path / "cache")
    assert_same(got, arrays)
    assert got.provenance["source"] == uri and got.provenance["gcs_uri"] == uri
    assert got.provenance["format"] == "python"
    cached = Path(got.provenance["downloaded_to"])
    assert cached.is_file() and cached.is_relative_to(tmp_path / "cache")
    # without cache_dir: a temporary download, removed afterwards
    again = load_cifar10(uri)
    assert_same(again, arrays)
    assert again.provenance["downloaded_to"] is None


@pytest.mark.parametrize("kind", ["npz_dir", "bin_dir"])
def test_gcs_folder_prefix(
    kind: str,
    gcs_emulator: Any,
    tmp_path: Path,
    sources: dict[str, Path],
    arrays: CifarArrays,
) -> None:
    bucket = gcs_emulator.bucket("kd-test")
    for f in sorted(sources[kind].iterdir()):
        bucket.blob(f"datasets/cifar10/{f.name}").upload_from_filename(str(f))
    got = load_cifar10("gs://kd-test/datasets/cifar10", cache_dir=tmp_path)
    assert_same(got, arrays)
    assert got.provenance["format"] == FORMATS[kind]


def test_gcs_missing_object(gcs_emulator: Any, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no object at gs://kd-test/nope"):
        load_cifar10("gs://kd-test/nope/cifar-10-python.tar.gz", cache_dir=tmp_path)


# ----------------------------------------------------------------------------------------------
# Safety: pickles and tar members
# ----------------------------------------------------------------------------------------------


class _RunsCommand:
    def __init__(self, cmd: str) -> None:
        self.cmd = cmd

    def __reduce__(self) -> tuple[Any, tuple[str]]:
        return (os.system, (self.cmd,))


def test_malicious_pickle_is_refused_and_runs_nothing(
    tmp_path: Path, sources: dict[str, Path]
) -> None:
    # control: this payload really does run a command when unpickled normally
    control = tmp_path / "CONTROL"
    pickle.loads(pickle.dumps(_RunsCommand(f"touch {control}"), protocol=2))
    assert control.exists()

    sentinel = tmp_path / "SENTINEL"
    evil = py2_pickle({b"data": _RunsCommand(f"touch {sentinel}"), b"labels": []})
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for f in sources["py_dir"].iterdir():
        (folder / f.name).write_bytes(f.read_bytes())
    (folder / "data_batch_1").write_bytes(evil)
    with pytest.raises(DataError, match=r"system; refusing to run code from a data file\. Fix"):
        load_cifar10(str(folder))
    assert not sentinel.exists()
    archive = write_tar(folder, tmp_path / "evil.tar.gz")
    with pytest.raises(DataError, match="data_batch_1: pickle wants to load"):
        load_cifar10(str(archive))
    assert not sentinel.exists()


def _member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    return info


@pytest.mark.parametrize(
    "member, match",
    [
        (_member("../evil"), r"refusing tar member '\.\./evil': it would land outside"),
        (_member("cifar-10-batches-py/../../evil"), "it would land outside"),
        (_member("/tmp/evil"), r"refusing tar member '/tmp/evil'"),
        (_member("cifar-10-batches-py/x", tarfile.SYMTYPE, "../../etc/passwd"), "points outside"),
        (_member("cifar-10-batches-py/y", tarfile.SYMTYPE, "/etc/passwd"), "points outside"),
        (_member("cifar-10-batches-py/z", tarfile.LNKTYPE, "../outside"), "points outside"),
    ],
)
def test_unsafe_tar_members_refused_before_reading(
    member: tarfile.TarInfo,
    match: str,
    tmp_path: Path,
    sources: dict[str, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    archive = write_tar(sources["py_dir"], tmp_path / "cifar-10-python.tar.gz", extra=[member])
    reads: list[str] = []
    real_extractfile = tarfile.TarFile.extractfile

    def spy(self: tarfile.TarFile, m: Any) -> Any:
        reads.append(getattr(m, "name", str(m)))
        return real_extractfile(self, m)

    monkeypatch.setattr(tarfile.TarFile, "extractfile", spy)
    with pytest.raises(DataError, match=match) as err:
        load_cifar10(str(archive))
    assert "Fix:" in str(err.value) and str(archive) in str(err.value)
    assert reads == []  # refused before any member was read
    assert not (tmp_path.parent / "evil").exists()


def test_truncated_tar_gz(tmp_path: Path, sources: dict[str, Path]) -> None:
    blob = sources["py_tar"].read_bytes()
    bad = tmp_path / "cifar-10-python.tar.gz"
    bad.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match=r"truncated, corrupt or not a tar archive\. Fix") as err:
        load_cifar10(str(bad))
    assert str(bad) in str(err.value)


def test_archive_without_cifar_batches(tmp_path: Path) -> None:
    folder = tmp_path / "stuff"
    folder.mkdir()
    (folder / "readme.txt").write_text("hello")
    archive = write_tar(folder, tmp_path / "stuff.tar.gz")
    with pytest.raises(DataError, match="holds none of the CIFAR-10 batch files"):
        load_cifar10(str(archive))


def test_archive_missing_a_batch(tmp_path: Path, arrays: CifarArrays) -> None:
    folder = write_python_dir(tmp_path / "cifar-10-batches-py", arrays)
    (folder / "data_batch_4").unlink()
    with pytest.raises(DataError, match="missing data_batch_4"):
        load_cifar10(str(write_tar(folder, tmp_path / "a.tar.gz")))
    with pytest.raises(DataError, match="missing data_batch_4.*Fix: extract"):
        load_cifar10(str(folder))


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("cifar-10-python.tar.gz", b"this is not an archive\n", "not in a recognised format"),
        ("cifar10.npz", b"x_train,y_train\n1,2\n", "not in a recognised format"),
        ("empty.npz", b"", "is empty"),
        ("text.tar.gz", gzip.compress(b"plain text, gzipped\n" * 50), "not a tar archive"),
    ],
)
def test_wrong_format_file(tmp_path: Path, name: str, content: bytes, match: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match=match) as err:
        load_cifar10(str(path))
    assert str(path) in str(err.value) and "Fix:" in str(err.value)
    assert ".npz" in str(err.value)  # lists the accepted formats


def test_unknown_source(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found.*'sample'.*'keras'.*gs://"):
        load_cifar10(str(tmp_path / "does-not-exist"))
    with pytest.raises(DataError, match="empty data source"):
        load_cifar10("  ")


def test_folder_without_layout(tmp_path: Path) -> None:
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "b.txt").write_text("y")
    with pytest.raises(DataError, match="no CIFAR-10 layout found"):
        load_cifar10(str(tmp_path))


def test_truncated_binary_batch(tmp_path: Path, arrays: CifarArrays) -> None:
    folder = write_binary_dir(tmp_path / "cifar-10-batches-bin", arrays)
    blob = (folder / "data_batch_2.bin").read_bytes()
    (folder / "data_batch_2.bin").write_bytes(blob[:-100])
    with pytest.raises(DataError, match=r"data_batch_2\.bin: .* 3073-byte records.*truncated"):
        load_cifar10(str(folder))


def test_corrupt_pickle_batch(tmp_path: Path, arrays: CifarArrays) -> None:
    folder = write_python_dir(tmp_path / "cifar-10-batches-py", arrays)
    blob = (folder / "test_batch").read_bytes()
    (folder / "test_batch").write_bytes(blob[: len(blob) // 3])
    with pytest.raises(DataError, match="test_batch: not a readable CIFAR-10 python batch"):
        load_cifar10(str(folder))


# ----------------------------------------------------------------------------------------------
# Validation
# ----------------------------------------------------------------------------------------------


def test_labels_out_of_range_name_the_file(tmp_path: Path, arrays: CifarArrays) -> None:
    folder = write_python_dir(tmp_path / "cifar-10-batches-py", arrays)
    y = arrays.y_train[40:60].copy()
    y[3] = 12
    (folder / "data_batch_3").write_bytes(
        python_batch_bytes("data_batch_3", arrays.x_train[40:60], y)
    )
    with pytest.raises(DataError, match=r"data_batch_3: labels out of range 0\.\.9 \(found 12"):
        load_cifar10(str(folder))

    y_bad = arrays.y_train.astype(np.int64)
    y_bad[0] = -1
    path = write_npz(
        tmp_path / "bad.npz",
        x_train=arrays.x_train,
        y_train=y_bad,
        x_test=arrays.x_test,
        y_test=arrays.y_test,
    )
    with pytest.raises(DataError, match=r"labels out of range 0\.\.9 \(found -1.*Fix"):
        load_cifar10(str(path))


@pytest.mark.parametrize(
    "x, y, match",
    [
        (np.zeros((4, 32, 32), np.uint8), np.zeros(4, np.uint8), r"shape \(4, 32, 32\)"),
        (np.zeros((4, 3, 32, 32), np.uint8), np.zeros(4, np.uint8), "channels-first"),
        (np.zeros((4, 28, 28, 3), np.uint8), np.zeros(4, np.uint8), "expected \\(N, 32, 32, 3\\)"),
        (np.zeros((0, 32, 32, 3), np.uint8), np.zeros(0, np.uint8), r"no images \(N=0\)"),
        (np.zeros((4, 32, 32, 3), np.uint8), np.zeros(5, np.uint8), "4 images but 5 labels"),
        (np.zeros((4, 32, 32, 3), np.uint8), np.zeros((4, 2), np.uint8), "reshape\\(-1\\)"),
        (np.zeros((4, 32, 32, 3), np.uint8), np.zeros(4, np.float32), "expected integers"),
        (np.zeros((4, 32, 32, 3), np.float32), np.zeros(4, np.uint8), "convert to uint8 0-255"),
        (np.full((4, 32, 32, 3), np.nan, np.float32), np.zeros(4), "non-finite pixel values"),
        (np.zeros((4, 32, 32, 3), np.int64), np.zeros(4, np.uint8), "dtype int64, expected uint8"),
        ([[1, 2]], np.zeros(1, np.uint8), "not a numpy array"),
    ],
)
def test_validate_images_rejects(x: Any, y: Any, match: str) -> None:
    with pytest.raises(DataError, match=match) as err:
        validate_images(x, y, "file X")
    assert str(err.value).startswith("file X: ") and "Fix:" in str(err.value)


def test_validate_images_accepts_good_data(arrays: CifarArrays) -> None:
    validate_images(arrays.x_train, arrays.y_train, "ok")
    validate_images(arrays.x_train, arrays.y_train.astype(np.int64), "ok")


def test_invalid_arrays_in_npz_sources(tmp_path: Path, arrays: CifarArrays) -> None:
    x_nan = arrays.x_train.astype(np.float32)
    x_nan[0, 0, 0, 0] = np.nan
    path = write_npz(
        tmp_path / "nan.npz",
        x_train=x_nan,
        y_train=arrays.y_train,
        x_test=arrays.x_test,
        y_test=arrays.y_test,
    )
    with pytest.raises(DataError, match=r"nan\.npz \(train set\): non-finite pixel values"):
        load_cifar10(str(path))
    empty = write_npz(
        tmp_path / "empty.npz",
        x_train=arrays.x_train,
        y_train=arrays.y_train,
        x_test=arrays.x_test[:0],
        y_test=arrays.y_test[:0],
    )
    with pytest.raises(DataError, match=r"\(test set\): no images"):
        load_cifar10(str(empty))
    only_xy = write_npz(tmp_path / "xy.npz", x=arrays.x_train, y=arrays.y_train)
    with pytest.raises(DataError, match="missing array\\(s\\) x_train.*train.npz and test.npz"):
        load_cifar10(str(only_xy))
    objects = tmp_path / "obj.npz"
    np.savez(
        objects,
        x_train=np.array([{"a": 1}], dtype=object),
        y_train=arrays.y_train,
        x_test=arrays.x_test,
        y_test=arrays.y_test,
    )
    with pytest.raises(DataError, match="not a readable .npz"):
        load_cifar10(str(objects))


def test_training_set_missing_a_class(tmp_path: Path, arrays: CifarArrays) -> None:
    keep = arrays.y_train != 7
    path = write_npz(
        tmp_path / "no7.npz",
        x_train=arrays.x_train[keep],
        y_train=arrays.y_train[keep],
        x_test=arrays.x_test,
        y_test=arrays.y_test,
    )
    with pytest.raises(DataError, match=r"no image of class 7 \(horse\).*Fix"):
        load_cifar10(str(path))


# ----------------------------------------------------------------------------------------------
# Split and subsample
# ----------------------------------------------------------------------------------------------

UNEVEN = np.repeat(np.arange(10), [50, 37, 23, 100, 11, 5, 2, 64, 80, 19]).astype(np.uint8)


@pytest.mark.parametrize("val_fraction", [0.1, 0.2, 0.35])
def test_stratified_split_proportions(val_fraction: float) -> None:
    y = np.random.default_rng(3).permutation(UNEVEN)
    train, val = stratified_split(y, val_fraction, seed=42)
    assert train.dtype == np.int64 and val.dtype == np.int64
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)  # sorted, unique
    assert np.intersect1d(train, val).size == 0
    np.testing.assert_array_equal(np.union1d(train, val), np.arange(y.size))
    counts = np.bincount(y, minlength=10)
    val_counts = np.bincount(y[val], minlength=10)
    assert np.all(np.abs(val_counts - counts * val_fraction) <= 1)
    assert np.all(val_counts >= 1) and np.all(val_counts <= counts - 1)


def test_stratified_split_balanced_is_exact() -> None:
    y = np.tile(np.arange(10, dtype=np.uint8), 500)
    train, val = stratified_split(y, 0.2, seed=42)
    assert val.size == 1000 and train.size == 4000
    assert np.bincount(y[val]).tolist() == [100] * 10


def test_stratified_split_deterministic_per_seed() -> None:
    y = np.random.default_rng(0).permutation(UNEVEN)
    a = stratified_split(y, 0.2, seed=1)
    b = stratified_split(y, 0.2, seed=1)
    c = stratified_split(y, 0.2, seed=2)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    assert not np.array_equal(a[1], c[1])
    assert np.bincount(y[a[1]]).tolist() == np.bincount(y[c[1]]).tolist()


def test_stratified_split_rejects_bad_input() -> None:
    with pytest.raises(ConfigError, match="val_fraction"):
        stratified_split(UNEVEN, 1.0, seed=0)
    with pytest.raises(DataError, match="1-D integer"):
        stratified_split(np.zeros((3, 2), np.uint8), 0.2, seed=0)


def test_subsample_per_class() -> None:
    y = np.random.default_rng(1).permutation(UNEVEN)
    idx = subsample_per_class(y, 20, seed=5)
    assert np.all(np.diff(idx) > 0) and idx.dtype == np.int64
    expected = np.minimum(np.bincount(y, minlength=10), 20)
    assert np.bincount(y[idx], minlength=10).tolist() == expected.tolist()
    np.testing.assert_array_equal(idx, subsample_per_class(y, 20, seed=5))
    assert not np.array_equal(idx, subsample_per_class(y, 20, seed=6))
    np.testing.assert_array_equal(subsample_per_class(y, 0, seed=5), np.arange(y.size))
    with pytest.raises(ConfigError, match="per_class"):
        subsample_per_class(y, -1, seed=0)


# ----------------------------------------------------------------------------------------------
# Dataset files
# ----------------------------------------------------------------------------------------------


def test_content_sha256(arrays: CifarArrays) -> None:
    x, y = arrays.x_train, arrays.y_train
    h = content_sha256(x, y)
    assert len(h) == 64
    assert content_sha256(x.copy(), y.astype(np.int64)) == h  # label dtype does not matter
    assert content_sha256(x[::-1][::-1], y) == h  # nor memory layout
    x2 = x.copy()
    x2[5, 1, 2, 0] ^= 1
    assert content_sha256(x2, y) != h
    y2 = y.copy()
    y2[0] = (y2[0] + 1) % 10
    assert content_sha256(x, y2) != h
    assert content_sha256(x[:50], y[:50]) != h


def test_save_and_load_dataset_round_trip(tmp_path: Path, arrays: CifarArrays) -> None:
    path = tmp_path / "out" / "train"  # a KFP Dataset path: no suffix
    idx = np.arange(100, dtype=np.int32) * 3
    meta = save_dataset(
        path, arrays.x_train, arrays.y_train.astype(np.int64), indices=idx, extra={"split": "train"}
    )
    assert sorted(os.listdir(path.parent)) == ["train"]  # exactly `path`, no temp files
    assert zipfile.is_zipfile(path)
    with zipfile.ZipFile(path) as zf:
        assert {i.compress_type for i in zf.infolist()} == {zipfile.ZIP_STORED}
        assert sorted(zf.namelist()) == ["indices.npy", "meta.npy", "x.npy", "y.npy"]
    assert meta["sha256"] == content_sha256(arrays.x_train, arrays.y_train)
    assert meta["num_examples"] == 100
    assert meta["class_counts"] == np.bincount(arrays.y_train, minlength=10).tolist()
    assert meta["image_shape"] == [32, 32, 3] and meta["split"] == "train"
    json.dumps(meta)
    with np.load(path, allow_pickle=False) as npz:
        np.testing.assert_array_equal(npz["indices"], idx)
        assert npz["indices"].dtype == np.int64
        assert json.loads(str(npz["meta"])) == meta

    x, y = load_dataset(path, expected_sha256=meta["sha256"])
    np.testing.assert_array_equal(x, arrays.x_train)
    np.testing.assert_array_equal(y, arrays.y_train)
    assert x.dtype == np.uint8 and y.dtype == np.uint8
    assert load_dataset(str(path))[0].shape == (100, 32, 32, 3)


def test_load_dataset_sha_mismatch(tmp_path: Path, arrays: CifarArrays) -> None:
    path = tmp_path / "val"
    meta = save_dataset(path, arrays.x_test, arrays.y_test)
    wrong = "0" * 64
    with pytest.raises(ArtifactError) as err:
        load_dataset(path, expected_sha256=wrong)
    msg = str(err.value)
    assert str(path) in msg and wrong in msg and meta["sha256"] in msg
    assert "re-run data_split" in msg


def test_load_dataset_missing_or_corrupt(tmp_path: Path, arrays: CifarArrays) -> None:
    with pytest.raises(DataError, match="does not exist. Fix: .*data_split"):
        load_dataset(tmp_path / "nope")
    bad = tmp_path / "bad"
    bad.write_text("not a dataset")
    with pytest.raises(DataError, match="not a readable .npz"):
        load_dataset(bad)
    no_y = write_npz(tmp_path / "no_y", x=arrays.x_test)
    with pytest.raises(DataError, match="missing array\\(s\\) y"):
        load_dataset(no_y)
    bad_labels = write_npz(tmp_path / "lab", x=arrays.x_test, y=np.full(N_TEST, 10, np.uint8))
    with pytest.raises(DataError, match="labels out of range"):
        load_dataset(bad_labels)


def test_save_dataset_is_atomic(
    tmp_path: Path, arrays: CifarArrays, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "test"
    save_dataset(path, arrays.x_test, arrays.y_test)
    before = path.read_bytes()

    def disk_full(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(np, "save", disk_full)
    with pytest.raises(ArtifactError, match="No space left on device. Fix: free disk space"):
        save_dataset(path, arrays.x_train, arrays.y_train)
    assert path.read_bytes() == before  # the old file is untouched
    assert os.listdir(tmp_path) == ["test"]  # and no temporary is left behind
    monkeypatch.undo()
    with pytest.raises(DataError, match="labels out of range"):
        save_dataset(path, arrays.x_test, np.full(N_TEST, 11))
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["test"]


def test_save_dataset_rejects_bad_indices(tmp_path: Path, arrays: CifarArrays) -> None:
    with pytest.raises(DataError, match="indices"):
        save_dataset(tmp_path / "d", arrays.x_test, arrays.y_test, indices=np.arange(3))
    assert not (tmp_path / "d").exists()


# ----------------------------------------------------------------------------------------------
# The data-split stage
# ----------------------------------------------------------------------------------------------


def test_make_splits_on_shipped_sample(tmp_path: Path) -> None:
    paths = [tmp_path / "train", tmp_path / "val", tmp_path / "test"]
    out = make_splits(SplitConfig(source="sample", val_fraction=0.2, seed=42), *paths)
    json.dumps(out)
    assert out["source"] == "sample" and out["provenance"]["format"] == "sample"
    assert out["seed"] == 42 and out["val_fraction"] == 0.2
    assert out["train"]["class_counts"] == [200] * 10
    assert out["validation"]["class_counts"] == [50] * 10
    assert out["test"]["class_counts"] == [500] * 10 and out["test"]["num_examples"] == 5000
    assert out["train"]["num_examples"] + out["validation"]["num_examples"] == 2500
    sample = load_cifar10("sample")
    indices = {}
    for key, path in zip(("train", "validation", "test"), paths, strict=True):
        x, y = load_dataset(path, expected_sha256=out[key]["sha256"])
        assert out[key]["sha256"] == content_sha256(x, y)
        assert out[key]["class_counts"] == np.bincount(y, minlength=10).tolist()
        with np.load(path) as npz:
            indices[key] = npz["indices"]
        source_x = sample.x_test if key == "test" else sample.x_train
        np.testing.assert_array_equal(x, source_x[indices[key]])  # indices are saved with data
    assert np.intersect1d(indices["train"], indices["validation"]).size == 0
    # deterministic for a seed
    again = make_splits(
        SplitConfig(source="sample", seed=42), *[tmp_path / "b" / p.name for p in paths]
    )
    assert all(again[k]["sha256"] == out[k]["sha256"] for k in ("train", "validation", "test"))


def test_make_splits_per_class(tmp_path: Path, sources: dict[str, Path]) -> None:
    cfg = SplitConfig(
        source=str(sources["py_tar"]),
        val_fraction=0.25,
        seed=1,
        train_per_class=8,
        test_per_class=1,
    )
    out = make_splits(cfg, tmp_path / "tr", tmp_path / "va", tmp_path / "te")
    assert out["train"]["class_counts"] == [6] * 10
    assert out["validation"]["class_counts"] == [2] * 10
    assert out["test"]["class_counts"] == [1] * 10
    assert out["provenance"]["format"] == "python"


def test_make_splits_missing_class(tmp_path: Path, arrays: CifarArrays) -> None:
    # class 9 has a single training image: it cannot be in both train and validation
    y = arrays.y_train.copy()
    nines = np.flatnonzero(y == 9)
    y[nines[1:]] = 0
    src = write_npz(
        tmp_path / "one9.npz",
        x_train=arrays.x_train,
        y_train=y,
        x_test=arrays.x_test,
        y_test=arrays.y_test,
    )
    out_paths = [tmp_path / "tr", tmp_path / "va", tmp_path / "te"]
    with pytest.raises(
        DataError,
        match=r"split '(train|validation)'.*class 9 \(truck\).*"
        r"Fix: use more data.*smaller val_fraction",
    ):
        make_splits(SplitConfig(source=str(src)), *out_paths)
    assert not any(p.exists() for p in out_paths)  # nothing written
    # a test set without class 3
    keep = arrays.y_test != 3
    src2 = write_npz(
        tmp_path / "no3.npz",
        x_train=arrays.x_train,
        y_train=arrays.y_train,
        x_test=arrays.x_test[keep],
        y_test=arrays.y_test[keep],
    )
    with pytest.raises(DataError, match=r"split 'test'.*class 3 \(cat\)"):
        make_splits(SplitConfig(source=str(src2)), *out_paths)


@pytest.mark.slow
def test_full_size_split_memory(tmp_path: Path) -> None:
    """The full 50,000 + 10,000 split from the python archive stays under 1.5 GB peak RSS."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    y = (np.arange(10_000) % 10).astype(np.uint8)
    x = np.zeros((10_000, 32, 32, 3), np.uint8)
    x[:, 0, 0, 0] = np.arange(10_000) % 256
    blob = python_batch_bytes("batch", x, y)
    for name in (*kdata.PY_TRAIN, kdata.PY_TEST):
        (folder / name).write_bytes(blob)
    del blob, x
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz", compresslevel=1) as tf:
        tf.add(folder, arcname=folder.name)
    script = textwrap.dedent(
        f"""
        import json, sys
        from kd.config import SplitConfig
        from kd.data import make_splits
        out = make_splits(SplitConfig(source={str(archive)!r}), *sys.argv[1:4])
        # VmHWM, not ru_maxrss: Linux keeps ru_maxrss across fork+exec, so a child of a
        # large pytest process would report the parent's peak.
        status = open("/proc/self/status").read()
        peak_mb = int(status.split("VmHWM:")[1].split()[0]) / 1024
        print(json.dumps({{"peak_mb": peak_mb, "n": [out[k]["num_examples"]
              for k in ("train", "validation", "test")]}}))
        """
    )
    outs = [str(tmp_path / n) for n in ("tr", "va", "te")]
    proc = subprocess.run(
        [sys.executable, "-c", script, *outs],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["n"] == [40_000, 10_000, 10_000]
    assert result["peak_mb"] < 1536, result
