"""Distillation loss and Distiller invariants (library layer, no KFP)."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from kd.config import DistillConfig
from kd.distill import check_compatible, compile_distiller, kd_loss_reference, make_distiller
from kd.errors import ArtifactError

RNG = np.random.default_rng(0)


def _linear(w: np.ndarray, name: str) -> keras.Model:
    """A model whose logits are exactly ``x @ w`` (so tests control the logits)."""
    inp = keras.Input((w.shape[0],))
    out = keras.layers.Dense(w.shape[1], use_bias=False, name=f"{name}_dense")(inp)
    m = keras.Model(inp, out, name=name)
    m.get_layer(f"{name}_dense").set_weights([w.astype("float32")])
    return m


def _distiller_loss(t_logits, s_logits, y, temperature, alpha, label_smoothing=0.0):
    """The loss the production Distiller computes, built and compiled as the distillation stage
    builds and compiles it (make_distiller, compile_distiller: its hard loss included), on
    identity inputs (x = I) so logits are exactly the weight rows."""
    n, c = s_logits.shape
    x = np.eye(n, dtype="float32")
    teacher, student = _linear(t_logits, "teacher"), _linear(s_logits, "student")
    cfg = DistillConfig(temperature=temperature, alpha=alpha, label_smoothing=label_smoothing)
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
