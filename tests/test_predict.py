"""kd.predict and ``python -m local_runner predict`` on real sample images and a real model.

One seed student is trained once per module (1 epoch on 300 shipped sample images, a few
seconds); the images are real CIFAR-10 test images from the shipped sample, written as PNG and
JPEG files of other sizes and modes. Run models are found in a fake pipeline root laid out
exactly as kfp.local writes it (``<root>/<pipeline>-<timestamp>/<task>/<output>`` plus
``executor_output.json``) and as KFP / Vertex AI write it to ``gs://`` (``<task>_<id>``
folders), the latter in the GCS emulator.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pytest
from PIL import Image

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:  # local_runner/ is not an installed package
    sys.path.insert(0, str(_REPO))

from kd.config import CLASS_NAMES, StudentConfig  # noqa: E402
from kd.data import load_cifar10  # noqa: E402
from kd.errors import ArtifactError, ConfigError, DataError  # noqa: E402
from kd.evaluate import predict_logits, softmax  # noqa: E402
from kd.export import export_serving, saved_model_logits  # noqa: E402
from kd.model_folder import load_model  # noqa: E402
from kd.predict import (  # noqa: E402
    load_images,
    load_inputs,
    load_predict_model,
    predict,
    predict_files,
    resolve_model,
)
from kd.train import train_student_scratch  # noqa: E402
from local_runner.__main__ import main  # noqa: E402

RUN_OLD = "kd-cifar10-2026-01-02-03-04-05-000001"
RUN_NEW = "kd-cifar10-2026-02-03-04-05-06-000002"
N_IMAGES = 8


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A seed student trained 1 epoch on 300 real sample images, and real test images."""
    data = load_cifar10("sample")
    out = tmp_path_factory.mktemp("student")
    train_student_scratch(
        (data.x_train[:300], data.y_train[:300]),
        (data.x_test[::50], data.y_test[::50]),  # 10 per class (sorted by class)
        StudentConfig(epochs=1, batch_size=50, divergence_check_epoch=0),
        out,
        log=lambda _: None,
    )
    model = load_model(out)
    return {
        "dir": out,
        "file": out / "model.keras",
        "model": model,
        "x": data.x_test[:N_IMAGES],
        "y": data.y_test[:N_IMAGES],
    }


def _probs(model: Any, x: np.ndarray) -> np.ndarray:
    return softmax(predict_logits(model, x))


def _cli_json(argv: list[str], capsys: pytest.CaptureFixture[str]) -> list[dict[str, Any]]:
    assert main(["predict", *argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def _check_rows(rows: list[dict[str, Any]], probs: np.ndarray, top_k: int) -> None:
    """The CLI rows are exactly the softmax top-k of ``probs``."""
    assert len(rows) == len(probs)
    for row, p in zip(rows, probs, strict=True):
        order = np.argsort(-p, kind="stable")[:top_k]
        assert [t["index"] for t in row["top_k"]] == order.tolist()
        assert [t["class"] for t in row["top_k"]] == [CLASS_NAMES[i] for i in order]
        np.testing.assert_allclose([t["probability"] for t in row["top_k"]], p[order], rtol=1e-6)
        assert (row["class"], row["index"]) == (CLASS_NAMES[order[0]], int(order[0]))
        assert row["probability"] == row["top_k"][0]["probability"]


# ---------------------------------------------------------------------------------------------
# Images -> predictions.


def test_png_of_the_original_pixels_predicts_exactly_like_the_arrays(
    trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "png"
    folder.mkdir()
    for i, img in enumerate(trained["x"]):
        Image.fromarray(img).save(folder / f"img{i}.png")
    (folder / "notes.txt").write_text("not an image, skipped in a folder")
    x, names = load_images([folder])
    assert x.dtype == np.uint8 and x.shape == (N_IMAGES, 32, 32, 3)
    np.testing.assert_array_equal(x, trained["x"])  # lossless: the very pixels
    assert names == [str(folder / f"img{i}.png") for i in range(N_IMAGES)]

    rows = _cli_json([str(trained["dir"]), str(folder), "--top-k", "3"], capsys)
    assert [r["input"] for r in rows] == names
    assert all(r["model"] == str(trained["file"]) for r in rows)
    _check_rows(rows, _probs(trained["model"], trained["x"]), 3)
    # the library gives the same rows
    assert predict_files(str(trained["file"]), [folder], top_k=3) == rows


def test_other_sizes_and_modes_match_predict_logits_on_the_decoded_images(
    trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    x = trained["x"]
    folder = tmp_path / "mixed"
    folder.mkdir()
    # 64x64 nearest-neighbour upscale: BOX downscaling gives back the original pixels.
    Image.fromarray(x[0]).resize((64, 64), Image.Resampling.NEAREST).save(folder / "a_up64.png")
    # JPEG, bicubic upscale to 64x64 (lossy: compared on the decoded pixels).
    Image.fromarray(x[1]).resize((64, 64), Image.Resampling.BICUBIC).save(
        folder / "b_up64.jpg", quality=90
    )
    # Grayscale PNG: replicated into R, G, B.
    gray = Image.fromarray(x[2]).convert("L")
    gray.save(folder / "c_gray.png")
    # RGBA with a fully transparent left half: composited onto white.
    rgba = np.dstack([x[3], np.full((32, 32), 255, np.uint8)])
    rgba[:, :16, 3] = 0
    Image.fromarray(rgba, mode="RGBA").save(folder / "d_rgba.png")
    # Non-square 48x32: the centre square is the original image (fit="crop").
    wide = np.concatenate([np.zeros((32, 8, 3), np.uint8), x[4], np.zeros((32, 8, 3), np.uint8)], 1)
    Image.fromarray(wide).save(folder / "e_wide.png")
    # 16-bit grayscale and a palette image.
    g16 = np.asarray(gray, dtype=np.uint16) * 257
    Image.fromarray(g16).save(folder / "f_gray16.png")
    Image.fromarray(x[5]).convert("P", palette=Image.Palette.ADAPTIVE).save(folder / "g_pal.png")
    # A large JPEG (downscaled 8x by area averaging).
    Image.fromarray(x[6]).resize((256, 256), Image.Resampling.BICUBIC).save(folder / "h_big.jpeg")

    dec, names = load_images([folder])
    assert dec.shape == (8, 32, 32, 3) and dec.dtype == np.uint8
    assert [Path(n).name for n in names] == sorted(p.name for p in folder.iterdir())
    np.testing.assert_array_equal(dec[0], x[0])
    g = np.asarray(gray)
    np.testing.assert_array_equal(dec[2], np.repeat(g[..., None], 3, axis=2))
    np.testing.assert_array_equal(dec[3][:, :16], 255)
    np.testing.assert_array_equal(dec[3][:, 16:], x[3][:, 16:])
    np.testing.assert_array_equal(dec[4], x[4])
    np.testing.assert_array_equal(dec[5], dec[2])  # 16-bit gray -> the same 8-bit gray
    # lossy ones are still close to the original image
    assert np.abs(dec[1].astype(int) - x[1]).mean() < 12
    assert np.abs(dec[7].astype(int) - x[6]).mean() < 12

    rows = _cli_json([str(trained["file"]), str(folder), "--top-k", "10"], capsys)
    _check_rows(rows, _probs(trained["model"], dec), 10)
    # exactly the model's predictions on the original arrays where the pixels are exact
    exact = _probs(trained["model"], x[[0, 4]])
    _check_rows([rows[0], rows[4]], exact, 10)

    stretched, _ = load_images([folder / "e_wide.png"], fit="stretch")
    assert not np.array_equal(stretched[0], x[4])


def test_npz_inputs_with_labels_and_table_and_csv(
    trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    npz = tmp_path / "batch.npz"
    np.savez(npz, x=trained["x"], y=trained["y"])
    test_npz = tmp_path / "test.npz"
    np.savez(test_npz, x_test=trained["x"][:3])
    got = load_inputs([npz, test_npz])
    np.testing.assert_array_equal(got.x, np.concatenate([trained["x"], trained["x"][:3]]))
    assert got.names[0] == f"{npz}[0]" and got.names[-1] == f"{test_npz}[2]"
    assert got.labels == [int(v) for v in trained["y"]] + [None] * 3

    assert main(["predict", str(trained["dir"]), str(npz)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"model: {trained['file']}"
    assert out[1].split() == ["INPUT", "CLASS", "PROB", "TOP-K", "LABEL"]
    assert len(out) == 2 + N_IMAGES + 1 and out[-1].startswith("accuracy ")
    probs = _probs(trained["model"], trained["x"])
    first = out[2].split()
    assert first[0] == f"{npz}[0]" and first[1] == CLASS_NAMES[int(probs[0].argmax())]
    assert first[-1] == CLASS_NAMES[int(trained["y"][0])]

    csv_path = tmp_path / "out" / "preds.csv"
    assert main(["predict", str(trained["dir"]), str(npz), "--csv", str(csv_path)]) == 0
    assert "wrote 8 predictions" in capsys.readouterr().out
    import csv

    with open(csv_path, newline="") as f:
        records = list(csv.DictReader(f))
    assert len(records) == N_IMAGES
    assert list(records[0])[:6] == [
        "input",
        "class",
        "index",
        "probability",
        "top1_class",
        "top1_probability",
    ]
    assert {"top3_class", "label", "label_class", "model"} <= set(records[0])
    assert [r["class"] for r in records] == [CLASS_NAMES[i] for i in probs.argmax(1)]
    np.testing.assert_allclose([float(r["probability"]) for r in records], probs.max(1), atol=1e-6)
    assert not [p for p in csv_path.parent.iterdir() if p.name != "preds.csv"]  # no temp left


def test_predict_api(trained: dict) -> None:
    rows = predict(trained["model"], trained["x"], top_k=1)
    assert all(len(r["top_k"]) == 1 for r in rows)
    names = [f"c{i}" for i in range(10)]
    assert predict(trained["model"], trained["x"][:1], 2, class_names=names)[0]["class"] in names
    for bad in (0, 11, True, 2.0):
        with pytest.raises(ConfigError, match="top_k"):
            predict(trained["model"], trained["x"], top_k=bad)
    with pytest.raises(ArtifactError, match="10 logits but 3 class names"):
        predict(trained["model"], trained["x"], top_k=1, class_names=["a", "b", "c"])


# ---------------------------------------------------------------------------------------------
# SavedModel parity.


def test_saved_model_signature_predicts_like_the_keras_model(trained: dict, tmp_path: Path) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i, img in enumerate(trained["x"]):
        Image.fromarray(img).save(folder / f"{i}.png")
        Image.fromarray(img).resize((48, 48), Image.Resampling.BICUBIC).save(folder / f"{i}.jpg")
    x, _ = load_images([folder])
    export = tmp_path / "blessed"
    info = export_serving(trained["dir"], export, check_images=x)
    assert info["same_predictions"]
    ref = predict_logits(trained["model"], x)
    got = saved_model_logits(export, x)
    np.testing.assert_array_equal(got.argmax(1), ref.argmax(1))
    np.testing.assert_allclose(got, ref, atol=1e-4)
    # the blessed export folder is itself a model spec (its model.keras)
    assert resolve_model(str(export)) == export / "model.keras"
    rows = predict_files(str(export), [folder], top_k=3)
    assert [r["index"] for r in rows] == ref.argmax(1).tolist()


# ---------------------------------------------------------------------------------------------
# Model specs: run layouts, gs://.


def _write_task(run: Path, task: str, output: str, model_file: Path | None) -> None:
    """A task folder as kfp.local writes it: ``<task>/<output>/`` and executor_output.json."""
    art = run / task / output
    art.mkdir(parents=True)
    if model_file is not None:
        shutil.copyfile(model_file, art / "model.keras")
    eo = {
        "artifacts": {
            output: {"artifacts": [{"name": output, "uri": str(art), "metadata": {"x": 1}}]}
        }
    }
    (run / task / "executor_output.json").write_text(json.dumps(eo))


@pytest.fixture
def run_root(trained: dict, tmp_path: Path) -> Path:
    """Two kfp.local-shaped runs: an older one with only a teacher, a newer complete one."""
    root = tmp_path / "runs"
    old = root / RUN_OLD
    _write_task(old, "data-split", "train", None)
    _write_task(old, "train-teacher", "model", trained["file"])
    new = root / RUN_NEW
    for task, out in (
        ("train-teacher", "model"),
        ("train-student-scratch", "model"),
        ("distill-student", "model"),
        ("export-model", "blessed"),
    ):
        _write_task(new, task, out, trained["file"])
    return root


def test_run_specs_resolve_in_a_local_pipeline_root(
    run_root: Path, trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    new, old = run_root / RUN_NEW, run_root / RUN_OLD
    root = str(run_root)
    assert resolve_model("teacher", root) == new / "train-teacher" / "model" / "model.keras"
    assert resolve_model("latest:student_distilled", root) == (
        new / "distill-student" / "model" / "model.keras"
    )
    assert resolve_model(f"{RUN_NEW}:student_scratch", root) == (
        new / "train-student-scratch" / "model" / "model.keras"
    )
    assert resolve_model("blessed", root) == new / "export-model" / "blessed" / "model.keras"
    assert resolve_model("kd-cifar10-2026-01:teacher", root) == (  # a unique prefix
        old / "train-teacher" / "model" / "model.keras"
    )
    with pytest.raises(ArtifactError, match=f"run {RUN_OLD} .* has no blessed model.*quality"):
        resolve_model(f"{RUN_OLD}:blessed", root)
    with pytest.raises(DataError, match="no run 'nope'.*Known runs.*" + RUN_NEW):
        resolve_model("nope:teacher", root)
    with pytest.raises(ArtifactError, match="'studnet' is not one of teacher, student_distilled"):
        resolve_model("studnet", root)
    with pytest.raises(DataError, match="pipeline root .*missing does not exist"):
        resolve_model("teacher", str(tmp_path / "missing"))

    np.savez(tmp_path / "one.npz", x=trained["x"][:2])
    args = [f"{RUN_NEW}:teacher", str(tmp_path / "one.npz"), "--pipeline-root", root]
    rows = _cli_json(args, capsys)
    assert rows[0]["model"] == str(new / "train-teacher" / "model" / "model.keras")
    _check_rows(rows, _probs(trained["model"], trained["x"][:2]), 3)


def test_gcs_model_uris_and_gcs_run_roots(trained: dict, tmp_path: Path, gcs_emulator: Any) -> None:
    bucket = gcs_emulator.bucket("kd-test")
    bucket.blob("models/student/model.keras").upload_from_filename(str(trained["file"]))
    bucket.blob("models/student/info.json").upload_from_string("{}")
    np.savez(tmp_path / "x.npz", x=trained["x"])
    want = [r["index"] for r in predict(trained["model"], trained["x"])]

    for uri in ("gs://kd-test/models/student", "gs://kd-test/models/student/model.keras"):
        rows = predict_files(uri, [tmp_path / "x.npz"])
        assert [r["index"] for r in rows] == want
        assert rows[0]["model"] == uri
    path = resolve_model("gs://kd-test/models/student/", cache_dir=tmp_path / "cache")
    assert path.is_relative_to(tmp_path / "cache") and path.name == "model.keras"
    assert path.read_bytes() == trained["file"].read_bytes()

    # a KFP / Vertex AI run: <root>/<pipeline>/<run>/<task>_<id>/<output>, gs:// uris
    run = "pr/kd-cifar10/kd-cifar10-20260203040506"
    for i, (task, out) in enumerate((("train-teacher", "model"), ("distill-student", "model"))):
        folder = f"{run}/{task}_{100 + i}"
        bucket.blob(f"{folder}/{out}/model.keras").upload_from_filename(str(trained["file"]))
        uri = f"gs://kd-test/{folder}/{out}"
        eo = {"artifacts": {out: {"artifacts": [{"name": out, "uri": uri, "metadata": {}}]}}}
        bucket.blob(f"{folder}/executor_output.json").upload_from_string(json.dumps(eo))
    rows = predict_files("student_distilled", [tmp_path / "x.npz"], root="gs://kd-test/pr")
    assert rows[0]["model"] == f"gs://kd-test/{run}/distill-student_101/model"
    assert [r["index"] for r in rows] == want
    with pytest.raises(ArtifactError, match="has no student_scratch model"):
        resolve_model("latest:student_scratch", "gs://kd-test/pr")

    bucket.blob("models/plain").upload_from_filename(str(trained["file"]))  # no suffix
    assert [
        r["index"] for r in predict_files("gs://kd-test/models/plain", [tmp_path / "x.npz"])
    ] == (want)
    with pytest.raises(ArtifactError, match="no model at gs://kd-test/models/nothing"):
        resolve_model("gs://kd-test/models/nothing")
    with pytest.raises(DataError, match="no object at gs://kd-test/models/x.keras"):
        resolve_model("gs://kd-test/models/x.keras")


# ---------------------------------------------------------------------------------------------
# Errors.


def test_model_errors_name_the_file(trained: dict, tmp_path: Path) -> None:
    not_model = tmp_path / "model.keras"
    not_model.write_text("hello")
    with pytest.raises(ArtifactError, match=f"{not_model} is not a loadable Keras model"):
        load_predict_model(not_model)
    empty = tmp_path / "empty_model_dir"
    empty.mkdir()
    (empty / "history.json").write_text("{}")
    with pytest.raises(ArtifactError, match="holds no model.keras.*history.json"):
        resolve_model(str(empty))
    with pytest.raises(ArtifactError, match="no model file or folder at .*nothere.keras"):
        resolve_model(str(tmp_path / "nothere.keras"))

    for name, shape, classes in (("mnist", (28, 28, 1), 10), ("five", (32, 32, 3), 5)):
        inputs = keras.Input(shape)
        model = keras.Model(inputs, keras.layers.Dense(classes)(keras.layers.Flatten()(inputs)))
        path = tmp_path / f"{name}.keras"
        model.save(path)
        with pytest.raises(ArtifactError, match=f"model {path} takes inputs.*expected one"):
            load_predict_model(path)


def test_input_errors_name_the_file(trained: dict, tmp_path: Path) -> None:
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n but truncated")
    with pytest.raises(DataError, match=f"cannot decode image {bad}"):
        load_images([bad])
    folder = tmp_path / "with_bad"
    folder.mkdir()
    Image.fromarray(trained["x"][0]).save(folder / "a.png")
    (folder / "b.jpg").write_bytes(b"not a jpeg")
    with pytest.raises(DataError, match=r"cannot decode image .*b\.jpg"):
        load_images([folder])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match=f"folder {empty} holds no image"):
        load_images([empty])
    with pytest.raises(DataError, match="does not exist"):
        load_images([tmp_path / "missing.png"])
    with pytest.raises(DataError, match="no inputs"):
        load_images([])
    with pytest.raises(ConfigError, match="fit"):
        load_images([folder / "a.png"], fit="zoom")
    for name, arrays, match in (
        ("nox.npz", {"images": trained["x"]}, "no array x or x_test"),
        ("shape.npz", {"x": trained["x"][:, :16]}, r"shape \(8, 16, 32, 3\)"),
        ("scaled.npz", {"x": trained["x"] / 255.0}, "fractional values"),
        ("labels.npz", {"x": trained["x"], "y": trained["y"][:3]}, "3 uint8 values for 8"),
    ):
        np.savez(tmp_path / name, **arrays)
        with pytest.raises(DataError, match=f"{tmp_path / name}.*{match}"):
            load_images([tmp_path / name])


def test_cli_errors_are_one_line_and_exit_2(
    trained: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.png"
    bad.write_text("not an image")
    Image.fromarray(trained["x"][0]).save(tmp_path / "ok.png")
    # in a fresh process: stderr holds only the error (no TensorFlow start-up logs)
    cases = [
        ([str(trained["dir"]), str(bad)], f"error: cannot decode image {bad}"),
        ([str(tmp_path / "ok.png"), str(tmp_path / "ok.png")], "is not a loadable Keras model"),
    ]
    for argv, expected in cases:
        proc = subprocess.run(
            [sys.executable, "-m", "local_runner", "predict", *argv],
            cwd=_REPO,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
        assert expected in lines[0]
        assert proc.stdout == ""

    for argv, expected in (
        (["studnet", str(tmp_path / "ok.png")], "error: model spec 'studnet' is not"),
        (
            [str(trained["dir"]), str(tmp_path / "ok.png"), "--top-k", "11"],
            "error: invalid top_k=11",
        ),
        (
            ["teacher", str(tmp_path / "ok.png"), "--pipeline-root", str(tmp_path / "no_runs")],
            "error: cannot find model latest:teacher under pipeline root",
        ),
        (
            [str(trained["dir"]), str(tmp_path / "ok.png"), "--csv", str(bad / "x.csv")],
            "error: cannot create output folder",
        ),
    ):
        assert main(["predict", *argv]) == 2
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith(expected), captured.err
        assert captured.out == ""


def test_exif_orientation_is_applied(trained: dict, tmp_path: Path) -> None:
    """A photo stored upside down with EXIF orientation 3 (rotate 180) decodes upright."""
    img = trained["x"][0]
    exif = Image.Exif()
    exif[0x0112] = 3
    Image.fromarray(img[::-1, ::-1]).save(tmp_path / "rotated.png", exif=exif)
    x, _ = load_images([tmp_path / "rotated.png"])
    np.testing.assert_array_equal(x[0], img)
