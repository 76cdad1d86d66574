"""Serving and edge exports of a real (tiny) trained seed student, checked on real images.

The student is trained once per module (1 epoch on 300 shipped sample images) and exported
once to TFLite float32 and int8; every check loads the files back and predicts on 500 real
test images of the shipped sample.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

_REPO = Path(__file__).resolve().parents[1]
if str(_REPO) not in sys.path:  # local_runner/ is not an installed package
    sys.path.insert(0, str(_REPO))

from kd.config import StudentConfig  # noqa: E402
from kd.data import load_cifar10  # noqa: E402
from kd.errors import ArtifactError, DataError  # noqa: E402
from kd.evaluate import predict_logits  # noqa: E402
from kd.export import (  # noqa: E402
    ONNX_FILE,
    ONNX_JSON,
    TFLITE_FLOAT32,
    TFLITE_INT8,
    TFLITE_JSON,
    export_onnx,
    export_serving,
    export_tflite,
    load_tflite,
    onnx_logits,
    onnx_session,
    saved_model_logits,
    tflite_logits,
)
from kd.model_folder import load_model  # noqa: E402
from kd.predict import load_predict_model, predict, predict_files, resolve_model  # noqa: E402
from kd.train import train_student_scratch  # noqa: E402


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A seed student (1 epoch, 300 sample images) and its TFLite exports with test metrics."""
    data = load_cifar10("sample")
    x_test, y_test = data.x_test[::10], data.y_test[::10]  # 50 per class (sorted by class)
    model_dir = tmp_path_factory.mktemp("student")
    train_student_scratch(
        (data.x_train[:300], data.y_train[:300]),
        (data.x_test[::50], data.y_test[::50]),  # 10 per class (sorted by class)
        StudentConfig(epochs=1, batch_size=50, divergence_check_epoch=0),
        model_dir,
        log=lambda _: None,
    )
    out = tmp_path_factory.mktemp("tflite")
    info = export_tflite(
        model_dir,
        out,
        data.x_train[:200],
        (x_test, y_test),
        latency_runs=20,
    )
    model = load_model(model_dir)
    return {
        "model_dir": model_dir,
        "model": model,
        "out": out,
        "info": info,
        "x": x_test,
        "y": y_test,
        "x_cal": data.x_train[:200],
        "ref": predict_logits(model, x_test),
    }


def test_float32_tflite_agrees_with_keras(exported: dict) -> None:
    got = tflite_logits(exported["out"] / TFLITE_FLOAT32, exported["x"])
    ref = exported["ref"]
    assert got.shape == ref.shape == (500, 10) and got.dtype == np.float32
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.99
    np.testing.assert_allclose(got, ref, atol=1e-3)


def test_int8_tflite_agrees_with_keras_and_takes_raw_pixels(exported: dict) -> None:
    path = exported["out"] / TFLITE_INT8
    interp = load_tflite(path)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    assert np.dtype(inp["dtype"]) == np.uint8 and np.dtype(out["dtype"]) == np.int8
    assert inp["quantization"] == (1.0, 0)  # the raw RGB pixels are the input
    got = tflite_logits(path, exported["x"])
    ref = exported["ref"]
    assert (got.argmax(1) == ref.argmax(1)).mean() >= 0.90
    # dequantized logits are on the Keras logits' scale (within a few quantization steps)
    scale = out["quantization"][0]
    assert np.abs(got - ref).mean() < 4 * scale
    # float images (0-255) give the same result as uint8 ones
    np.testing.assert_array_equal(
        tflite_logits(path, exported["x"][:20].astype(np.float32)), got[:20]
    )
    # batch size does not change the result
    np.testing.assert_array_equal(tflite_logits(interp, exported["x"][:50], batch_size=7), got[:50])


def test_sizes_and_tflite_json(exported: dict) -> None:
    out, info = exported["out"], exported["info"]
    f32, i8 = (out / TFLITE_FLOAT32).stat().st_size, (out / TFLITE_INT8).stat().st_size
    assert i8 < f32 / 3
    on_disk = json.loads((out / TFLITE_JSON).read_text())
    assert on_disk == json.loads(json.dumps(info))
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [TFLITE_JSON, TFLITE_FLOAT32, TFLITE_INT8]
    )
    for kind, size in (("float32", f32), ("int8", i8)):
        entry = info[kind]
        assert entry["size_bytes"] == size
        for key in (
            "file",
            "input",
            "output",
            "accuracy",
            "accuracy_drop_points",
            "agreement_with_keras",
            "latency_p50_ms",
            "latency_p95_ms",
        ):
            assert key in entry, (kind, key)
        assert 0 < entry["latency_p50_ms"] <= entry["latency_p95_ms"]
        path = out / (TFLITE_FLOAT32 if kind == "float32" else TFLITE_INT8)
        own = float((tflite_logits(path, exported["x"]).argmax(1) == exported["y"]).mean())
        assert entry["accuracy"] == pytest.approx(own)  # the file's own test accuracy
        assert entry["accuracy_drop_points"] == pytest.approx(
            (info["keras"]["accuracy"] - entry["accuracy"]) * 100
        )
    assert info["keras"]["accuracy"] == pytest.approx(
        float((exported["ref"].argmax(1) == exported["y"]).mean())
    )
    assert info["int8"]["input_is_raw_pixels"] is True
    assert info["int8"]["output"]["dtype"] == "int8" and info["int8"]["output"]["scale"] > 0
    assert info["float32"]["accuracy_drop_points"] == pytest.approx(0.0, abs=0.5)
    assert info["calibration_images"] == 200 and info["latency_runs"] == 20
    assert info["int8_vs_float32_size_ratio"] == pytest.approx(f32 / i8)


def test_predict_path_handles_both_tflite_files(exported: dict, tmp_path: Path) -> None:
    np.savez(tmp_path / "x.npz", x=exported["x"][:40], y=exported["y"][:40])
    keras_rows = predict(exported["model"], exported["x"][:40])
    for name, min_agree in ((TFLITE_FLOAT32, 0.99), (TFLITE_INT8, 0.9)):
        path = exported["out"] / name
        assert resolve_model(str(path)) == path
        rows = predict_files(str(path), [tmp_path / "x.npz"], top_k=3)
        agree = np.mean([a["index"] == b["index"] for a, b in zip(rows, keras_rows, strict=True)])
        assert agree >= min_agree
        assert all(sum(t["probability"] for t in r["top_k"]) <= 1 + 1e-6 for r in rows)
        assert rows[0]["model"] == str(path) and rows[0]["label"] == int(exported["y"][0])


def test_export_from_a_serving_export_and_without_test_set(exported: dict, tmp_path: Path) -> None:
    serving = tmp_path / "blessed"
    info = export_serving(exported["model_dir"], serving, check_images=exported["x"][:16])
    assert info["saved_model"] == {"vertex": ".", "tf_serving": "serving/kd_student/1"}
    assert info["same_predictions"] and info["max_abs_logit_diff"] < 1e-4
    for layout in (serving, serving / "serving" / "kd_student" / "1"):
        np.testing.assert_allclose(
            saved_model_logits(layout, exported["x"][:16]), exported["ref"][:16], atol=1e-4
        )
    info = export_tflite(serving, tmp_path / "edge", exported["x_cal"][:50], latency_runs=3)
    assert "accuracy" not in info["int8"] and info["int8"]["latency_p50_ms"] > 0
    got = tflite_logits(tmp_path / "edge" / TFLITE_FLOAT32, exported["x"][:16])
    np.testing.assert_allclose(got, exported["ref"][:16], atol=1e-3)


def test_errors(exported: dict, tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"calibration_images must be .*got shape \(5, 32, 32\)"):
        export_tflite(exported["model_dir"], tmp_path / "e", exported["x"][:5, :, :, 0])
    with pytest.raises(DataError, match="test has 10 images but 9 labels"):
        export_tflite(
            exported["model_dir"],
            tmp_path / "e",
            exported["x_cal"],
            (exported["x"][:10], exported["y"][:9]),
        )
    with pytest.raises(ArtifactError, match="no model at"):
        export_tflite(tmp_path / "missing", tmp_path / "e", exported["x_cal"])
    fake = tmp_path / "fake.tflite"
    fake.write_bytes(b"not a flatbuffer")
    with pytest.raises(ArtifactError, match=f"{fake} is not a loadable TFLite model"):
        load_predict_model(fake)
    with pytest.raises(ArtifactError, match="no TFLite model at"):
        tflite_logits(tmp_path / "none.tflite", exported["x"][:1])
    with pytest.raises(DataError, match=r"\(N, 32, 32, 3\)"):
        tflite_logits(exported["out"] / TFLITE_INT8, exported["x"][:2, :16])
    assert not (tmp_path / "e").exists() or not any((tmp_path / "e").iterdir())


def test_onnx_export_of_the_serving_model_agrees_with_keras(exported: dict, tmp_path: Path) -> None:
    serving = tmp_path / "blessed"
    export_serving(exported["model_dir"], serving)
    out = tmp_path / "edge"
    info = export_onnx(
        serving, out, (exported["x"], exported["y"]), reference=exported["model"], latency_runs=5
    )
    assert sorted(p.name for p in out.iterdir()) == sorted([ONNX_JSON, ONNX_FILE])
    assert json.loads((out / ONNX_JSON).read_text()) == json.loads(json.dumps(info))
    sess = onnx_session(out / ONNX_FILE)
    # images alone go in (no constant left as a graph input), logits come out
    assert [i.name for i in sess.get_inputs()] == ["image"]
    got = onnx_logits(out / ONNX_FILE, exported["x"])
    ref = exported["ref"]
    assert got.shape == (500, 10) and got.dtype == np.float32
    np.testing.assert_allclose(got, ref, atol=1e-3)
    np.testing.assert_array_equal(onnx_logits(sess, exported["x"][:50], batch_size=7), got[:50])
    own = float((got.argmax(1) == exported["y"]).mean())
    assert info["accuracy"] == pytest.approx(own)
    assert info["keras_accuracy"] == pytest.approx(float((ref.argmax(1) == exported["y"]).mean()))
    assert info["accuracy_drop_points"] == pytest.approx((info["keras_accuracy"] - own) * 100)
    assert info["agreement_with_keras"] == pytest.approx(
        float((got.argmax(1) == ref.argmax(1)).mean())
    )
    assert info["size_bytes"] == (out / ONNX_FILE).stat().st_size
    assert 0 < info["latency_p50_ms"] <= info["latency_p95_ms"]
    # kd.predict takes the .onnx file
    np.savez(tmp_path / "x.npz", x=exported["x"][:40], y=exported["y"][:40])
    rows = predict_files(str(out / ONNX_FILE), [tmp_path / "x.npz"], top_k=3)
    keras_rows = predict(exported["model"], exported["x"][:40])
    assert [r["index"] for r in rows] == [r["index"] for r in keras_rows]


def test_onnx_errors(exported: dict, tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="no SavedModel at .*saved_model.pb missing"):
        export_onnx(exported["model_dir"], tmp_path / "e")
    assert not (tmp_path / "e").exists()
    fake = tmp_path / "fake.onnx"
    fake.write_bytes(b"not a protobuf")
    with pytest.raises(ArtifactError, match=f"{fake} is not an ONNX model onnxruntime can load"):
        load_predict_model(fake)
    with pytest.raises(ArtifactError, match="no ONNX model at"):
        onnx_logits(tmp_path / "none.onnx", exported["x"][:1])
