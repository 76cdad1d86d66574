"""Bring your own teacher: what ``check_teacher`` admits, refuses and records."""

import json

import numpy as np

from kd.teacher import (
    SHIPPED,
    check_teacher,
    shipped_teacher_path,
    teacher_identity,
)

LEVELS = np.arange(10) * 25.0  # class c: every pixel at 25 * c


def _data(n_per_class: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """Images whose class is their brightness (class c: all pixels 25 * c)."""
    y = np.repeat(np.arange(10), n_per_class).astype(np.uint8)
    x = np.broadcast_to(LEVELS[y].reshape(-1, 1, 1, 1), (len(y), 32, 32, 3)).astype(np.uint8)
    return x, y


def _brightness_teacher(shape=(32, 32, 3), classes=10, name="bright_teacher", wrong=False):
    """A model that reads the class off the mean brightness m: logit_c = 2 m mu_c - mu_c^2
    (the nearest class level wins); ``wrong`` shifts every prediction by one class."""
    import keras

    inputs = keras.Input(shape, name="image")
    m = keras.layers.GlobalAveragePooling2D()(inputs)
    m = keras.layers.Dense(1, use_bias=False, name="mean")(m)
    logits = keras.layers.Dense(classes, name="logits")(m)
    model = keras.Model(inputs, logits, name=name)
    model.get_layer("mean").set_weights([np.full((shape[-1], 1), 1.0 / shape[-1], np.float32)])
    mu = np.resize(LEVELS, classes).astype(np.float32)
    if wrong:
        mu = np.roll(mu, 1)
    model.get_layer("logits").set_weights([2 * mu[None, :] / 100, -(mu**2) / 100])
    return model


def _save(model, path):
    model.save(str(path))
    return path


def test_a_good_teacher_is_admitted_measured_and_identified(tmp_path):
    src = _save(_brightness_teacher(), tmp_path / "mine.keras")
    info = check_teacher(src, _data(), "seed", tmp_path / "out", uri="gs://b/mine.keras")
    assert info["val_accuracy"] == 1.0
    assert info["uri"] == "gs://b/mine.keras" and info["architecture"] == "bright_teacher"
    import hashlib

    assert info["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    written = json.loads((tmp_path / "out" / "info.json").read_text())
    assert written == json.loads(json.dumps(info))
    assert (tmp_path / "out" / "model.keras").read_bytes() == src.read_bytes()
    who = teacher_identity(tmp_path / "out")
    assert who["source"] == "imported" and who["sha256"] == info["sha256"]
    assert who["parameters"] == info["parameters"]["total"]


def test_a_teacher_no_larger_than_the_student_is_admitted_with_a_warning(tmp_path):
    lines = []
    src = _save(_brightness_teacher(), tmp_path / "small.keras")
    check_teacher(src, _data(), "seed", tmp_path / "out", log=lines.append)
    assert any("is no larger than the seed student" in line for line in lines)


def test_the_model_folder_of_an_earlier_run_is_a_teacher(tmp_path):
    folder = tmp_path / "run" / "model"
    folder.mkdir(parents=True)
    _save(_brightness_teacher(), folder / "model.keras")
    (folder / "info.json").write_text(json.dumps({"preset": "seed", "best_val_accuracy": 0.9}))
    info = check_teacher(folder, _data(), "seed", tmp_path / "out")
    assert info["provenance"]["preset"] == "seed"


def test_the_shipped_teacher_is_larger_than_its_students_and_says_where_it_came_from():
    path = shipped_teacher_path()
    record = json.loads(path.with_suffix(".json").read_text())
    import hashlib

    assert record["model_sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert record["data"]["train_images"] == 45_000
    assert record["test_images"] == 10_000
    assert path.stat().st_size <= 16 * 2**20
    from kd.models import build_model, count_params

    student = count_params(build_model("seed", "student"))["total"]
    assert record["parameters"]["total"] > student
    assert SHIPPED == "shipped"
