"""Distillation from cached teacher logits (``DistillConfig.teacher_views``): the cache holds
the teacher's logits of exactly the views the student trains on, and the loss is the online
distiller's."""

from __future__ import annotations

import dataclasses
import json

import keras
import numpy as np
import pytest

from kd.config import MAX_TEACHER_VIEWS, DistillConfig
from kd.distill import cache_teacher_views, distill_student, distill_trainer, flip_invariant
from kd.errors import ArtifactError, ConfigError
from kd.model_folder import INFO_FILE
from kd.models import build_model, flip_tta
from kd.train import (
    AUGMENT_KEY,
    BLEND_ONE,
    IMAGE_KEY,
    TEACHER_KEY,
    BatchSequence,
    blend_images,
    crop_flip,
    identity_augmentation,
)


def _data(n: int) -> tuple[np.ndarray, np.ndarray]:
    """n random images and labels; the same n gives the same data whatever ran before (a
    module-level generator made each test's data depend on the tests before it)."""
    rng = np.random.default_rng([7, n])
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), np.arange(n) % 10


def _teacher() -> keras.Model:
    # The seed student as a stand-in teacher: small, and the model family the stages load.
    return build_model("seed", "student", seed=3)


def _logits(model: keras.Model, x: np.ndarray, rows: np.ndarray) -> np.ndarray:
    images = keras.ops.convert_to_numpy(crop_flip(x, rows))
    return keras.ops.convert_to_numpy(model(images, training=False))


def _batches_with_the_teachers_logits(seq: BatchSequence, teacher: keras.Model, epochs: int):
    """Every batch of ``epochs`` epochs of ``seq``, each checked first: its teacher logits are
    the teacher's own for the very images and crop rows in it, flips included."""
    for epoch in range(epochs):
        for i in range(len(seq)):
            inputs, labels = seq.batch(epoch, i)
            np.testing.assert_allclose(
                inputs[TEACHER_KEY],
                _logits(teacher, inputs[IMAGE_KEY], inputs[AUGMENT_KEY]),
                rtol=1e-4,
                atol=1e-4,
            )
            yield inputs, labels


def test_cached_logits_are_the_teachers_logits_of_each_cached_view():
    x, _ = _data(24)
    teacher = _teacher()
    views = cache_teacher_views(teacher, x, 3, seed=11)
    assert views.count == 3
    assert views.augment.shape == (24, 3, 3) and views.augment.dtype == np.int32
    assert views.logits.shape == (24, 3, 10) and views.logits.dtype == np.float32
    for k in range(3):
        np.testing.assert_allclose(
            views.logits[:, k], _logits(teacher, x, views.augment[:, k]), rtol=1e-4, atol=1e-4
        )
    # Three different views of each image, not one view three times.
    assert not np.array_equal(views.augment[:, 0], views.augment[:, 1])
    assert not np.allclose(views.logits[:, 0], views.logits[:, 1], atol=1e-3)
    # The same seed gives the same views; without augmentation every view is the image.
    again = cache_teacher_views(teacher, x, 3, seed=11)
    np.testing.assert_array_equal(again.augment, views.augment)
    plain = cache_teacher_views(teacher, x, 1, seed=11, augment=False)
    np.testing.assert_array_equal(plain.augment[:, 0], identity_augmentation(24))


def test_each_batch_trains_on_one_cached_view_per_image_with_its_logits():
    x, y = _data(40)
    views = cache_teacher_views(_teacher(), x, 4, seed=0)
    seq = BatchSequence(x, y, 8, seed=5, shuffle=True, augment=True, views=views)
    used = set()
    for epoch in range(3):
        for i in range(len(seq)):
            inputs, labels = seq.batch(epoch, i)
            assert set(inputs) == {IMAGE_KEY, AUGMENT_KEY, TEACHER_KEY}
            for image, row, logit, label in zip(
                inputs[IMAGE_KEY], inputs[AUGMENT_KEY], inputs[TEACHER_KEY], labels, strict=True
            ):
                n = int(np.flatnonzero((x == image).all(axis=(1, 2, 3)))[0])
                assert label == y[n]
                k = [j for j in range(4) if (views.augment[n, j] == row).all()]
                assert k, "the batch's crop and flip are not one of the image's cached views"
                np.testing.assert_array_equal(logit, views.logits[n, k[0]])
                used.add((n, k[0]))
    # The views are drawn per image: over three epochs most images meet more than one.
    assert len(used) > 60
    # Pure in (seed, epoch, index), as without a cache (resume depends on it).
    a, b = seq.batch(2, 1), seq.batch(2, 1)
    np.testing.assert_array_equal(a[0][AUGMENT_KEY], b[0][AUGMENT_KEY])


def test_a_flip_invariant_teacher_is_measured_so():
    x, _ = _data(16)
    plain = _teacher()
    assert not flip_invariant(plain, x)
    assert flip_invariant(flip_tta(plain), x)
    assert not flip_invariant(flip_tta(plain), x[:0])


def test_a_flip_tta_teachers_cached_crops_serve_both_flips_with_their_true_logits():
    """With a flip-invariant teacher each cached crop is stored once (flip 0) and the batches
    draw the flip afresh: the logits in a batch are still the teacher's for exactly the image
    the student sees, and both flips of a crop are used."""
    x, y = _data(40)
    teacher = flip_tta(_teacher())
    views = cache_teacher_views(teacher, x, 2, seed=0)
    assert views.flip_free and (views.augment[:, :, 2] == 0).all()
    # Not flip-free for a teacher that is not flip-invariant, nor without augmentation.
    assert not cache_teacher_views(_teacher(), x, 2, seed=0).flip_free
    assert not cache_teacher_views(teacher, x, 1, seed=0, augment=False).flip_free
    seq = BatchSequence(x, y, 8, seed=5, shuffle=True, augment=True, views=views)
    seen: set[tuple[int, int, int]] = set()
    for inputs, _ in _batches_with_the_teachers_logits(seq, teacher, 4):
        for image, row in zip(inputs[IMAGE_KEY], inputs[AUGMENT_KEY], strict=True):
            n = int(np.flatnonzero((x == image).all(axis=(1, 2, 3)))[0])
            k = [j for j in range(2) if (views.augment[n, j, :2] == row[:2]).all()]
            assert k, "the batch's crop is not one of the image's cached crops"
            seen.add((n, k[0], int(row[2])))
    flips = {(n, k) for n, k, f in seen if (n, k, 1 - f) in seen}
    assert len(flips) > 20, "cached crops should be used with both flips"
    a, b = seq.batch(3, 2), seq.batch(3, 2)
    np.testing.assert_array_equal(a[0][AUGMENT_KEY], b[0][AUGMENT_KEY])


def test_a_cache_of_other_images_is_refused():
    x, y = _data(20)
    views = cache_teacher_views(_teacher(), x[:10], 1, seed=0)
    with pytest.raises(ConfigError, match="cached for 10 images, but the split has 20"):
        BatchSequence(x, y, 5, seed=0, shuffle=False, augment=True, views=views)


def test_the_cached_distillers_loss_is_the_online_distillers_on_the_same_views():
    x, y = _data(32)
    teacher = _teacher()
    cfg = DistillConfig(epochs=1, batch_size=16, divergence_check_epoch=0)
    _, online = distill_trainer(teacher, cfg, 2)
    _, cached = distill_trainer(teacher, dataclasses.replace(cfg, teacher_views=2), 2)
    cached.student.set_weights(online.student.get_weights())  # built alike: same start
    views = cache_teacher_views(teacher, x, 2, seed=cfg.seed)
    seq = BatchSequence(x, y, 16, seed=cfg.seed, shuffle=True, augment=True, views=views)
    inputs, labels = seq.batch(0, 1)
    plain = {IMAGE_KEY: inputs[IMAGE_KEY], AUGMENT_KEY: inputs[AUGMENT_KEY]}
    a = keras.ops.convert_to_numpy(online.compute_loss(plain, labels, training=False))
    b = keras.ops.convert_to_numpy(cached.compute_loss(inputs, labels, training=False))
    np.testing.assert_allclose(b, a, rtol=1e-4)
    # Other logits in the batch give another loss: the cached teacher is what is read. (Not
    # the batch's logits reversed: an untrained teacher's logits are all alike, and the loss
    # then moved by 3e-4 or 2e-3 depending on the data.)
    confident = 10.0 * np.eye(10, dtype=np.float32)[(np.asarray(labels) + 1) % 10]
    other = {**inputs, TEACHER_KEY: confident}
    c = keras.ops.convert_to_numpy(cached.compute_loss(other, labels, training=False))
    assert abs(float(c) - float(a)) > 0.1


def test_one_cached_unaugmented_view_trains_exactly_as_the_online_teacher(tmp_path):
    """Without augmentation every step's view is the image itself, so caching one view must
    change nothing but where the teacher's logits come from."""
    x, y = _data(64)
    teacher = _teacher()
    cfg = DistillConfig(
        epochs=2, batch_size=16, augment=False, divergence_check_epoch=0, warmup_epochs=0
    )
    online = distill_student(teacher, (x, y), (x[:32], y[:32]), cfg, tmp_path / "online")
    cached_cfg = dataclasses.replace(cfg, teacher_views=1)
    lines: list[str] = []
    cached = distill_student(
        teacher, (x, y), (x[:32], y[:32]), cached_cfg, tmp_path / "cached", log=lines.append
    )
    for key in ("loss", "distillation_loss", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(cached.history[key], online.history[key], rtol=2e-4)
    info = json.loads((tmp_path / "cached" / INFO_FILE).read_text())
    assert info["config"]["teacher_views"] == 1 and info["teacher_cache_s"] > 0
    assert "teacher_cache_s" not in online.info
    assert any("cached the teacher's logits for 1 view(s) of 64" in line for line in lines)


@pytest.mark.parametrize(
    ("views", "augment", "words"),
    [
        (-1, True, "must be an integer >= 0"),
        (MAX_TEACHER_VIEWS + 1, True, f"must be <= {MAX_TEACHER_VIEWS}"),
        (2, False, "must be 0 or 1 with augment=False"),
    ],
)
def test_bad_teacher_views_are_refused_by_the_config(views, augment, words):
    with pytest.raises(ConfigError, match="invalid teacher_views") as err:
        DistillConfig(teacher_views=views, augment=augment)
    assert words in str(err.value)
    assert DistillConfig(teacher_views=1, augment=False).teacher_views == 1


def test_the_output_folder_is_checked_before_the_teacher_passes(tmp_path, monkeypatch):
    import kd.distill

    def must_not_cache(*args, **kwargs):
        raise AssertionError("the cache was built for an output that cannot be written")

    monkeypatch.setattr(kd.distill, "cache_teacher_views", must_not_cache)
    (tmp_path / "file").write_text("not a folder")
    x, y = _data(32)
    cfg = DistillConfig(epochs=1, batch_size=16, divergence_check_epoch=0, teacher_views=2)
    with pytest.raises(ArtifactError, match="cannot create the output folder"):
        distill_student(_teacher(), (x, y), (x[:16], y[:16]), cfg, tmp_path / "file" / "d")


class _Stop(Exception):
    pass


def test_a_checkpoint_resumes_only_with_the_teacher_it_was_cached_from(tmp_path):
    """The cache is rebuilt from the teacher passed at resume: a checkpoint trained on another
    teacher's logits (same architecture) is discarded, the same teacher's resumed."""
    x, y = _data(64)
    cfg = DistillConfig(epochs=2, batch_size=16, divergence_check_epoch=0, teacher_views=2)
    teacher, other = _teacher(), build_model("seed", "student", seed=4)
    out = tmp_path / "d"
    with pytest.raises(_Stop):
        distill_student(teacher, (x, y), (x[:16], y[:16]), cfg, out, log=_stop_in_epoch_2([]))
    lines: list[str] = []
    with pytest.raises(_Stop):
        distill_student(other, (x, y), (x[:16], y[:16]), cfg, out, log=_stop_in_epoch_2(lines))
    assert any("discarding a checkpoint" in line for line in lines)
    assert not any("resuming" in line for line in lines)
    lines.clear()
    with pytest.raises(_Stop):  # the other teacher's epoch 1 was checkpointed: it resumes
        distill_student(other, (x, y), (x[:16], y[:16]), cfg, out, log=_stop_in_epoch_2(lines))
    assert any("resuming after epoch 1/2" in line for line in lines)


def _stop_in_epoch_2(lines: list[str]):
    """A log that keeps the lines and stops the run in epoch 2 (epoch 1 and its checkpoint
    are written by then)."""

    def log(line: str) -> None:
        lines.append(line)
        if "epoch 2/2 step" in line:
            raise _Stop

    return log


def test_fit_refuses_views_its_config_does_not_cache(tmp_path):
    from kd.train import fit

    x, y = _data(32)
    views = cache_teacher_views(_teacher(), x, 1, seed=0)
    cfg = DistillConfig(epochs=1, batch_size=16, divergence_check_epoch=0)
    with pytest.raises(ConfigError, match="teacher_views=0 but teacher views were passed"):
        fit(None, (x, y), (x, y), cfg, tmp_path, name="d", views=(views, views))
    cached = dataclasses.replace(cfg, teacher_views=1)
    with pytest.raises(ConfigError, match="teacher_views=1 but teacher views were not passed"):
        fit(None, (x, y), (x, y), cached, tmp_path, name="d")
    with pytest.raises(ConfigError, match="needs views >= 1"):
        cache_teacher_views(_teacher(), x, 0, seed=0)
    assert not any(tmp_path.iterdir())


def test_blends_are_mixup_of_the_two_images_to_the_nearest_integer():
    rng = np.random.default_rng(3)
    a, b = (rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8) for _ in range(2))
    w = np.array([0, 1, 127, 128, 255, BLEND_ONE])
    out = blend_images(a, b, w)
    assert out.dtype == np.uint8 and out.shape == a.shape
    np.testing.assert_array_equal(out[0], b[0])
    np.testing.assert_array_equal(out[-1], a[-1])
    lam = (w / BLEND_ONE)[:, None, None, None]
    exact = lam * a.astype(np.float64) + (1 - lam) * b.astype(np.float64)
    assert np.abs(out - exact).max() <= 0.5
    white = np.full((2, 32, 32, 3), 255, np.uint8)
    np.testing.assert_array_equal(blend_images(white, white, np.array([77, 200])), white)


def test_mixed_views_cache_the_teachers_logits_of_each_blend():
    """Mixed views (``mixup_views``): the teacher's logits of the crop and flip of a blend
    with another image of the split, at the weight the cache records; the plain views are the
    ones a cache without mixed views holds."""
    x, _ = _data(24)
    teacher = _teacher()
    plain = cache_teacher_views(teacher, x, 2, seed=11)
    views = cache_teacher_views(teacher, x, 2, seed=11, mixup_views=3)
    assert views.count == 5 and plain.mix is None
    assert views.mix is not None and views.mix.shape == (24, 5, 2) and views.mix.dtype == np.int32
    np.testing.assert_array_equal(views.augment[:, :2], plain.augment)
    np.testing.assert_array_equal(views.logits[:, :2], plain.logits)
    np.testing.assert_array_equal(views.mix[:, :2, 0], np.tile(np.arange(24)[:, None], (1, 2)))
    assert (views.mix[:, :2, 1] == BLEND_ONE).all()
    partner, w = views.mix[:, 2:, 0], views.mix[:, 2:, 1]
    assert ((partner >= 0) & (partner < 24)).all() and ((w >= 0) & (w <= BLEND_ONE)).all()
    assert len(np.unique(partner)) > 10 and (w < 128).any() and (w > 128).any()
    for k in range(2, 5):
        blends = blend_images(x, x[views.mix[:, k, 0]], views.mix[:, k, 1])
        np.testing.assert_allclose(
            views.logits[:, k], _logits(teacher, blends, views.augment[:, k]), rtol=1e-4, atol=1e-4
        )
    # Drawn per view: three different blends of each image.
    assert not np.array_equal(views.mix[:, 2], views.mix[:, 3])


def test_batches_train_on_mixed_views_with_their_logits_and_the_larger_weights_label():
    x, y = _data(40)
    views = cache_teacher_views(_teacher(), x, 1, seed=0, mixup_views=3)
    assert views.mix is not None
    seq = BatchSequence(x, y, 8, seed=5, shuffle=True, augment=True, views=views)
    kinds = {"plain": 0, "mixed": 0}
    for epoch in range(3):
        for i in range(len(seq)):
            inputs, labels = seq.batch(epoch, i)
            idx = seq._ordering(epoch)[i * 8 : (i + 1) * 8]
            for n, image, row, logit, label in zip(
                idx,
                inputs[IMAGE_KEY],
                inputs[AUGMENT_KEY],
                inputs[TEACHER_KEY],
                labels,
                strict=True,
            ):
                match = [
                    k
                    for k in range(4)
                    if (views.augment[n, k] == row).all()
                    and np.array_equal(
                        image,
                        blend_images(x[n : n + 1], x[views.mix[n, k, :1]], views.mix[n, k, 1:])[0],
                    )
                    and np.array_equal(logit, views.logits[n, k])
                ]
                assert match, "the batch's image is not one of its image's cached views"
                partner, w = views.mix[n, match[0]]
                assert label == (y[n] if w >= 128 else y[partner])
                kinds["plain" if match[0] == 0 else "mixed"] += 1
    # One of the image's 1 + 3 views per use, drawn at random: about 3 mixed to 1 plain.
    assert kinds["plain"] > 10 and kinds["mixed"] > 2 * kinds["plain"]
    a, b = seq.batch(2, 1), seq.batch(2, 1)
    np.testing.assert_array_equal(a[0][IMAGE_KEY], b[0][IMAGE_KEY])


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"teacher_views": 2, "teacher_mixup_views": -1}, "must be an integer >= 0"),
        ({"teacher_views": 0, "teacher_mixup_views": 2}, "set teacher_views >= 1"),
        (
            {"teacher_views": 60, "teacher_mixup_views": 5},
            f"must be <= {MAX_TEACHER_VIEWS} - teacher_views ({MAX_TEACHER_VIEWS - 60})",
        ),
    ],
)
def test_bad_mixed_views_are_refused_by_the_config(fields, words):
    with pytest.raises(ConfigError, match="invalid teacher_mixup_views") as err:
        DistillConfig(**fields)
    assert words in str(err.value)
    assert DistillConfig(teacher_views=1, teacher_mixup_views=63).teacher_mixup_views == 63


def test_a_flip_tta_teachers_mixed_views_carry_its_logits_for_the_flip_drawn():
    """The demo's path: a flip-invariant teacher caches each blend's crop once and the batch
    draws its flip afresh; the logits are still the teacher's for the very image the student
    sees."""
    x, y = _data(24)
    teacher = flip_tta(_teacher())
    views = cache_teacher_views(teacher, x, 1, seed=0, mixup_views=2)
    assert views.flip_free and views.mix is not None
    seq = BatchSequence(x, y, 8, seed=5, shuffle=True, augment=True, views=views)
    flips = set()
    for inputs, _ in _batches_with_the_teachers_logits(seq, teacher, 2):
        flips |= set(inputs[AUGMENT_KEY][:, 2].tolist())
    assert flips == {0, 1}
