"""Hinton knowledge distillation on logits, built on ``keras.distillation``.

The loss, per batch (batch mean), with student logits ``s``, teacher logits ``t``, labels ``y``::

    L = alpha * CE(y, softmax(s)) + (1 - alpha) * T**2 * KL(softmax(t / T) || softmax(s / T))

``alpha`` weights the hard-label cross-entropy and ``1 - alpha`` the soft (teacher) term; the
``T**2`` factor (Hinton et al., 2015) keeps the soft-term gradients, which shrink as 1/T**2, on
the scale of the hard term.

We use Keras 3's ``keras.distillation.Distiller`` with ``LogitsDistillation``: the teacher is
frozen (``trainable = False``) and called with ``training=False`` (no dropout, BatchNorm in
inference mode, no gradients), and the student and the teacher see the same (augmented) batch.
Two traps of that API are avoided here and pinned by tests:

- ``LogitsDistillation``'s default ``loss="kl_divergence"`` is turned into a plain function,
  which skips the softmax-and-T**2 branch (KL is then taken on raw scaled logits); we pass a
  ``keras.losses.KLDivergence()`` *instance*, which takes that branch.
- the student's hard loss must be told its inputs are logits (``from_logits=True``).
"""

from __future__ import annotations

from typing import Any

import keras
import numpy as np

from kd.config import NUM_CLASSES, DistillConfig
from kd.errors import ArtifactError


def log_softmax(z: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable log-softmax in float64."""
    z = np.asarray(z, dtype=np.float64)
    z = z - z.max(axis=axis, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=axis, keepdims=True))


def kd_loss_reference(
    y: np.ndarray,
    student_logits: np.ndarray,
    teacher_logits: np.ndarray,
    temperature: float,
    alpha: float,
) -> float:
    """The distillation loss in plain NumPy (float64), the reference the tests check against.

    ``L = alpha * CE(y, s) + (1 - alpha) * T**2 * KL(softmax(t/T) || softmax(s/T))``, batch mean.

    Args:
        y: integer labels, shape (N,).
        student_logits: (N, C) student logits ``s``.
        teacher_logits: (N, C) teacher logits ``t``.
        temperature: T > 0.
        alpha: weight of the hard-label cross-entropy, in [0, 1].

    Returns:
        The scalar loss (nats).
    """
    y = np.asarray(y).astype(int).ravel()
    ce = -log_softmax(student_logits)[np.arange(len(y)), y].mean()
    log_p = log_softmax(np.asarray(teacher_logits) / temperature)
    log_q = log_softmax(np.asarray(student_logits) / temperature)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=-1).mean()
    return float(alpha * ce + (1.0 - alpha) * temperature**2 * kl)


def hard_loss(label_smoothing: float = 0.0) -> keras.losses.Loss:
    """Cross-entropy of integer labels against logits, with optional label smoothing."""
    if label_smoothing == 0.0:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    return SmoothedSparseCrossentropy(label_smoothing)


@keras.saving.register_keras_serializable(package="kd")
class SmoothedSparseCrossentropy(keras.losses.Loss):
    """Sparse cross-entropy on logits with label smoothing (Keras's sparse loss has none).

    Targets are ``(1 - eps) * onehot(y) + eps / C`` with ``eps = label_smoothing``, C = 10.
    """

    def __init__(
        self, label_smoothing: float = 0.1, name: str = "smoothed_sparse_ce", **kwargs: Any
    ) -> None:
        super().__init__(name=name, **kwargs)
        self.label_smoothing = float(label_smoothing)

    def call(self, y_true: Any, y_pred: Any) -> Any:
        onehot = keras.ops.one_hot(
            keras.ops.cast(keras.ops.reshape(y_true, (-1,)), "int32"), NUM_CLASSES
        )
        return keras.losses.categorical_crossentropy(
            onehot, y_pred, from_logits=True, label_smoothing=self.label_smoothing
        )

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "label_smoothing": self.label_smoothing}


def check_compatible(teacher: Any, student: Any) -> None:
    """Refuse a teacher whose input shape or number of classes differs from the student's."""
    t_in, s_in = tuple(teacher.input_shape[1:]), tuple(student.input_shape[1:])
    t_out, s_out = teacher.output_shape[-1], student.output_shape[-1]
    if t_in != s_in:
        raise ArtifactError(
            f"teacher takes inputs of shape {t_in} but the student takes {s_in}. Fix: distill "
            "from a teacher trained on the same data (32x32x3 CIFAR-10 images)"
        )
    if t_out != s_out:
        raise ArtifactError(
            f"teacher predicts {t_out} classes but the student predicts {s_out}. Fix: distill "
            f"from a teacher trained on the same {s_out}-class dataset"
        )


def make_distiller(teacher: Any, student: Any, cfg: DistillConfig) -> Any:
    """A ``keras.distillation.Distiller`` computing the loss in this module's docstring.

    Args:
        teacher: the trained teacher (frozen here: ``trainable = False``).
        student: the student to train (logits out).
        cfg: temperature ``T`` and ``alpha`` (the weight of the hard loss).

    Returns:
        An uncompiled Distiller; compile it with :func:`compile_distiller`.
    """
    check_compatible(teacher, student)
    teacher.trainable = False
    return keras.distillation.Distiller(
        teacher=teacher,
        student=student,
        distillation_losses=keras.distillation.LogitsDistillation(
            temperature=float(cfg.temperature), loss=keras.losses.KLDivergence()
        ),
        student_loss_weight=float(cfg.alpha),
    )


def compile_distiller(distiller: Any, optimizer: Any, cfg: DistillConfig) -> Any:
    """Compile with the hard loss on logits and the student's accuracy as the metric."""
    distiller.compile(
        optimizer=optimizer,
        loss=hard_loss(cfg.label_smoothing),
        metrics=["accuracy"],
    )
    return distiller
