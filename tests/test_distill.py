"""Distillation loss and Distiller invariants (library layer, no KFP)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from kd.config import DistillConfig
from kd.distill import (
    check_compatible,
    compile_distiller,
    kd_loss_reference,
    make_distiller,
    soft_loss_reference,
)
from kd.errors import ArtifactError

RNG = np.random.default_rng(0)


def _linear(w: np.ndarray, name: str) -> keras.Model:
    """A model whose logits are exactly ``x @ w`` (so tests control the logits)."""
    inp = keras.Input((w.shape[0],))
    out = keras.layers.Dense(w.shape[1], use_bias=False, name=f"{name}_dense")(inp)
    m = keras.Model(inp, out, name=name)
    m.get_layer(f"{name}_dense").set_weights([w.astype("float32")])
    return m


def _distiller_loss(t_logits, s_logits, y, temperature, alpha, label_smoothing=0.0, **loss):
    """The loss the production Distiller computes, built and compiled as the distillation stage
    builds and compiles it (make_distiller, compile_distiller: its hard loss included), on
    identity inputs (x = I) so logits are exactly the weight rows. ``loss``: ``kd_loss`` and
    its options."""
    n, c = s_logits.shape
    x = np.eye(n, dtype="float32")
    teacher, student = _linear(t_logits, "teacher"), _linear(s_logits, "student")
    cfg = DistillConfig(
        temperature=temperature, alpha=alpha, label_smoothing=label_smoothing, **loss
    )
    d = compile_distiller(make_distiller(teacher, student, cfg), keras.optimizers.SGD(0.1), cfg)
    return float(d.compute_loss(x=x, y=y, y_pred=d(x), training=False))


def test_reference_matches_hand_computed_value():
    # One example, two classes, T=2, alpha=0.5, logits chosen for a closed form.
    s, t, y = np.array([[0.0, 0.0]]), np.array([[2.0, 0.0]]), np.array([0])
    ce = np.log(2.0)
    p = np.exp([1.0, 0.0]) / np.exp([1.0, 0.0]).sum()  # softmax(t / T)
    kl = float((p * np.log(p / 0.5)).sum())
    expected = 0.5 * ce + 0.5 * 4.0 * kl
    assert kd_loss_reference(y, s, t, 2.0, 0.5) == pytest.approx(expected, rel=1e-12)


def test_distiller_loss_equals_reference_on_fixed_logits():
    s = RNG.normal(size=(6, 10)) * 3
    t = RNG.normal(size=(6, 10)) * 3
    y = RNG.integers(0, 10, 6)
    got = _distiller_loss(t, s, y, temperature=5.0, alpha=0.1)
    assert got == pytest.approx(kd_loss_reference(y, s, t, 5.0, 0.1), rel=1e-4)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_the_production_hard_loss_takes_logits_and_smooths_the_labels(label_smoothing):
    """alpha = 1 leaves only the hard loss of compile_distiller: cross-entropy on logits (a
    from_logits=False loss reads them as probabilities), with the config's label smoothing."""
    s, t = RNG.normal(size=(6, 10)) * 3, RNG.normal(size=(6, 10))
    y = RNG.integers(0, 10, 6)
    got = _distiller_loss(t, s, y, temperature=2.0, alpha=1.0, label_smoothing=label_smoothing)
    assert got == pytest.approx(kd_loss_reference(y, s, t, 2.0, 1.0, label_smoothing), rel=1e-5)
    got = _distiller_loss(t, s, y, temperature=2.0, alpha=0.3, label_smoothing=label_smoothing)
    assert got == pytest.approx(kd_loss_reference(y, s, t, 2.0, 0.3, label_smoothing), rel=1e-4)


def test_the_supervised_stages_hard_loss_takes_logits_and_smooths_the_labels():
    """The teacher's and the scratch student's compiled loss (kd.train.supervised_trainer)."""
    from kd.config import StudentConfig
    from kd.train import supervised_trainer

    s = RNG.normal(size=(6, 10)) * 3
    y = RNG.integers(0, 10, 6)
    for eps in (0.0, 0.2):
        _, trainer = supervised_trainer(StudentConfig(label_smoothing=eps), "student", steps=1)
        got = float(trainer.loss(y, s.astype("float32")))
        assert got == pytest.approx(kd_loss_reference(y, s, s, 1.0, 1.0, eps), rel=1e-5)


def test_kl_of_equal_logits_is_zero():
    s = RNG.normal(size=(4, 10))
    y = RNG.integers(0, 10, 4)
    assert _distiller_loss(s, s, y, temperature=4.0, alpha=0.0) == pytest.approx(0.0, abs=1e-6)


def test_alpha_one_is_cross_entropy():
    s, t = RNG.normal(size=(5, 10)), RNG.normal(size=(5, 10))
    y = RNG.integers(0, 10, 5)
    ce = keras.losses.SparseCategoricalCrossentropy(from_logits=True)(y, s)
    got = _distiller_loss(t, s, y, temperature=3.0, alpha=1.0)
    assert got == pytest.approx(float(ce), rel=1e-5)


def test_soft_loss_scales_with_t_squared():
    # With logits scaled by T, softmax(z/T) is fixed, so the soft term is T^2 times its T=1 value.
    s, t = RNG.normal(size=(5, 10)), RNG.normal(size=(5, 10))
    y = RNG.integers(0, 10, 5)
    base = _distiller_loss(t, s, y, temperature=1.0, alpha=0.0)
    for temperature in (2.0, 5.0):
        got = _distiller_loss(t * temperature, s * temperature, y, temperature, alpha=0.0)
        assert got == pytest.approx(temperature**2 * base, rel=1e-4)


def test_one_step_changes_student_not_teacher():
    t_w, s_w = RNG.normal(size=(8, 10)), RNG.normal(size=(8, 10))
    teacher, student = _linear(t_w, "teacher"), _linear(s_w, "student")
    d = make_distiller(teacher, student, DistillConfig())
    d.compile(
        optimizer=keras.optimizers.SGD(0.5),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
    )
    x = RNG.normal(size=(16, 8)).astype("float32")
    y = RNG.integers(0, 10, 16)
    d.fit(x, y, epochs=1, batch_size=16, verbose=0)
    np.testing.assert_array_equal(teacher.get_weights()[0], t_w.astype("float32"))
    assert np.abs(student.get_weights()[0] - s_w).max() > 1e-4


def test_incompatible_teacher_is_refused():
    teacher = _linear(RNG.normal(size=(8, 5)), "teacher")
    student = _linear(RNG.normal(size=(8, 10)), "student")
    with pytest.raises(ArtifactError, match="5 classes"):
        check_compatible(teacher, student)
    wide = _linear(RNG.normal(size=(9, 10)), "wide")
    with pytest.raises(ArtifactError, match="inputs of shape"):
        check_compatible(wide, student)


LOSSES = [
    {"kd_loss": "hinton", "logit_standardization": True},
    {"kd_loss": "dkd"},
    {"kd_loss": "dkd", "dkd_alpha": 0.5, "dkd_beta": 2.0, "logit_standardization": True},
    {"kd_loss": "dist"},
    {"kd_loss": "dist", "dist_beta": 2.0, "dist_gamma": 0.5},
]


@pytest.mark.parametrize("loss", LOSSES, ids=lambda d: "-".join(f"{v}" for v in d.values()))
def test_each_distillation_loss_equals_its_reference_on_fixed_logits(loss):
    s = RNG.normal(size=(6, 10)) * 3
    t = RNG.normal(size=(6, 10)) * 3
    y = RNG.integers(0, 10, 6)
    got = _distiller_loss(t, s, y, temperature=4.0, alpha=0.3, **loss)
    want = kd_loss_reference(y, s, t, 4.0, 0.3, **loss)
    assert got == pytest.approx(want, rel=1e-4)
    # Not Hinton's loss under another name.
    assert abs(want - kd_loss_reference(y, s, t, 4.0, 0.3)) > 1e-3


def test_dkd_hand_computed_and_hintons_loss_is_its_special_case():
    """One image, three classes, T = 1, label 0. Teacher logits (2, 0, 0), student (0, 0, 0):
    the non-target parts are both uniform, so NCKD = 0 and DKD = dkd_alpha * TCKD, with
    TCKD the KL of the binary (p_0, 1 - p_0) against (1/3, 2/3)."""
    t, s, y = np.array([[2.0, 0.0, 0.0]]), np.zeros((1, 3)), np.array([0])
    p0 = np.exp(2.0) / (np.exp(2.0) + 2.0)
    tckd = p0 * np.log(p0 / (1 / 3)) + (1 - p0) * np.log((1 - p0) / (2 / 3))
    got = _distiller_loss(t, s, y, temperature=1.0, alpha=0.0, kd_loss="dkd", dkd_alpha=0.7)
    assert got == pytest.approx(0.7 * tckd, rel=1e-5)
    # Hinton's KL = TCKD + (1 - p_y of the teacher) * NCKD (Zhao et al., eq. 7), on one image.
    t, s = RNG.normal(size=(1, 10)) * 2, RNG.normal(size=(1, 10)) * 2
    y = np.array([3])
    p_y = float(np.exp(t[0, 3] / 2) / np.exp(t[0] / 2).sum())
    dkd = _distiller_loss(
        t, s, y, temperature=2.0, alpha=0.0, kd_loss="dkd", dkd_alpha=1.0, dkd_beta=1 - p_y
    )
    assert dkd == pytest.approx(_distiller_loss(t, s, y, temperature=2.0, alpha=0.0), rel=1e-4)


def test_dist_hand_computed():
    """Two images, two classes, T = 1. Teacher rows favour classes 0 and 1; the student's both
    favour class 0, so the per-image correlations are +1 and -1 (inter = 1 - 0 = 1). Per
    class, the student's probabilities rise where the teacher's fall (correlation -1 in both
    columns: intra = 1 - (-1) = 2). DIST = beta * 1 + gamma * 2."""
    t = np.array([[2.0, 0.0], [0.0, 2.0]])
    s = np.array([[1.0, 0.0], [0.0, -2.0]])
    y = np.array([0, 1])
    got = _distiller_loss(
        t, s, y, temperature=1.0, alpha=0.0, kd_loss="dist", dist_beta=2.0, dist_gamma=0.5
    )
    assert got == pytest.approx(2.0 * 1.0 + 0.5 * 2.0, rel=1e-5)
    assert soft_loss_reference(y, s, t, 1.0, "dist", dist_beta=2.0, dist_gamma=0.5) == (
        pytest.approx(3.0, rel=1e-6)
    )


def test_the_labels_reach_dkd_in_a_training_step():
    """DKD reads the step's labels (kd.distill.Distiller hands them over): other labels, other
    loss; and a fit step runs (no stale labels left behind)."""
    s, t = RNG.normal(size=(6, 10)) * 3, RNG.normal(size=(6, 10)) * 3
    y = RNG.integers(0, 10, 6)
    a = _distiller_loss(t, s, y, temperature=2.0, alpha=0.0, kd_loss="dkd")
    b = _distiller_loss(t, s, (y + 1) % 10, temperature=2.0, alpha=0.0, kd_loss="dkd")
    assert abs(a - b) > 1e-3
    teacher, student = _linear(t, "teacher"), _linear(s, "student")
    cfg = DistillConfig(kd_loss="dkd")
    d = compile_distiller(make_distiller(teacher, student, cfg), keras.optimizers.SGD(0.1), cfg)
    d.fit(np.eye(6, dtype="float32"), y, batch_size=3, epochs=1, verbose=0)
    assert all(loss.labels is None for loss in d.distillation_losses)


@pytest.mark.parametrize(
    "loss", [{"kd_loss": "dkd"}, {"kd_loss": "dkd", "dkd_beta": 0.0}, {"kd_loss": "dist"}]
)
def test_dkd_and_dist_of_equal_logits_are_zero(loss):
    s = RNG.normal(size=(8, 10)) * 3
    y = RNG.integers(0, 10, 8)
    # T**2 = 16 times float32 rounding of correlations of 1 (about 1e-6).
    assert _distiller_loss(s, s, y, temperature=4.0, alpha=0.0, **loss) == pytest.approx(
        0.0, abs=1e-4
    )
    assert _distiller_loss(s, -s, y, temperature=4.0, alpha=0.0, **loss) > 1e-2


@pytest.mark.parametrize("kd_loss", ["hinton", "dkd"])
def test_logit_standardization_ignores_the_students_shift_and_scale(kd_loss):
    """With standardized logits the soft term depends on the student's logits only up to a
    positive scale and a shift per image; without it, it does not."""
    s, t = RNG.normal(size=(5, 10)), RNG.normal(size=(5, 10)) * 4
    y = RNG.integers(0, 10, 5)
    moved = 3.0 * s + RNG.normal(size=(5, 1))

    def loss(student, standardize):
        return _distiller_loss(
            t, student, y, 2.0, alpha=0.0, kd_loss=kd_loss, logit_standardization=standardize
        )

    assert loss(moved, True) == pytest.approx(loss(s, True), rel=1e-4)
    assert abs(loss(moved, False) - loss(s, False)) > 1e-2


# ----------------------------------------------------------------------------------------------
# Feature distillation (feature_weight > 0): the distiller distill_student builds
# ----------------------------------------------------------------------------------------------

FEATURES = dict(epochs=1, batch_size=8, divergence_check_epoch=0, feature_weight=0.5, alpha=0.3)


def _feature_batch(n: int = 8):
    from kd.train import AUGMENT_KEY, IMAGE_KEY, identity_augmentation

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 32, 32, 3)).astype(np.uint8)
    y = rng.integers(0, 10, n)
    return x, y, {IMAGE_KEY: x, AUGMENT_KEY: identity_augmentation(n)}


def _layer(model, name, x):
    return np.asarray(keras.Model(model.inputs, model.get_layer(name).output)(x))


@pytest.mark.parametrize(
    ("teacher_layer", "student_layer", "projected"),
    [("b2_pool", "pool2", True), ("b1_pool", "conv2", False), ("fc", "fc", True)],
    ids=["conv-64-to-128", "conv-same-width", "dense-128-to-512"],
)
def test_the_feature_term_is_w_times_the_mse_of_the_projected_features(
    teacher_layer, student_layer, projected
):
    from kd.distill import PROJECTION, distill_trainer
    from kd.models import build_model

    teacher = build_model("seed", "teacher", seed=1)
    cfg = DistillConfig(
        teacher_feature_layer=teacher_layer, student_feature_layer=student_layer, **FEATURES
    )
    student, d = distill_trainer(teacher, cfg, 10)
    x, y, batch = _feature_batch()
    loss = float(d.compute_loss(x=batch, y=y, y_pred=d(batch), training=False))
    xf = x.astype("float32")
    t_logits = np.asarray(teacher(xf, training=False))
    s_logits = np.asarray(student(xf, training=False))
    f_t, f_s = _layer(teacher, teacher_layer, xf), _layer(student, student_layer, xf)
    names = [lyr.name for lyr in d.student.layers]
    assert (PROJECTION in names) == projected
    if projected:
        f_s = np.asarray(d.student.get_layer(PROJECTION)(f_s))
    want = kd_loss_reference(y, s_logits, t_logits, cfg.temperature, cfg.alpha)
    want += (1 - cfg.alpha) * cfg.feature_weight * float(np.mean((f_t - f_s) ** 2))
    assert loss == pytest.approx(want, rel=1e-4)


def test_a_feature_step_trains_student_and_projection_not_teacher():
    from kd.distill import PROJECTION, distill_trainer
    from kd.models import build_model

    teacher = build_model("seed", "teacher", seed=1)
    cfg = DistillConfig(teacher_feature_layer="b2_pool", student_feature_layer="pool2", **FEATURES)
    student, d = distill_trainer(teacher, cfg, 10)
    t0 = [w.copy() for w in teacher.get_weights()]
    s0 = [w.copy() for w in student.get_weights()]
    p0 = d.student.get_layer(PROJECTION).get_weights()[0].copy()
    _, y, batch = _feature_batch()
    d.fit(batch, y, epochs=1, batch_size=8, verbose=0)
    assert all(np.array_equal(a, b) for a, b in zip(t0, teacher.get_weights(), strict=True))
    assert any(not np.array_equal(a, b) for a, b in zip(s0, student.get_weights(), strict=True))
    assert not np.array_equal(p0, d.student.get_layer(PROJECTION).get_weights()[0])
    # the saved student is the plain model: no projection in it
    assert PROJECTION not in [lyr.name for lyr in student.layers]


def test_feature_layers_that_do_not_fit_are_clear_errors():
    from kd.distill import distill_trainer
    from kd.errors import ConfigError
    from kd.models import build_model

    teacher = build_model("seed", "teacher", seed=1)
    bad = DistillConfig(teacher_feature_layer="b9_pool", student_feature_layer="pool2", **FEATURES)
    with pytest.raises(ConfigError, match=r"teacher_feature_layer='b9_pool'.*Fix: pass one of"):
        distill_trainer(teacher, bad, 10)
    bad = DistillConfig(teacher_feature_layer="b3_pool", student_feature_layer="pool2", **FEATURES)
    with pytest.raises(ConfigError, match=r"\(8, 8, 64\) and the teacher layer's \(4, 4, 256\)"):
        distill_trainer(teacher, bad, 10)


def test_a_feature_layer_called_twice_is_refused():
    """A layer shared by two branches (e.g. a test-time-augmentation wrapper's image and
    mirror) has no single output to distil from."""
    from kd.distill import distill_trainer
    from kd.errors import ConfigError

    inp = keras.Input((32, 32, 3), dtype="uint8")
    x = keras.layers.Rescaling(1 / 255)(inp)
    conv = keras.layers.Conv2D(8, 3, padding="same", name="shared_conv")
    a, b = conv(x), conv(keras.layers.RandomFlip("horizontal", seed=0)(x))
    pooled = keras.layers.MaxPooling2D(4)(keras.layers.Average()([a, b]))
    out = keras.layers.Dense(10)(keras.layers.Flatten()(pooled))
    teacher = keras.Model(inp, out, name="two_branch_teacher")
    cfg = DistillConfig(
        teacher_feature_layer="shared_conv", student_feature_layer="conv1", **FEATURES
    )
    with pytest.raises(ConfigError, match=r"calls that layer 2 times per image.*Fix: pass"):
        distill_trainer(teacher, cfg, 10)
