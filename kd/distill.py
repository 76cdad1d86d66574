"""Distillation, all of it: the losses, the distiller, the teacher-logit cache and the trainer.

Knowledge distillation on logits, built on ``keras.distillation``.

The loss, per batch (batch mean), with student logits ``s``, teacher logits ``t``, labels ``y``::

    L = alpha * CE(y, softmax(s)) + (1 - alpha) * D(t, s)

``alpha`` weights the hard-label cross-entropy and ``1 - alpha`` the soft (teacher) term ``D``,
chosen by ``DistillConfig.kd_loss`` (:func:`distillation_loss`):

- ``hinton`` (default; Hinton et al., 2015): ``D = T**2 * KL(softmax(t / T) || softmax(s / T))``;
  the ``T**2`` factor keeps the soft-term gradients, which shrink as 1/T**2, on the scale of
  the hard term. Keras' own ``LogitsDistillation``.
- ``dkd`` (:class:`DecoupledKD`, Zhao et al., 2022): Hinton's KL split into the target-class
  and the non-target-class parts, each with its own weight.
- ``dist`` (:class:`DIST`, Huang et al., 2022): one minus the Pearson correlations of the
  softened distributions, across classes and across the batch.
- ``logit_standardization`` (Sun et al., 2024) z-scores both logit vectors first
  (:func:`standardize_logits`), with ``hinton`` or ``dkd``.
- ``feature_weight`` ``w`` > 0 adds a feature term, ``D + w * MSE(f_t, P(f_s))``, through
  ``keras.distillation.FeatureDistillation`` on named layers, ``P`` a trainable projection
  to the teacher's width (:func:`feature_training_model`).

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
from kd.parallel import data_parallel, replicas, replicate
from kd.parallel import predict as parallel_predict
from kd.train import (
    AUGMENT_KEY,
    BLEND_ONE,
    CHECKPOINT_DIR,
    IMAGE_KEY,
    TEACHER_KEY,
    CropFlip,
    Log,
    TrainResult,
    batch_inputs,
    blend_images,
    config_fingerprint,
    data_fingerprint,
    draw_augmentation,
    eval_batch_size,
    finish_stage,
    fit,
    hard_loss,
    identity_augmentation,
    log_replicas,
    make_optimizer,
    prepare_checkpoint,
    shardable_validation,
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
    **soft: Any,
) -> float:
    """The distillation loss in plain NumPy (float64), the reference the tests check against.

    ``L = alpha * CE(y, s) + (1 - alpha) * D(t, s)``, batch mean, with ``D`` from
    :func:`soft_loss_reference` (``soft``: ``kd_loss`` and its options; default Hinton's
    ``T**2 * KL(softmax(t/T) || softmax(s/T))``).

    Args:
        y: integer labels, shape (N,).
        student_logits: (N, C) student logits ``s``.
        teacher_logits: (N, C) teacher logits ``t``.
        temperature: T > 0.
        alpha: weight of the hard-label cross-entropy, in [0, 1].
        label_smoothing: ``eps`` of the hard loss's targets ``(1 - eps) * onehot(y) + eps / C``.
        soft: ``kd_loss``, ``logit_standardization`` and the loss's weights.

    Returns:
        The scalar loss (nats, but for DIST's term, which is one minus correlations).
    """
    y = np.asarray(y).astype(int).ravel()
    c = np.asarray(student_logits).shape[-1]
    targets = (1.0 - label_smoothing) * np.eye(c)[y] + label_smoothing / c
    ce = -(targets * log_softmax(student_logits)).sum(axis=-1).mean()
    d = soft_loss_reference(y, student_logits, teacher_logits, temperature, **soft)
    return float(alpha * ce + (1.0 - alpha) * d)


def _standardize_np(z: np.ndarray, eps: float = 1e-7) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    return (z - z.mean(axis=-1, keepdims=True)) / (z.std(axis=-1, keepdims=True) + eps)


def _pearson_rows_np(a: np.ndarray, b: np.ndarray, eps: float = 1e-8) -> np.ndarray:
    a = a - a.mean(axis=1, keepdims=True)
    b = b - b.mean(axis=1, keepdims=True)
    return (a * b).sum(axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1) + eps)


def soft_loss_reference(
    y: np.ndarray,
    student_logits: np.ndarray,
    teacher_logits: np.ndarray,
    temperature: float,
    kd_loss: str = "hinton",
    **options: Any,
) -> float:
    """The soft term ``D(t, s)`` of each ``kd_loss`` in plain NumPy (float64), batch mean: the
    reference the tests check the Keras losses against. Formulas: the classes' docstrings.
    ``options``: ``logit_standardization`` and the loss's weights, DistillConfig's fields (and
    defaults)."""
    cfg = DistillConfig(temperature=temperature, kd_loss=kd_loss, **options)
    dkd_alpha, dkd_beta = cfg.dkd_alpha, cfg.dkd_beta
    dist_beta, dist_gamma = cfg.dist_beta, cfg.dist_gamma
    logit_standardization = cfg.logit_standardization
    y = np.asarray(y).astype(int).ravel()
    t, s = np.asarray(teacher_logits, np.float64), np.asarray(student_logits, np.float64)
    if logit_standardization:
        t, s = _standardize_np(t), _standardize_np(s)
    tt, ss = t / temperature, s / temperature
    if kd_loss == "hinton":
        log_p, log_q = log_softmax(tt), log_softmax(ss)
        return float(temperature**2 * (np.exp(log_p) * (log_p - log_q)).sum(axis=-1).mean())
    if kd_loss == "dkd":
        n, c = t.shape
        p, q = np.exp(log_softmax(tt)), np.exp(log_softmax(ss))
        gt = np.eye(c, dtype=bool)[y]
        bp = np.stack([p[gt], 1 - p[gt]], axis=1)
        bq = np.stack([q[gt], 1 - q[gt]], axis=1)
        tckd = (bp * (np.log(bp) - np.log(bq))).sum(axis=1)
        others = ~gt
        pt = tt[others].reshape(n, c - 1)  # the non-target logits, in class order
        st = ss[others].reshape(n, c - 1)
        log_p2, log_q2 = log_softmax(pt), log_softmax(st)
        nckd = (np.exp(log_p2) * (log_p2 - log_q2)).sum(axis=1)
        return float(temperature**2 * (dkd_alpha * tckd + dkd_beta * nckd).mean())
    if kd_loss == "dist":
        p, q = np.exp(log_softmax(tt)), np.exp(log_softmax(ss))
        inter = 1.0 - _pearson_rows_np(q, p).mean()
        intra = 1.0 - _pearson_rows_np(q.T, p.T).mean()
        return float(temperature**2 * (dist_beta * inter + dist_gamma * intra))
    raise ValueError(f"unknown kd_loss {kd_loss!r}")


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


def standardize_logits(z: Any, eps: float = 1e-7) -> Any:
    """Logit standardization (Sun et al., CVPR 2024, "Logit Standardization in Knowledge
    Distillation"): ``(z - mean(z)) / (std(z) + eps)`` over the classes of each row.

    It removes each logit vector's shift and scale, so the student matches the teacher's
    logit *relations* rather than their magnitude (a small student need not reach a large
    teacher's logit range). ``std`` is the population one; the paper's code takes PyTorch's
    unbiased one, so its z-scores are ``sqrt((C - 1) / C)`` of these: the same softmax as
    this at a T about 5 % higher for C = 10 (and a T**2 factor about 11 % lower). Float32.
    """
    z = keras.ops.cast(z, "float32")
    mean = keras.ops.mean(z, axis=-1, keepdims=True)
    std = keras.ops.std(z, axis=-1, keepdims=True)
    return (z - mean) / (std + eps)


class StandardizedLogitsDistillation(keras.distillation.LogitsDistillation):
    """Hinton's loss on standardized logits: Keras' ``LogitsDistillation`` (with a
    ``KLDivergence`` instance, so ``T**2 * KL(softmax(t'/T) || softmax(s'/T))``) applied to
    ``t' = standardize_logits(t)`` and ``s' = standardize_logits(s)``."""

    def compute_loss(self, teacher_outputs: Any, student_outputs: Any, **kwargs: Any) -> Any:
        return super().compute_loss(
            standardize_logits(teacher_outputs), standardize_logits(student_outputs)
        )


class DecoupledKD(keras.distillation.DistillationLoss):
    """Decoupled knowledge distillation (Zhao et al., CVPR 2022, "Decoupled Knowledge
    Distillation"), batch mean, with ``p = softmax(z / T)`` and ``y`` the label::

        b = (p_y, 1 - p_y)                     the target class against all the others
        p^ = softmax of z / T over the classes other than y
        TCKD = KL(b_t || b_s),   NCKD = KL(p^_t || p^_s)
        DKD = T**2 * (alpha * TCKD + beta * NCKD)

    Hinton's loss is ``T**2 * (TCKD + (1 - p_y of the teacher) * NCKD)``: the non-target term
    is weighted down exactly where the teacher is confident; DKD gives it its own weight
    ``beta`` (the paper: ``alpha = 1``, ``beta = 8`` on CIFAR-100). ``alpha`` here is DKD's,
    not the hard loss's weight. The paper's code also ramps the loss in over its first 20
    epochs; that is not done here (the warm-up of the learning rate is).

    Written here because Keras has no such loss. It needs the batch's labels, which Keras'
    ``Distiller`` does not hand to its losses: :class:`Distiller` sets :attr:`labels` for
    each step. With ``standardize`` the logits are z-scored first (:func:`standardize_logits`).
    """

    def __init__(
        self, temperature: float, alpha: float, beta: float, standardize: bool = False
    ) -> None:
        self.temperature, self.alpha, self.beta = float(temperature), float(alpha), float(beta)
        self.standardize = standardize
        self.labels: Any = None

    def compute_loss(self, teacher_outputs: Any, student_outputs: Any, **kwargs: Any) -> Any:
        ops = keras.ops
        if self.labels is None:
            raise ValueError("DecoupledKD needs the batch's labels: use kd.distill.Distiller")
        t = ops.cast(teacher_outputs, "float32")
        s = ops.cast(student_outputs, "float32")
        if self.standardize:
            t, s = standardize_logits(t), standardize_logits(s)
        t, s = t / self.temperature, s / self.temperature
        labels = ops.reshape(ops.cast(self.labels, "int32"), (-1,))
        gt = ops.one_hot(labels, ops.shape(t)[-1], dtype="float32")
        p, q = ops.softmax(t, axis=-1), ops.softmax(s, axis=-1)

        def binary(probs: Any) -> Any:
            # Both parts summed (not 1 - target: float32 loses a confident student's rest).
            target = ops.sum(probs * gt, axis=-1)
            rest = ops.sum(probs * (1.0 - gt), axis=-1)
            return ops.clip(ops.stack([target, rest], axis=-1), 1e-7, 1.0)

        bp, bq = binary(p), binary(q)
        tckd = ops.sum(bp * (ops.log(bp) - ops.log(bq)), axis=-1)
        # The target class out of both softmaxes (a logit of -1e9: its exp is 0 in float32,
        # whatever T; the paper's code subtracts 1000, which a small T can outgrow).
        masked = gt > 0.5
        log_p2 = ops.log_softmax(ops.where(masked, -1e9, t), axis=-1)
        log_q2 = ops.log_softmax(ops.where(masked, -1e9, s), axis=-1)
        nckd = ops.sum(ops.exp(log_p2) * (log_p2 - log_q2), axis=-1)
        return self.temperature**2 * ops.mean(self.alpha * tckd + self.beta * nckd)

    def get_config(self) -> dict[str, Any]:
        return {
            "temperature": self.temperature,
            "alpha": self.alpha,
            "beta": self.beta,
            "standardize": self.standardize,
        }


def _pearson_rows(a: Any, b: Any, eps: float = 1e-8) -> Any:
    """Pearson's correlation of each row of ``a`` with the same row of ``b``."""
    ops = keras.ops
    a = a - ops.mean(a, axis=1, keepdims=True)
    b = b - ops.mean(b, axis=1, keepdims=True)
    norms = ops.sqrt(ops.sum(a * a, axis=1)) * ops.sqrt(ops.sum(b * b, axis=1))
    return ops.sum(a * b, axis=1) / (norms + eps)


class DIST(keras.distillation.DistillationLoss):
    """DIST (Huang et al., NeurIPS 2022, "Knowledge Distillation from A Stronger Teacher"),
    with ``P = softmax(z / T)`` the batch's (N, C) softened distributions::

        inter = 1 - mean over images i of pearson(P_s[i, :], P_t[i, :])
        intra = 1 - mean over classes j of pearson(P_s[:, j], P_t[:, j])
        DIST = T**2 * (beta * inter + gamma * intra)

    It asks the student to rank the classes as the teacher does (inter) and the images of a
    class as the teacher does (intra), not to match the probabilities exactly, which the
    paper finds better when the teacher is much stronger than the student. The intra term
    depends on the batch (a correlation across its images). Written here because Keras has no
    such loss. Pearson's eps is 1e-8, as the paper's code. Unlike Hinton's KL, the
    correlations of ``softmax(z / T)`` stop depending on T once T is large, so the ``T**2``
    factor (the paper's) then only scales DIST up (25x at T = 5): compare losses in a sweep
    with that in mind, or give DIST its own T. Unitless (one minus correlations).
    """

    def __init__(self, temperature: float, beta: float, gamma: float) -> None:
        self.temperature, self.beta, self.gamma = float(temperature), float(beta), float(gamma)

    def compute_loss(self, teacher_outputs: Any, student_outputs: Any, **kwargs: Any) -> Any:
        ops = keras.ops
        p = ops.softmax(ops.cast(teacher_outputs, "float32") / self.temperature, axis=-1)
        q = ops.softmax(ops.cast(student_outputs, "float32") / self.temperature, axis=-1)
        inter = 1.0 - ops.mean(_pearson_rows(q, p))
        intra = 1.0 - ops.mean(_pearson_rows(ops.transpose(q), ops.transpose(p)))
        return self.temperature**2 * (self.beta * inter + self.gamma * intra)

    def get_config(self) -> dict[str, Any]:
        return {"temperature": self.temperature, "beta": self.beta, "gamma": self.gamma}


def distillation_loss(cfg: DistillConfig) -> Any:
    """The ``keras.distillation`` loss of ``cfg.kd_loss`` (the soft term ``D``)."""
    temperature = float(cfg.temperature)
    if cfg.kd_loss == "dkd":
        return DecoupledKD(
            temperature, cfg.dkd_alpha, cfg.dkd_beta, standardize=cfg.logit_standardization
        )
    if cfg.kd_loss == "dist":
        return DIST(temperature, cfg.dist_beta, cfg.dist_gamma)
    cls = (
        StandardizedLogitsDistillation
        if cfg.logit_standardization
        else keras.distillation.LogitsDistillation
    )
    # An instance, not the default "kl_divergence" string (see the module docstring).
    return cls(temperature=temperature, loss=keras.losses.KLDivergence())


#: The names under which the fit models expose the distilled features (the layers named in
#: the config are inside the nested teacher and student; Keras' feature extractor looks for a
#: top-level layer of the model it is given).
TEACHER_FEATURES, STUDENT_FEATURES = "kd_teacher_features", "kd_student_features"
PROJECTION = "kd_projection"


class Carry(keras.layers.Layer):
    """``[logits, features] -> logits``: keeps the feature branch of a
    :func:`feature_training_model` on the path to its output (a Functional model holds only
    the layers between its inputs and outputs), so Keras' feature extractor finds it."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)

    def call(self, inputs: Any) -> Any:
        return inputs[0]

    def compute_output_shape(self, input_shape: Any) -> Any:
        return input_shape[0]


def _layer_output(model: Any, name: str, role: str) -> Any:
    try:
        layer = model.get_layer(name)
    except ValueError:
        names = ", ".join(lyr.name for lyr in model.layers)
        raise ConfigError(
            f"invalid {role}_feature_layer={name!r}: the {role} {model.name!r} has no layer of "
            f"that name. Fix: pass one of {names}"
        ) from None
    calls = len(getattr(layer, "_inbound_nodes", [])) or 1
    if calls > 1:
        raise ConfigError(
            f"invalid {role}_feature_layer={name!r}: the {role} {model.name!r} calls that layer "
            f"{calls} times per image (e.g. a test-time-augmentation wrapper), so it has no "
            f"single output. Fix: pass a layer called once, or a {role} without the wrapper"
        )
    return layer.output


def feature_training_model(
    model: Any, layer: str, role: str, project_to: tuple[int, ...] | None = None
) -> Any:
    """``model`` behind a :class:`CropFlip` (as :func:`kd.train.training_model`: same inputs,
    the same logits out, ``model``'s variables) that also exposes the output of its layer
    ``layer`` as the top-level layer :data:`TEACHER_FEATURES` / :data:`STUDENT_FEATURES`
    (``role`` ``teacher`` / ``student``). With ``project_to`` (the teacher's feature shape,
    student only) the features first go through :data:`PROJECTION`, a 1x1 convolution (or a
    dense layer for vectors) to the teacher's width when it differs; its weights belong to this
    fit model, not to ``model`` (the stage saves ``model`` alone)."""
    feats = _layer_output(model, layer, role)
    inner = keras.Model(model.inputs, [model.outputs[0], feats], name=f"{model.name}_features")
    inputs = batch_inputs(model.input_shape[1:], False)
    x = CropFlip(4, name="crop_flip")([inputs[IMAGE_KEY], inputs[AUGMENT_KEY]])
    logits, f = inner(x)
    if project_to is not None:
        have = tuple(feats.shape[1:])
        if have[:-1] != tuple(project_to[:-1]):
            raise ConfigError(
                f"invalid student_feature_layer={layer!r}: its output {have} and the teacher "
                f"layer's {tuple(project_to)} differ in more than the width (channels). Fix: "
                "pick a student layer of the teacher layer's spatial size"
            )
        if have[-1] != project_to[-1]:
            cls = keras.layers.Conv2D if len(have) == 3 else keras.layers.Dense
            args = (project_to[-1], 1) if len(have) == 3 else (project_to[-1],)
            f = cls(*args, name=PROJECTION, dtype="float32")(f)
    name = TEACHER_FEATURES if role == "teacher" else STUDENT_FEATURES
    f = keras.layers.Identity(name=name, dtype="float32")(f)
    return keras.Model(inputs, Carry(name="logits_out")([logits, f]), name=f"{model.name}_fit")


def feature_loss() -> Any:
    """The feature term: Keras' ``FeatureDistillation`` (mean squared error) between the
    :func:`feature_training_model` layers of teacher and student."""
    return keras.distillation.FeatureDistillation(
        loss="mse", teacher_layer_name=TEACHER_FEATURES, student_layer_name=STUDENT_FEATURES
    )


class Distiller(keras.distillation.Distiller):
    """Keras' ``Distiller``, which also hands each step's labels to the losses that need them
    (:class:`DecoupledKD`): Keras 3.15's ``Distiller.compute_loss`` calls each loss's
    ``compute_loss(teacher_outputs, student_outputs)`` without them. Nothing else differs."""

    def compute_loss(
        self,
        x: Any = None,
        y: Any = None,
        y_pred: Any = None,
        sample_weight: Any = None,
        training: bool = True,
    ) -> Any:
        needs = [d for d in self.distillation_losses if isinstance(d, DecoupledKD)]
        for d in needs:
            d.labels = y
        try:
            return super().compute_loss(
                x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=training
            )
        finally:
            for d in needs:
                d.labels = None


def make_distiller(teacher: Any, student: Any, cfg: DistillConfig) -> Any:
    """A :class:`Distiller` (Keras' ``Distiller``) computing the loss in this module's
    docstring, with the soft term of ``cfg.kd_loss`` (:func:`distillation_loss`).

    Args:
        teacher: the trained teacher (frozen here: ``trainable = False``).
        student: the student to train (logits out).
        cfg: temperature ``T``, ``alpha`` (the weight of the hard loss), the loss and the
            feature term's weight ``feature_weight`` (Keras weighs each distillation loss
            and multiplies their sum by ``1 - alpha``).

    Returns:
        An uncompiled Distiller; compile it with :func:`compile_distiller`.
    """
    check_compatible(teacher, student)
    teacher.trainable = False
    losses, weights = [distillation_loss(cfg)], [1.0]
    if cfg.feature_weight > 0:  # the fit models of feature_training_model
        losses.append(feature_loss())
        weights.append(float(cfg.feature_weight))
    return Distiller(
        teacher=teacher,
        student=student,
        distillation_losses=losses,
        distillation_loss_weights=weights,
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
        mix: None (every view is its image, cropped and flipped), or int32 (N, K, 2)
            ``(partner, w)`` rows: the view is first blended with image ``partner`` at weight
            ``w`` in 256ths (:func:`kd.train.blend_images`; a plain view is ``(i, 256)``).
    """

    augment: np.ndarray
    logits: np.ndarray
    # The teacher's logits do not depend on the flip (:func:`flip_invariant`): the rows hold
    # flip 0, and :class:`kd.train.BatchSequence` draws each use's flip afresh.
    flip_free: bool = False
    mix: np.ndarray | None = None

    @property
    def count(self) -> int:
        """K, the views per image."""
        return int(self.augment.shape[1])


# The images flip_invariant compares with their mirrors.
FLIP_PROBE = 32


def flip_invariant(teacher: Any, x: np.ndarray, *, probe: int = FLIP_PROBE, pad: int = 4) -> bool:
    """Whether the teacher's logits for an image and for its mirror image are the same.

    True for a teacher wrapped in flip test-time augmentation (:func:`kd.models.flip_tta`, the
    shipped teacher: ``(f(v) + f(mirror v)) / 2`` is the same for ``v`` and ``mirror v``);
    false for almost any other net. Measured, not read off the architecture: the teacher's
    inference-mode logits on the first ``probe`` images and on their mirrors agree to within
    ``1e-4 * (1 + max |logit|)``. Cost: two forward passes over ``probe`` images.
    """
    return _mirror_agrees(training_model(teacher, pad), x[:probe], pad)


def _mirror_agrees(forward: Any, xs: np.ndarray, pad: int) -> bool:
    """:func:`flip_invariant` on the teacher's :func:`training_model` ``forward``."""
    if len(xs) == 0:
        return False
    rows = identity_augmentation(len(xs), pad)
    mirrored = rows.copy()
    mirrored[:, 2] = 1
    a = np.asarray(parallel_predict(forward, {IMAGE_KEY: xs, AUGMENT_KEY: rows}, 32), np.float64)
    b = np.asarray(
        parallel_predict(forward, {IMAGE_KEY: xs, AUGMENT_KEY: mirrored}, 32), np.float64
    )
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return False
    return bool(np.abs(a - b).max() <= 1e-4 * (1.0 + np.abs(a).max()))


def cache_teacher_views(
    teacher: Any,
    x: np.ndarray,
    views: int,
    *,
    seed: int,
    augment: bool = True,
    pad: int = 4,
    mixup_views: int = 0,
) -> TeacherViews:
    """The teacher's logits for ``views`` augmented views of every image of ``x``, and for
    ``mixup_views`` mixed ones.

    View ``k`` of the N images draws its crop offsets and flips from a generator keyed by
    ``(seed, k)`` (identity rows without ``augment``); the teacher runs in inference mode
    behind the same :class:`CropFlip` as in online distillation, in batches of
    :func:`eval_batch_size`. Cost: ``views`` forward passes over ``x``.

    A flip-invariant teacher (:func:`flip_invariant`, e.g. the shipped flip-TTA teacher) gives
    the same logits for a crop and its mirror, so each view is cached as its crop alone (flip
    0) and marked ``flip_free``: training then draws the flip of every use afresh, and each
    cached crop serves both flips at no extra teacher pass (2K distinct views for K passes).

    Mixed view ``K + m`` (``m < mixup_views``; ``DistillConfig.teacher_mixup_views`` says why)
    of image ``i`` blends it with image ``j`` at weight ``w`` (:func:`kd.train.blend_images`),
    ``j`` uniform over the N images and ``w`` uniform in 0..256, both drawn from a generator
    keyed by ``(seed, K + m)``, then crops and flips the blend as a plain view does. The plain
    views are drawn as without mixed ones, so adding mixed views leaves them unchanged.

    Args:
        teacher: the trained teacher (a plain model, uint8 images in, logits out).
        x: uint8 (N, 32, 32, 3) images.
        views: K >= 1.
        seed: the run's seed.
        augment: random views (else every view is the image itself).
        pad: crop padding in pixels.
        mixup_views: M >= 0 mixed views after the K plain ones.
    """
    if isinstance(views, bool) or not isinstance(views, int) or views < 1:
        raise ConfigError(
            f"cache_teacher_views needs views >= 1, got {views!r}. Fix: pass K >= 1 (0 means "
            "no cache: distill with the online teacher)"
        )
    if isinstance(mixup_views, bool) or not isinstance(mixup_views, int) or mixup_views < 0:
        raise ConfigError(
            f"cache_teacher_views needs mixup_views >= 0, got {mixup_views!r}. Fix: pass M >= 0 "
            "(0: plain views only)"
        )
    n, total = len(x), views + mixup_views
    forward = training_model(teacher, pad)
    flip_free = False
    if augment:
        rows = [
            draw_augmentation(np.random.default_rng([seed, k, 0, 3]), n, pad) for k in range(total)
        ]
        flip_free = _mirror_agrees(forward, x[:FLIP_PROBE], pad)
        if flip_free:
            for r in rows:
                r[:, 2] = 0
    else:
        rows = [identity_augmentation(n, pad)] * total
    mix = np.empty((n, total, 2), np.int32)
    mix[:, :views] = np.stack([np.arange(n), np.full(n, BLEND_ONE)], axis=1)[:, None]
    for k in range(views, total):
        rng = np.random.default_rng([seed, k, 0, 5])
        mix[:, k, 0] = rng.integers(0, n, size=n)
        mix[:, k, 1] = rng.integers(0, BLEND_ONE + 1, size=n)
    logits = np.empty((n, total, NUM_CLASSES), np.float32)
    for k in range(total):
        images = x if k < views else blend_images(x, x[mix[:, k, 0]], mix[:, k, 1])
        batch = {IMAGE_KEY: images, AUGMENT_KEY: rows[k]}
        logits[:, k] = np.asarray(parallel_predict(forward, batch, eval_batch_size(n)), np.float32)
    return TeacherViews(
        np.stack(rows, axis=1), logits, flip_free=flip_free, mix=mix if mixup_views else None
    )


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
    if cfg.feature_weight > 0:
        t_fit = feature_training_model(teacher, cfg.teacher_feature_layer, "teacher")
        shape = tuple(t_fit.get_layer(TEACHER_FEATURES).output.shape[1:])
        s_fit = feature_training_model(student, cfg.student_feature_layer, "student", shape)
    else:
        t_fit = cached_teacher() if cached else training_model(teacher)
        s_fit = training_model(student, teacher_logits=cached)
    distiller = make_distiller(t_fit, s_fit, cfg)
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
    ``info.json`` then records ``teacher_cache_s``, the caching's wall time (s), and
    ``teacher_flip_invariant`` (whether each cached crop served both flips).
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
    n = replicas(cfg.devices, cfg.batch_size, "distill_student")
    with data_parallel(n):
        log_replicas(n, cfg.batch_size, "distill_student", log)
        val = shardable_validation(val, log, "distill_student")
        # The teacher was loaded before: rebuilt here, its variables are replicated too.
        return _distill(replicate(teacher), train, val, cfg, Path(out_dir), log, teacher_info)


def _distill(
    teacher: Any,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    cfg: DistillConfig,
    out: Path,
    log: Log,
    teacher_info: dict[str, Any] | None,
) -> TrainResult:
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
        passes = cfg.teacher_views + cfg.teacher_mixup_views
        if passes >= cfg.epochs:
            log(
                f"[distill_student] note: {passes} cached views cost as many teacher passes "
                f"as the online teacher's {cfg.epochs} epochs, or more; use fewer views, or "
                "teacher_views=0 (online)"
            )
        t0 = time.perf_counter()
        views = (
            cache_teacher_views(
                teacher,
                train[0],
                cfg.teacher_views,
                seed=cfg.seed,
                augment=cfg.augment,
                mixup_views=cfg.teacher_mixup_views,
            ),
            cache_teacher_views(teacher, val[0], 1, seed=cfg.seed, augment=False),
        )
        extra["teacher_cache_s"] = time.perf_counter() - t0
        extra["teacher_flip_invariant"] = views[0].flip_free
        flips = (
            " (the teacher is flip-invariant: each serves both flips)" if views[0].flip_free else ""
        )
        mixed = f" and {cfg.teacher_mixup_views} mixed (mixup)" if cfg.teacher_mixup_views else ""
        log(
            f"[distill_student] cached the teacher's logits for {cfg.teacher_views} view(s)"
            f"{mixed} of {len(train[0])} training images{flips} and the validation split "
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
