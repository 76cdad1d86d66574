"""Training loop: augmentation, determinism, divergence detection, resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import zipfile
from dataclasses import replace
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from kd.config import StudentConfig
from kd.errors import ArtifactError, ConfigError, DivergenceError
from kd.model_folder import load_model
from kd.train import (
    AUGMENT_KEY,
    IMAGE_KEY,
    BatchSequence,
    EpochCheckpoint,
    augment_batch,
    crop_flip,
    draw_augmentation,
    identity_augmentation,
    train_student_scratch,
    training_model,
)

WORKER = Path(__file__).with_name("train_worker.py")
RNG = np.random.default_rng(0)


def _data(n: int = 200) -> tuple[np.ndarray, np.ndarray]:
    x = RNG.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
    return x, np.arange(n) % 10


def test_augment_is_a_padded_crop_or_its_mirror():
    x, _ = _data(16)
    out = augment_batch(x, np.random.default_rng(1))
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = np.pad(x, ((0, 0), (4, 4), (4, 4), (0, 0)))
    for i in range(len(x)):
        windows = [padded[i, a : a + 32, b : b + 32] for a in range(9) for b in range(9)]
        assert any(np.array_equal(out[i], w) or np.array_equal(out[i], w[:, ::-1]) for w in windows)
    # Not the identity for every image.
    assert not np.array_equal(out, x)


def test_device_batches_are_refused_off_jax():
    """On TensorFlow the input pipeline would copy device arrays back: a clear error instead
    (the device path itself is tested on JAX, tests/test_jax_backend.py)."""
    assert keras.backend.backend() == "tensorflow"
    x, y = _data(8)
    assert BatchSequence(x, y, 4, seed=0, shuffle=False, augment=False)._device is None
    with pytest.raises(ConfigError, match="needs the JAX backend, not 'tensorflow'.*Fix:"):
        BatchSequence(x, y, 4, seed=0, shuffle=False, augment=False, on_device=True)


def test_device_crop_flip_equals_the_numpy_reference_bit_for_bit():
    x, _ = _data(64)
    expected = augment_batch(x, np.random.default_rng(3))
    params = draw_augmentation(np.random.default_rng(3), len(x))
    # Every offset and both flips occur, so every branch of the selection is exercised.
    assert set(params[:, 0]) == set(range(9)) and set(params[:, 2]) == {0, 1}
    got = keras.ops.convert_to_numpy(crop_flip(x, params))
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected.astype(np.float32))
    # The identity rows leave the images unchanged.
    ident = identity_augmentation(len(x))
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(crop_flip(x, ident)), x)


def test_training_model_crops_on_the_device_and_shares_the_weights():
    from kd.models import build_model

    model = build_model("seed", "student", seed=0)
    trainer = training_model(model)
    assert trainer.count_params() == model.count_params()
    x, _ = _data(8)
    params = draw_augmentation(np.random.default_rng(4), len(x))
    np.testing.assert_allclose(
        keras.ops.convert_to_numpy(trainer({IMAGE_KEY: x, AUGMENT_KEY: params})),
        keras.ops.convert_to_numpy(model(augment_batch(x, np.random.default_rng(4)))),
        rtol=1e-5,
        atol=1e-5,
    )


def test_batches_send_uint8_images_and_the_augmentation_rows():
    x, y = _data(10)
    seq = BatchSequence(x, y, 4, seed=1, shuffle=False, augment=True)
    inputs, labels = seq.batch(0, 1)
    np.testing.assert_array_equal(inputs[IMAGE_KEY], x[4:8])  # raw uint8: 4x less to copy
    assert inputs[IMAGE_KEY].dtype == np.uint8 and inputs[AUGMENT_KEY].dtype == np.int32
    np.testing.assert_array_equal(
        inputs[AUGMENT_KEY], draw_augmentation(np.random.default_rng([1, 0, 1, 1]), 4)
    )
    plain = BatchSequence(x, y, 4, seed=1, shuffle=False, augment=False)
    assert plain.batch(0, 2)[0][AUGMENT_KEY].tolist() == [[4, 4, 0], [4, 4, 0]]
    np.testing.assert_array_equal(labels, y[4:8])


def test_a_training_batch_depends_on_its_request_only_not_on_earlier_requests():
    """Keras peeks at the first batches through a prefetching iterator (under a tf.distribute
    strategy) and drops it, and its background thread may still ask for batches once
    training has started. Request k is batch k mod n of epoch start + k // n whatever came
    before it (with a counter of requests, a stale request for the last batch would start a
    new epoch)."""
    x, y = _data(40)
    seq = BatchSequence(
        x,
        y,
        10,
        seed=2,
        shuffle=True,
        augment=True,
        start_epoch=3,
        drop_remainder=True,
        endless=True,
    )
    assert seq.num_batches is None and len(seq) == 4  # Keras gets steps_per_epoch=4
    expected = [seq.batch(3 + k // 4, k % 4) for k in range(8)]
    assert not np.array_equal(expected[0][0][IMAGE_KEY], expected[4][0][IMAGE_KEY])
    for k in range(8):
        seq[3]  # a stale iterator's request, e.g. the last batch of the first epoch
        inputs, labels = seq[k]
        np.testing.assert_array_equal(inputs[IMAGE_KEY], expected[k][0][IMAGE_KEY])
        np.testing.assert_array_equal(inputs[AUGMENT_KEY], expected[k][0][AUGMENT_KEY])
        np.testing.assert_array_equal(labels, expected[k][1])
    finite = BatchSequence(x, y, 10, seed=2, shuffle=True, augment=False)
    assert finite.num_batches == 4
    with pytest.raises(IndexError):
        finite[4]


def test_training_uses_full_batches_and_evaluation_one_batch_shape(tmp_path, monkeypatch):
    """One batch shape per pass: a partial batch would compile a second step."""
    import kd.train as kt

    assert kt.steps_per_epoch(100, 32) == 3 and kt.steps_per_epoch(20, 32) == 1
    assert kt.eval_batch_size(10_000) == 500 and kt.eval_batch_size(1_000) == 500
    assert kt.eval_batch_size(50) == 50
    assert kt.eval_batch_size(1009) == 512  # a prime: no divisor in [128, 512]
    shapes: dict[bool, set] = {True: set(), False: set()}
    seen: dict[tuple[int, int], np.ndarray] = {}

    class Recording(kt.BatchSequence):
        def batch(self, epoch, i):
            inputs, labels = super().batch(epoch, i)
            shapes[self.shuffle].add(len(labels))
            if self.shuffle:
                seen[(epoch, i)] = inputs[IMAGE_KEY]
            return inputs, labels

    monkeypatch.setattr(kt, "BatchSequence", Recording)
    x, y = _data(100)
    cfg = StudentConfig(epochs=2, batch_size=32, divergence_check_epoch=0)
    train_student_scratch((x, y), (x[:60], y[:60]), cfg, tmp_path / "out")
    assert shapes[True] == {32} and shapes[False] == {60}
    # Each epoch: 3 batches, 96 distinct images of the 100 (the input pipeline may prefetch
    # into an epoch after the last, which is never trained on).
    assert sorted(k for k in seen if k[0] < 2) == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    for epoch in (0, 1):
        images = np.concatenate([seen[(epoch, i)] for i in range(3)])
        assert len({img.tobytes() for img in images}) == 96


def test_batches_depend_only_on_seed_epoch_and_index():
    x, y = _data(100)
    a = BatchSequence(x, y, 32, seed=5, shuffle=True, augment=True, endless=True)
    resumed = BatchSequence(
        x, y, 32, seed=5, shuffle=True, augment=True, start_epoch=1, endless=True
    )
    first = [a[i] for i in range(len(a))]
    second = [a[len(a) + i] for i in range(len(a))]  # the next requests are epoch 1
    for i in range(len(a)):
        for key in (IMAGE_KEY, AUGMENT_KEY):
            np.testing.assert_array_equal(second[i][0][key], resumed[i][0][key])
            np.testing.assert_array_equal(first[i][0][key], a.batch(0, i)[0][key])
        np.testing.assert_array_equal(second[i][1], resumed[i][1])
    assert not np.array_equal(first[0][1], second[0][1])
    assert not np.array_equal(first[0][0][AUGMENT_KEY], second[0][0][AUGMENT_KEY])
    # One epoch covers every example once.
    labels = np.concatenate([b[1] for b in first])
    assert sorted(labels.tolist()) == sorted(y.tolist())


def test_divergence_is_detected_with_a_clear_error(tmp_path):
    x, y = _data(100)
    cfg = StudentConfig(
        epochs=3,
        batch_size=25,
        learning_rate=9.0,
        clipnorm=0.0,
        momentum=0.99,
        weight_decay=0.0,
        warmup_epochs=0,
        divergence_check_epoch=1,
        augment=False,
    )
    with pytest.raises(DivergenceError, match="diverged") as err:
        train_student_scratch((x, y), (x[:50], y[:50]), cfg, tmp_path / "out")
    assert "Fix:" in str(err.value)
    assert not (tmp_path / "out" / "model.keras").exists()


def test_validation_accuracy_at_chance_stops_the_run_from_the_check_epoch_on(tmp_path):
    """The second divergence rule: a finite loss, but validation accuracy at chance. Training
    sees classes 1-9 only and validation is all class 0, so validation accuracy stays ~0."""
    x, _ = _data(100)
    y = 1 + np.arange(100) % 9
    val = (x[:50], np.zeros(50, int))
    cfg = StudentConfig(epochs=2, batch_size=25, divergence_check_epoch=2, augment=False)
    with pytest.raises(DivergenceError, match=r"validation accuracy 0\.\d+ is at chance") as err:
        train_student_scratch((x, y), val, cfg, tmp_path / "on")
    assert "after 2 epochs" in str(err.value) and "Fix:" in str(err.value)
    assert not (tmp_path / "on" / "model.keras").exists()
    # The rule switched off, the same run finishes: it was the rule that stopped it.
    off = train_student_scratch(
        (x, y), val, replace(cfg, divergence_check_epoch=0), tmp_path / "off"
    )
    assert off.history["val_accuracy"][-1] <= 0.12 and np.isfinite(off.history["loss"]).all()


def test_outputs_and_history(tmp_path):
    x, y = _data(100)
    cfg = StudentConfig(epochs=2, batch_size=50, divergence_check_epoch=0)
    res = train_student_scratch((x, y), (x[:50], y[:50]), cfg, tmp_path / "out")
    hist = json.loads((tmp_path / "out" / "history.json").read_text())
    assert hist["epoch"] == [1, 2]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "lr"} <= set(hist)
    info = json.loads((tmp_path / "out" / "info.json").read_text())
    assert info["parameters"]["total"] == 545_098 and info["epochs_run"] == 2
    assert not (tmp_path / "out" / "checkpoint").exists()
    # The saved model holds the weights alone: no optimizer slots (a compiled model's clone
    # would carry them and double the file).
    with zipfile.ZipFile(tmp_path / "out" / "model.keras") as z:
        z.extract("model.weights.h5", tmp_path)
    with h5py.File(tmp_path / "model.weights.h5") as f:
        assert "optimizer" not in f
    size = (tmp_path / "out" / "model.keras").stat().st_size
    assert 545_098 * 4 < size < 545_098 * 4 * 1.1
    reloaded = load_model(tmp_path / "out")
    np.testing.assert_allclose(
        reloaded.predict(x[:4].astype("float32"), verbose=0),
        res.model.predict(x[:4].astype("float32"), verbose=0),
        rtol=1e-5,
    )


def test_load_model_refuses_non_models_and_code(tmp_path):
    bad = tmp_path / "model.keras"
    bad.write_text("not a model")
    with pytest.raises(ArtifactError, match="not a loadable Keras model"):
        load_model(bad)
    with pytest.raises(ArtifactError, match="no model at"):
        load_model(tmp_path / "missing")
    # A Lambda layer would run arbitrary code on load: safe_mode refuses it.
    inp = keras.Input((2,))
    m = keras.Model(inp, keras.layers.Lambda(lambda t: t * 2)(inp))
    m.save(tmp_path / "lambda.keras")
    with pytest.raises(ArtifactError):
        load_model(tmp_path / "lambda.keras")


def _run_worker(args: list[str], env: dict, worker: Path = WORKER) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(worker), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def _kill_after_epochs(
    args: list[str], history: Path, epochs: int, env: dict, worker: Path = WORKER
) -> int:
    """Run ``worker`` with ``args`` and SIGKILL it once ``history`` holds ``epochs`` epochs;
    returns the epochs its checkpoint (the weights file beside ``history``) holds after the
    kill: ``epochs`` or, when an epoch is shorter than the 0.3 s the kill waits, more, or one
    less than the history when the kill fell between an epoch's history line and its weights
    (the history is written first; CI once saw it)."""
    proc = _run_worker(args, env, worker)
    deadline = time.time() + 300
    while time.time() < deadline:
        if history.exists() and len(json.loads(history.read_text())["epoch"]) >= epochs:
            time.sleep(0.3)  # into the next epoch
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            return EpochCheckpoint(history.parent).latest()[0]
        if proc.poll() is not None:
            pytest.fail(f"worker ended before the kill: {proc.stdout.read()}")
        time.sleep(0.05)
    proc.kill()
    pytest.fail("worker did not reach the kill point in time")


@pytest.mark.slow
@pytest.mark.parametrize(
    "stage",
    ["teacher", "scratch", "distill", "distill-cached", "distill-dkd-cached", "distill-features"],
)
def test_resume_after_kill_matches_uninterrupted_run(stage, tmp_path):
    env = {**os.environ, "PYTHONHASHSEED": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}
    extra: list[str] = []
    if stage.startswith("distill"):
        # A tiny teacher to distill from.
        r = subprocess.run(
            [sys.executable, str(WORKER), "scratch", str(tmp_path / "t")],
            env=env,
            capture_output=True,
            text=True,
        )
        assert r.returncode == 0, r.stdout + r.stderr
        extra = [str(tmp_path / "t")]
    ref, out = tmp_path / "ref", tmp_path / "resumed"
    r = subprocess.run(
        [sys.executable, str(WORKER), stage, str(ref), *extra],
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr

    _kill_after_epochs([stage, str(out), *extra], out / "checkpoint" / "history.json", 2, env)
    assert not (out / "model.keras").exists()  # killed: no half artifact
    r = subprocess.run(
        [sys.executable, str(WORKER), stage, str(out), *extra],
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "resuming after epoch" in r.stdout

    a = json.loads((ref / "history.json").read_text())
    b = json.loads((out / "history.json").read_text())
    assert b["epoch"] == a["epoch"] == [1, 2, 3, 4]
    np.testing.assert_allclose(b["val_loss"], a["val_loss"], rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(b["val_accuracy"], a["val_accuracy"], atol=0.011)


def test_training_lets_keras_dispatch_batch_hooks_asynchronously(tmp_path, monkeypatch):
    """A batch hook that Keras may not run on a helper thread makes it copy each step's logs
    to the host, a device sync per step: on an H200 that made epochs up to 2.8x slower. Every
    callback ``fit`` installs must allow asynchronous dispatch (on backends that support it;
    TensorFlow does not, so the test switches it on)."""
    from keras.src.callbacks import callback_list

    monkeypatch.setattr(callback_list.backend, "IS_THREAD_SAFE", True)
    seen: list[bool] = []
    configure = callback_list.CallbackList._configure_async_dispatch

    def spy(self, callbacks):
        configure(self, callbacks)
        if any(type(c).__module__ == "kd.train" for c in callbacks or []):
            seen.append(self._async_train)

    monkeypatch.setattr(callback_list.CallbackList, "_configure_async_dispatch", spy)
    x, y = _data(100)
    cfg = StudentConfig(epochs=1, batch_size=50, divergence_check_epoch=0)
    train_student_scratch((x, y), (x[:50], y[:50]), cfg, tmp_path / "out")
    assert seen and all(seen)


def test_distilled_teacher_and_student_see_the_same_augmented_images(tmp_path):
    """A teacher identical to the student's starting point and a learning rate too small to
    move it: the soft loss is zero exactly when both see the same crop and flip of each image
    (the augmentation runs inside each model's CropFlip, from the same offsets)."""
    from kd.config import DistillConfig
    from kd.distill import distill_student
    from kd.models import build_model

    x, y = _data(64)
    cfg = DistillConfig(
        epochs=1, batch_size=32, learning_rate=1e-9, warmup_epochs=0, divergence_check_epoch=0
    )
    teacher = build_model(cfg.preset, "student", seed=cfg.seed)
    res = distill_student(teacher, (x, y), (x[:32], y[:32]), cfg, tmp_path / "d")
    assert res.history["distillation_loss"][0] < 1e-6
    # The check can fail: the same model on differently augmented images gives a clear loss.
    a = keras.ops.convert_to_numpy(teacher(augment_batch(x, np.random.default_rng(0))))
    b = keras.ops.convert_to_numpy(teacher(augment_batch(x, np.random.default_rng(1))))
    from kd.distill import kd_loss_reference

    assert kd_loss_reference(y, a, b, cfg.temperature, 0.0) > 1e-3


@pytest.mark.parametrize("flag", [False, True])
def test_the_configs_jit_compile_reaches_keras_for_every_training_stage(flag):
    """XLA on TensorFlow exactly when the config says so, for the supervised trainer and the
    distiller (the step they compile is what fit runs)."""
    from kd.config import DistillConfig
    from kd.distill import distill_trainer
    from kd.models import build_model
    from kd.train import supervised_trainer

    _, trainer = supervised_trainer(StudentConfig(jit_compile=flag), "student", steps=1)
    assert trainer.jit_compile is flag
    teacher = build_model("seed", "student", seed=3)
    _, distiller = distill_trainer(teacher, DistillConfig(jit_compile=flag), steps=1)
    assert distiller.jit_compile is flag


class _ModelTouched(Exception):
    """Raised by the stand-in for the first model built or loaded (ends the stage there)."""


@pytest.mark.parametrize("stage", ["train_teacher", "train_student_scratch", "distill_student"])
def test_training_stages_pad_the_heap_before_any_model_exists(stage, tmp_path, monkeypatch):
    """Each training stage pads glibc's heap (kd.train.pad_heap) before it builds or loads a
    model: set after TensorFlow's first op, the padding measured no faster."""
    import kd.model_folder
    from kd import stages
    from kd import train as kd_train
    from kd.config import DistillConfig, TeacherConfig
    from kd.data import save_dataset

    events: list[str] = []
    monkeypatch.setattr(kd_train, "pad_heap", lambda *a, **k: events.append("pad") or True)

    def touched(*a, **k):
        events.append("model")
        raise _ModelTouched

    monkeypatch.setattr(kd_train, "build_model", touched)
    monkeypatch.setattr(kd.model_folder, "load_model", touched)
    x, y = _data(40)
    train = (str(tmp_path / "train"), save_dataset(tmp_path / "train", x, y)["sha256"])
    val = (str(tmp_path / "val"), save_dataset(tmp_path / "val", x[:20], y[:20])["sha256"])
    out = str(tmp_path / "out")
    calls = {
        "train_teacher": lambda: stages.train_teacher(train, val, TeacherConfig(epochs=1), out),
        "train_student_scratch": lambda: stages.train_student_scratch(
            train, val, StudentConfig(epochs=1), out
        ),
        "distill_student": lambda: stages.distill_student(
            str(tmp_path / "teacher"), train, val, DistillConfig(epochs=1), out
        ),
    }
    with pytest.raises(_ModelTouched):
        calls[stage]()
    assert events == ["pad", "model"]


def test_pad_heap_sets_glibc_malloc_and_is_skipped_without_it(monkeypatch):
    import ctypes
    import platform

    from kd.train import pad_heap

    if platform.libc_ver()[0] == "glibc":  # in a child: the setting is process-wide
        code = "from kd.train import pad_heap; print(pad_heap())"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert out.stdout.strip().splitlines()[-1] == "True", out.stderr[-2000:]
    monkeypatch.setattr(ctypes, "CDLL", lambda *a, **k: (_ for _ in ()).throw(OSError("no libc")))
    assert pad_heap() is False

    class NoMallopt:  # a C library without mallopt (macOS)
        pass

    monkeypatch.setattr(ctypes, "CDLL", lambda *a, **k: NoMallopt())
    assert pad_heap() is False
