"""Distillation, all of it: the loss, the distiller, the teacher-logit cache and the trainer.

Hinton knowledge distillation on logits, built on ``keras.distillation``.

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

The distillation stage (:func:`distill_student`) builds the student and the distiller
(:func:`distill_trainer`) and trains it through :func:`kd.train.fit`, the loop every stage
shares. With ``teacher_views`` = K it first caches the teacher's logits for K augmented views
of each training image (:func:`cache_teacher_views`) and distills from those
(:func:`cached_teacher`). This module builds on :mod:`kd.train`, never the other way round.
"""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import keras
import numpy as np

from kd.config import IMAGE_SHAPE, NUM_CLASSES, DistillConfig
from kd.errors import ArtifactError, ConfigError
from kd.models import build_model
from kd.train import (
    AUGMENT_KEY,
    CHECKPOINT_DIR,
    IMAGE_KEY,
    TEACHER_KEY,
    Log,
    TrainResult,
    batch_inputs,
    config_fingerprint,
    data_fingerprint,
    draw_augmentation,
    eval_batch_size,
    finish_stage,
    fit,
    hard_loss,
    identity_augmentation,
    make_optimizer,
    prepare_checkpoint,
    steps_per_epoch,
    training_model,
    validate_split,
    xla,
)


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
    label_smoothing: float = 0.0,
) -> float:
    """The distillation loss in plain NumPy (float64), the reference the tests check against.

    ``L = alpha * CE(y, s) + (1 - alpha) * T**2 * KL(softmax(t/T) || softmax(s/T))``, batch mean.

    Args:
        y: integer labels, shape (N,).
        student_logits: (N, C) student logits ``s``.
        teacher_logits: (N, C) teacher logits ``t``.
        temperature: T > 0.
        alpha: weight of the hard-label cross-entropy, in [0, 1].
        label_smoothing: ``eps`` of the hard loss's targets ``(1 - eps) * onehot(y) + eps / C``.

    Returns:
        The scalar loss (nats).
    """
    y = np.asarray(y).astype(int).ravel()
    c = np.asarray(student_logits).shape[-1]
    targets = (1.0 - label_smoothing) * np.eye(c)[y] + label_smoothing / c
    ce = -(targets * log_softmax(student_logits)).sum(axis=-1).mean()
    log_p = log_softmax(np.asarray(teacher_logits) / temperature)
    log_q = log_softmax(np.asarray(student_logits) / temperature)
    kl = (np.exp(log_p) * (log_p - log_q)).sum(axis=-1).mean()
    return float(alpha * ce + (1.0 - alpha) * temperature**2 * kl)


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
    """Compile with the hard loss on logits and the student's accuracy as the metric (the
    step compiled with XLA when ``cfg.jit_compile``, :func:`kd.train.xla`)."""
    distiller.compile(
        optimizer=optimizer,
        loss=hard_loss(cfg.label_smoothing),
        metrics=["accuracy"],
        jit_compile=xla(cfg),
    )
    return distiller


def cached_teacher() -> Any:
    """The teacher of a cached distillation: returns the batch's ``"teacher_logits"``, the
    logits :func:`cache_teacher_views` computed for exactly the views in the batch. It has the
    inputs of ``training_model(student, teacher_logits=True)`` and no weights."""
    inputs = batch_inputs(IMAGE_SHAPE, teacher_logits=True)
    logits = keras.layers.Identity(dtype="float32", name="cached_logits")(inputs[TEACHER_KEY])
    return keras.Model(inputs, logits, name="cached_teacher")


@dataclass(frozen=True)
class TeacherViews:
    """``K`` augmented views of each of ``N`` images and the teacher's logits for each.

    Attributes:
        augment: int32 (N, K, 3) ``(oy, ox, flip)`` rows (:func:`draw_augmentation`).
        logits: float32 (N, K, C) the teacher's logits for each view (inference mode).
    """

    augment: np.ndarray
    logits: np.ndarray

    @property
    def count(self) -> int:
        """K, the views per image."""
        return int(self.augment.shape[1])


def cache_teacher_views(
    teacher: Any,
    x: np.ndarray,
    views: int,
    *,
    seed: int,
    augment: bool = True,
    pad: int = 4,
) -> TeacherViews:
    """The teacher's logits for ``views`` augmented views of every image of ``x``.

    View ``k`` of the N images draws its crop offsets and flips from a generator keyed by
    ``(seed, k)`` (identity rows without ``augment``); the teacher runs in inference mode
    behind the same :class:`CropFlip` as in online distillation, in batches of
    :func:`eval_batch_size`. Cost: ``views`` forward passes over ``x``.

    Args:
        teacher: the trained teacher (a plain model, uint8 images in, logits out).
        x: uint8 (N, 32, 32, 3) images.
        views: K >= 1.
        seed: the run's seed.
        augment: random views (else every view is the image itself).
        pad: crop padding in pixels.
    """
    if isinstance(views, bool) or not isinstance(views, int) or views < 1:
        raise ConfigError(
            f"cache_teacher_views needs views >= 1, got {views!r}. Fix: pass K >= 1 (0 means "
            "no cache: distill with the online teacher)"
        )
    n = len(x)
    if augment:
        rows = [
            draw_augmentation(np.random.default_rng([seed, k, 0, 3]), n, pad) for k in range(views)
        ]
    else:
        rows = [identity_augmentation(n, pad)] * views
    forward = training_model(teacher, pad)
    logits = np.empty((n, views, NUM_CLASSES), np.float32)
    for k in range(views):
        out = forward.predict(
            {IMAGE_KEY: x, AUGMENT_KEY: rows[k]}, batch_size=eval_batch_size(n), verbose=0
        )
        logits[:, k] = np.asarray(out, np.float32)
    return TeacherViews(np.stack(rows, axis=1), logits)


def weights_fingerprint(model: Any) -> str:
    """sha256 of every weight array of ``model`` (with its shape): part of a distillation
    checkpoint's fingerprint, so a resume with another teacher starts afresh."""
    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(str(w.shape).encode())
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


def distill_trainer(teacher: Any, cfg: DistillConfig, steps: int) -> tuple[Any, Any]:
    """The student of ``cfg.preset`` and a compiled, built distiller from ``teacher``.

    Teacher and student each sit behind the same :class:`CropFlip`: fed the same offsets,
    they see the same augmented images. With ``cfg.teacher_views`` the distiller's teacher is
    :func:`cached_teacher` (the batches then carry the teacher's logits: ``fit(views=...)``).
    """
    student = build_model(cfg.preset, "student", seed=cfg.seed, mixed_precision=cfg.mixed_precision)
    check_compatible(teacher, student)
    cached = cfg.teacher_views > 0
    distiller = make_distiller(
        cached_teacher() if cached else training_model(teacher),
        training_model(student, teacher_logits=cached),
        cfg,
    )
    keras.utils.set_random_seed(cfg.seed)
    compile_distiller(distiller, make_optimizer(cfg, steps), cfg)
    # Built, so a resume can load.
    batch = {
        IMAGE_KEY: np.zeros((1, *IMAGE_SHAPE), np.uint8),
        AUGMENT_KEY: identity_augmentation(1),
    }
    if cached:
        batch[TEACHER_KEY] = np.zeros((1, NUM_CLASSES), np.float32)
    distiller(batch)
    return student, distiller


def distill_student(
    teacher: Any,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    cfg: DistillConfig,
    out_dir: str | Path,
    log: Log = print,
    teacher_info: dict[str, Any] | None = None,
) -> TrainResult:
    """Distill the student of ``cfg.preset`` from ``teacher`` (see :mod:`kd.distill`).

    The student starts from the same weights as the scratch student (same builder and seed);
    validation loss and accuracy of the student are tracked every epoch. With
    ``cfg.teacher_views`` = K the teacher's logits are cached first (:func:`cache_teacher_views`:
    K views of the training split, the validation split as it is), and training reads them;
    ``info.json`` then records ``teacher_cache_s``, the caching's wall time (s).
    ``teacher_info`` (:func:`kd.teacher.teacher_identity`) is recorded as ``info["teacher"]``:
    which teacher taught this student.
    """
    validate_split("train", *train)
    validate_split("validation", *val)
    if cfg.clipnorm == 0 and cfg.learning_rate * cfg.temperature > 0.25:
        log(
            f"[distill_student] warning: lr {cfg.learning_rate} with T={cfg.temperature} and no "
            "clipping diverged on the seed student in measurements; consider clipnorm=2"
        )
    out = Path(out_dir)
    steps = steps_per_epoch(len(train[0]), cfg.batch_size)
    student, distiller = distill_trainer(teacher, cfg, steps)
    # The teacher's weights, not only its size: a resume with another teacher starts afresh.
    fingerprint = data_fingerprint(train) + weights_fingerprint(teacher)
    views = None
    extra: dict[str, Any] = {"teacher": teacher_info or {}}
    if cfg.teacher_views:
        # The output folder is checked (and a checkpoint of another config discarded) before
        # the teacher passes of the cache, not after them.
        prepare_checkpoint(
            out / CHECKPOINT_DIR, config_fingerprint(cfg, fingerprint), log, "distill_student"
        )
        if cfg.teacher_views >= cfg.epochs:
            log(
                f"[distill_student] note: teacher_views={cfg.teacher_views} costs as many "
                f"teacher passes as the online teacher's {cfg.epochs} epochs, or more; "
                "use fewer views, or teacher_views=0 (online)"
            )
        t0 = time.perf_counter()
        views = (
            cache_teacher_views(
                teacher, train[0], cfg.teacher_views, seed=cfg.seed, augment=cfg.augment
            ),
            cache_teacher_views(teacher, val[0], 1, seed=cfg.seed, augment=False),
        )
        extra["teacher_cache_s"] = time.perf_counter() - t0
        log(
            f"[distill_student] cached the teacher's logits for {cfg.teacher_views} view(s) of "
            f"{len(train[0])} training images and the validation split "
            f"({extra['teacher_cache_s']:.1f} s)"
        )
    history = fit(
        distiller,
        train,
        val,
        cfg,
        out,
        name="distill_student",
        fingerprint_extra=fingerprint,
        log=log,
        views=views,
    )
    return finish_stage(student, history, out, cfg, "student", "distill_student", extra)
