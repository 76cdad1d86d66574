"""One typed, validated config per pipeline stage; every default is defined here, once.

The pipeline's parameter defaults, the local runner's flags and the benchmarks all read these
dataclasses, so a default changes in one place. Each config validates itself on construction
(``__post_init__``) and raises :class:`kd.errors.ConfigError` naming the field and the fix,
before any data is loaded or any training starts.

Units: learning rates are peak rates per optimizer step; epochs are full passes over the
training split; ``temperature`` is dimensionless (T in softmax(z/T)); ``alpha`` is the weight
of the hard-label loss (see :class:`DistillConfig`).
"""

from __future__ import annotations

import dataclasses
import inspect
import math
import re
from dataclasses import dataclass, field
from typing import Any, NoReturn, TypeVar

from kd.errors import ConfigError

NUM_CLASSES = 10
IMAGE_SHAPE = (32, 32, 3)
CLASS_NAMES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)

PRESETS = ("seed", "resnet", "fast")
OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("cosine", "constant")
#: Where a compiled pipeline runs: a Kubeflow Pipelines server or Vertex AI Pipelines.
TARGETS = ("kfp", "vertex")
#: The Vertex AI GPU type of the training steps when GPUs are asked for without a type.
DEFAULT_VERTEX_ACCELERATOR = "T4"
# The most augmented views per image DistillConfig.teacher_views (plus teacher_mixup_views)
# caches: 60 bytes per view and image (10 float32 logits, an (oy, ox, flip) row and, with mixed
# views, a (partner, weight) row), 154 MB for 40,000 images at 64 views.
MAX_TEACHER_VIEWS = 64
#: The distillation losses (:mod:`kd.distill`): Hinton's KD, decoupled KD, DIST.
KD_LOSSES = ("hinton", "dkd", "dist")
#: The distillation loss's fields of DistillConfig (beside temperature and alpha).
LOSS_KEYS = (
    "kd_loss",
    "logit_standardization",
    "dkd_alpha",
    "dkd_beta",
    "dist_beta",
    "dist_gamma",
    "feature_weight",
    "teacher_feature_layer",
    "student_feature_layer",
)
#: The per-point keys a sweep grid may set (``temperature`` and ``alpha`` are required).
GRID_KEYS = ("temperature", "alpha", *LOSS_KEYS)

T = TypeVar("T")


def _fail(field_name: str, value: Any, fix: str) -> NoReturn:
    raise ConfigError(f"invalid {field_name}={value!r}: {fix}")


def uneven_batch(batch_size: int, devices: int) -> str:
    """Empty when the global ``batch_size`` splits evenly over ``devices``; else the fix
    ("a multiple of N, e.g. M"), which every check of it (config, stage, submission) names."""
    if devices <= 1 or batch_size % devices == 0:
        return ""
    return f"a multiple of {devices} (e.g. {batch_size - batch_size % devices or devices})"


def _check_int(name: str, value: Any, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        _fail(name, value, f"must be an integer >= {minimum}")


def _check_float(
    name: str, value: Any, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False
) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        _fail(name, value, "must be a finite number")
    too_low = value <= lo if lo_open else value < lo
    too_high = value >= hi if hi_open else value > hi
    if too_low or too_high:
        lb = "(" if lo_open else "["
        rb = ")" if hi_open else "]"
        _fail(name, value, f"must be in {lb}{lo}, {hi}{rb}")


def _check_choice(name: str, value: Any, choices: tuple[str, ...]) -> None:
    if value not in choices:
        _fail(name, value, f"choose one of {', '.join(choices)}")


@dataclass(frozen=True)
class SplitConfig:
    """The data-split stage.

    Args:
        source: where CIFAR-10 comes from: ``sample`` (the small real sample shipped with the
            package, works offline), ``keras`` (``keras.datasets.cifar10.load_data()``, needs
            internet), a local path (``cifar-10-python.tar.gz``, ``cifar-10-batches-py/``,
            ``cifar-10-binary.tar.gz``, ``cifar-10-batches-bin/``, a folder with ``train.npz``
            and ``test.npz``, or one ``.npz`` with ``x_train/y_train/x_test/y_test``), or any of
            these under ``gs://bucket/path``.
        val_fraction: fraction of the official train set held out for validation, stratified
            (0.2 gives the notebook's 40,000/10,000).
        seed: seed of the stratified split and of any per-class subsample.
        train_per_class: keep at most this many training images per class (0 = all); for
            quick runs and tests.
        test_per_class: keep at most this many test images per class (0 = all).
    """

    source: str = "sample"
    val_fraction: float = 0.2
    seed: int = 42
    train_per_class: int = 0
    test_per_class: int = 0

    def __post_init__(self) -> None:
        if not isinstance(self.source, str) or not self.source.strip():
            _fail("source", self.source, "must be 'sample', 'keras', a path or a gs:// URI")
        _check_float("val_fraction", self.val_fraction, 0.0, 1.0, lo_open=True, hi_open=True)
        _check_int("seed", self.seed, 0)
        _check_int("train_per_class", self.train_per_class, 0)
        _check_int("test_per_class", self.test_per_class, 0)


@dataclass(frozen=True)
class TrainConfig:
    """Supervised training of one model (the base of every training stage).

    Args:
        preset: model preset name (``seed``: the notebook's architectures; ``resnet``;
            ``fast``: an airbench-style teacher with the seed student, see :mod:`kd.models`).
        epochs: number of epochs (passes over the training split, each in a fresh shuffled
            order; only full batches are used, so the last ``N mod batch_size`` images of each
            order sit that epoch out).
        batch_size: images per optimizer step.
        optimizer: ``sgd`` (Nesterov momentum), ``adam`` or ``adamw``.
        learning_rate: peak learning rate per step.
        momentum: SGD momentum (ignored by adam/adamw).
        weight_decay: decoupled weight decay per step, multiplied by the learning rate.
        schedule: ``cosine`` (linear warm-up, then cosine decay to 0) or ``constant``.
        warmup_epochs: epochs of linear warm-up (cosine schedule only).
        clipnorm: clip the global gradient norm to this value (0 = no clipping).
        label_smoothing: label smoothing of the hard-label cross-entropy, in [0, 1).
        augment: random crop (4-pixel zero padding) and horizontal flip of training images.
        mixed_precision: compute in bfloat16 with float32 weights (``mixed_bfloat16``).
        early_stopping_patience: stop after this many epochs without a better validation
            accuracy and restore the best weights (0 = off).
        divergence_check_epoch: from this epoch on (1-based), validation accuracy at chance
            (<= 1/num_classes + 0.02) raises DivergenceError (0 = off).
        seed: seed of weight initialisation, data order, augmentation and dropout.
        jit_compile: on TensorFlow, compile the training step with XLA
            (``keras.Model.compile(jit_compile=True)``; Keras' default leaves it off there).
            On 2 CPU cores the ``fast`` teacher's step took 3.85 s instead of 7.1 s (see
            docs/RESULTS.md); for the seed student it is not measured by a benchmark. On JAX
            every step is compiled whatever this says.
        devices: the devices to train on, data-parallel (:mod:`kd.parallel`): 0 (default)
            every visible one (one per GPU the step reserved), N > 0 exactly N.
            ``batch_size`` is the global batch, split evenly over them (it must be a
            multiple of N), and ``learning_rate`` is the rate for that global batch: N
            devices train as one does with the same ``batch_size`` (on TensorFlow BatchNorm
            normalises each device's shard on its own); no rescaling.
    """

    preset: str = "seed"
    epochs: int = 60
    batch_size: int = 128
    optimizer: str = "sgd"
    learning_rate: float = 0.1
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    warmup_epochs: int = 2
    clipnorm: float = 0.0
    label_smoothing: float = 0.0
    augment: bool = True
    mixed_precision: bool = False
    early_stopping_patience: int = 0
    divergence_check_epoch: int = 3
    seed: int = 42
    jit_compile: bool = False
    devices: int = 0

    def __post_init__(self) -> None:
        _check_choice("preset", self.preset, PRESETS)
        _check_int("devices", self.devices, 0)
        _check_int("epochs", self.epochs, 1)
        _check_int("batch_size", self.batch_size, 1)
        if fix := uneven_batch(self.batch_size, self.devices):
            _fail(
                "batch_size",
                self.batch_size,
                f"must be a multiple of devices={self.devices}: it is the global batch, split "
                f"evenly over the devices. Fix: use {fix}",
            )
        _check_choice("optimizer", self.optimizer, OPTIMIZERS)
        _check_float("learning_rate", self.learning_rate, 0.0, 10.0, lo_open=True)
        _check_float("momentum", self.momentum, 0.0, 1.0, hi_open=True)
        _check_float("weight_decay", self.weight_decay, 0.0, 1.0, hi_open=True)
        _check_choice("schedule", self.schedule, SCHEDULES)
        _check_int("warmup_epochs", self.warmup_epochs, 0)
        _check_float("clipnorm", self.clipnorm, 0.0, 1e6)
        _check_float("label_smoothing", self.label_smoothing, 0.0, 1.0, hi_open=True)
        _check_int("early_stopping_patience", self.early_stopping_patience, 0)
        _check_int("divergence_check_epoch", self.divergence_check_epoch, 0)
        _check_int("seed", self.seed, 0)
        if not isinstance(self.augment, bool):
            _fail("augment", self.augment, "must be true or false")
        if not isinstance(self.mixed_precision, bool):
            _fail("mixed_precision", self.mixed_precision, "must be true or false")
        if not isinstance(self.jit_compile, bool):
            _fail("jit_compile", self.jit_compile, "must be true or false")


@dataclass(frozen=True)
class TeacherSourceConfig:
    """Where the teacher comes from.

    Args:
        model: ``""`` (default) trains a teacher (``train_teacher``, :class:`TeacherConfig`);
            otherwise the trained teacher to distill from, brought in by ``dsl.importer`` and
            checked by ``check_teacher`` (:mod:`kd.teacher`): ``shipped`` (the teacher shipped
            in ``kd/teachers/``; local runs), a local path (local runs) or a ``gs://`` URI of a
            ``.keras`` file, or a teacher Model folder of an earlier run.
    """

    model: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.model, str) or self.model != self.model.strip():
            _fail(
                "teacher_model",
                self.model,
                "must be '' (train one), 'shipped', a path or a gs:// URI, without spaces "
                "around it",
            )
        if self.model.startswith("gs://") and len(self.model.rstrip("/")) <= len("gs://"):
            _fail("teacher_model", self.model, "name an object: gs://BUCKET/PATH/teacher.keras")


@dataclass(frozen=True)
class TeacherConfig(TrainConfig):
    """Training the teacher. Same fields as :class:`TrainConfig`; the teacher has BatchNorm and
    takes the higher peak learning rate."""


def shipped_teacher_config() -> TeacherConfig:
    """The recipe of the teacher shipped in ``kd/teachers/`` (``tools/train_teacher.py``
    trains it on the official training images: 45,000 train, 5,000 validation).

    The ``fast`` preset with airbench's optimiser (``main1_whiten`` of KellerJordan's
    cifar10-zoo ablations: lr 10 and weight decay 0.0153 "per 1,024 examples", Nesterov
    momentum 0.85, label smoothing 0.2) converted to this package's parametrisation at batch
    512: the mean-loss learning rate 10 / (1 + 1 / (1 - 0.85)) * 512 / 1024 = 0.65, and the
    decoupled weight decay that removes, per step, what airbench's coupled decay removes
    through the momentum (0.0153 * 512 / 7850 / (1 - 0.85) / 0.65 = 0.01). Two warm-up
    epochs, cosine to 0, crop + flip, 10 epochs, the step compiled with XLA: about an hour on
    2 CPU cores. ``tools/train_teacher.py`` then wraps the trained net in
    :func:`kd.models.flip_tta`.
    """
    return TeacherConfig(
        preset="fast",
        epochs=10,
        batch_size=512,
        learning_rate=0.65,
        momentum=0.85,
        weight_decay=0.01,
        warmup_epochs=2,
        label_smoothing=0.2,
        seed=0,
        jit_compile=True,
    )


@dataclass(frozen=True)
class StudentConfig(TrainConfig):
    """Training the student from scratch (the baseline).

    The seed student has no BatchNorm: at peak lr 0.1 with T=5 distillation it diverged on an
    H100 (loss stuck at 20.3, 10 % accuracy), while lr 0.05 with global clipnorm 2 reached
    80.3 %. Scratch and distilled students share these optimiser defaults so that the
    comparison is fair.
    """

    learning_rate: float = 0.05
    clipnorm: float = 2.0


@dataclass(frozen=True)
class ScratchConfig:
    """Where the scratch student (the baseline) trains otherwise than the distilled student.

    Every other ``student_*`` setting is shared, so the two students differ only in the
    teacher. The learning rate is the exception a fair baseline needs: soft targets steady
    training, so the distilled student tolerates a higher peak rate than the same student on
    hard labels alone, and a shared rate tuned for one under-trains the other. On the demo's
    2,000 images the scratch student scored 53.8 % of held-out images at 0.035 and 51.6 % at
    0.05, where the distilled student peaks (docs/RESULTS.md section 14).

    Args:
        scratch_learning_rate: the scratch student's peak learning rate per step; 0 (default)
            uses ``student_learning_rate``, the distilled student's.
    """

    scratch_learning_rate: float = 0.0

    def __post_init__(self) -> None:
        _check_float("scratch_learning_rate", self.scratch_learning_rate, 0.0, 10.0)

    def apply(self, student: StudentConfig) -> StudentConfig:
        """``student`` (the shared settings) with the scratch student's own learning rate."""
        if self.scratch_learning_rate > 0:
            return dataclasses.replace(student, learning_rate=self.scratch_learning_rate)
        return student


@dataclass(frozen=True)
class DistillConfig(StudentConfig):
    """Distilling the student from the teacher (on logits; :mod:`kd.distill` has the formulas).

    Loss per batch (batch mean)::

        L = alpha * CE(y, softmax(s)) + (1 - alpha) * D(t, s)

    where ``s`` and ``t`` are the student's and the teacher's logits and ``D`` the
    distillation loss ``kd_loss``; for ``hinton`` (Hinton et al., 2015, the default)
    ``D = T**2 * KL(softmax(t / T) || softmax(s / T))``. ``alpha`` weights the hard-label loss;
    ``1 - alpha`` weights the soft (teacher) loss. The T**2 factor keeps the soft-loss
    gradients on the scale of the hard loss (they shrink as 1/T**2); that holds for Hinton's
    loss and DKD, not for DIST, which T**2 only scales up once T is large (kd.distill.DIST).
    The DKD and DIST papers add their loss to the full cross-entropy (CE + D); ``alpha`` = 0.5
    gives that 1:1 ratio (halved), the default 0.1 weights D 9x the cross-entropy.

    Args:
        temperature: T > 0, softens both distributions (notebook default 5).
        alpha: weight of the hard-label cross-entropy, in [0, 1] (notebook default 0.1).
        kd_loss: ``D``: ``hinton`` (KL of the softened distributions), ``dkd`` (decoupled KD,
            Zhao et al., 2022: ``T**2 * (dkd_alpha * TCKD + dkd_beta * NCKD)``) or ``dist``
            (Huang et al., 2022: ``T**2 * (dist_beta * inter + dist_gamma * intra)``, one
            minus the Pearson correlations of the softened distributions).
        logit_standardization: z-score each logit vector over its classes, ``(z - mean) /
            std``, before the temperature, for the teacher and the student (Sun et al., 2024);
            composes with ``hinton`` and ``dkd``.
        dkd_alpha: DKD's weight of TCKD, the KL of the binary (target class, all others)
            distributions; >= 0 (paper's default 1).
        dkd_beta: DKD's weight of NCKD, the KL among the non-target classes; >= 0 (paper's
            CIFAR default 8).
        dist_beta: DIST's weight of the inter-class relation (per image, across classes); >= 0.
        dist_gamma: DIST's weight of the intra-class relation (per class, across the batch);
            >= 0.
        feature_weight: ``w`` of a feature term added to ``D``: ``D + w * MSE(f_t,
            P(f_s))``, the mean squared difference between the teacher's activations at
            ``teacher_feature_layer`` and the student's at ``student_feature_layer`` mapped by
            ``P``, a trainable projection (1x1 convolution, or dense for vectors) to the
            teacher's width when the widths differ, else the identity (FitNets, Romero et
            al., 2015; ``keras.distillation.FeatureDistillation``). 0 (default): no feature
            term. Needs the online teacher (``teacher_views=0``): the cache holds logits.
        teacher_feature_layer: the teacher's layer (its name in the teacher model) whose
            output is ``f_t``; needed with ``feature_weight > 0``.
        student_feature_layer: the student's layer whose output is ``f_s``; its spatial
            shape must equal the teacher layer's (e.g. the seed preset: ``pool2`` (8, 8, 64)
            against the seed teacher's ``b2_pool`` (8, 8, 128)).
        teacher_views: 0 (default) runs the teacher online, on every training batch. K >= 1
            caches the teacher instead: before training, its logits for K augmented views
            (crop + flip) of every training image are computed once (K teacher passes over
            the training split instead of one per epoch), and each step trains the student
            on one of its image's K views, drawn at random, against that view's cached
            logits. Fewer distinct views than an online teacher sees (``epochs``), so it
            trades augmentation for teacher time; K <= ``MAX_TEACHER_VIEWS``, and K > 1 needs
            ``augment`` (without it every view is the same image).
        teacher_mixup_views: M >= 0 mixed views per image that the cache adds to its K
            plain ones ("function matching", Beyer et al. 2022: the teacher labels inputs
            no labelled image shows, so the student matches the teacher's function between
            the images as well). Mixed view ``m`` of image ``i`` is ``v = (w * x_i + (256 -
            w) * x_j + 128) // 256`` per uint8 pixel (mixup, Zhang et al. 2018, in integer
            arithmetic so host and device blend bit for bit), ``j`` another training image
            and ``w`` uniform in 0..256 (the blend weight, in 256ths: lambda = w / 256 ~
            U(0, 1)), both drawn once per view; then crop and flip as for a plain view, and
            the teacher's logits for the result are cached. Each step draws one of the
            image's ``K + M`` views at random, so a share ``M / (K + M)`` of the steps' images
            are blends. The hard-label term (``alpha``) of a blend uses the label of the
            image with the larger weight (``x_i`` when ``w >= 128``), as does DKD's target
            class (``kd_loss=dkd``). Cost: M more teacher passes. 0 (default): plain views
            only. Needs the cache (``teacher_views >= 1``); ``K + M <= MAX_TEACHER_VIEWS``.
    """

    temperature: float = 5.0
    alpha: float = 0.1
    teacher_views: int = 0
    teacher_mixup_views: int = 0
    kd_loss: str = "hinton"
    logit_standardization: bool = False
    dkd_alpha: float = 1.0
    dkd_beta: float = 8.0
    dist_beta: float = 1.0
    dist_gamma: float = 1.0
    feature_weight: float = 0.0
    teacher_feature_layer: str = ""
    student_feature_layer: str = ""

    def loss_label(self) -> str:
        """The loss's short name (:func:`loss_label`), e.g. ``hinton`` or ``dkd(1, 8)+LS``."""
        return loss_label(dataclasses.asdict(self))

    def __post_init__(self) -> None:
        super().__post_init__()
        _check_float("temperature", self.temperature, 0.0, 1000.0, lo_open=True)
        _check_float("alpha", self.alpha, 0.0, 1.0)
        _check_choice("kd_loss", self.kd_loss, KD_LOSSES)
        if not isinstance(self.logit_standardization, bool):
            _fail("logit_standardization", self.logit_standardization, "must be true or false")
        for name in ("dkd_alpha", "dkd_beta", "dist_beta", "dist_gamma"):
            _check_float(name, getattr(self, name), 0.0, 1000.0)
        if self.kd_loss == "dkd" and self.dkd_alpha == 0 and self.dkd_beta == 0:
            _fail(
                "dkd_beta",
                0.0,
                "must not be 0 with dkd_alpha=0 too: both 0 leave DKD no loss; set one > 0 "
                "(the paper: dkd_alpha=1, dkd_beta=8)",
            )
        if self.kd_loss == "dist" and self.dist_beta == 0 and self.dist_gamma == 0:
            _fail(
                "dist_gamma",
                0.0,
                "must not be 0 with dist_beta=0 too: both 0 leave DIST no loss; set one > 0 "
                "(the paper's ImageNet setting: 1 and 1)",
            )
        if self.logit_standardization and self.kd_loss == "dist":
            _fail(
                "logit_standardization",
                True,
                "must be false with kd_loss=dist: it composes with hinton or dkd, not dist "
                "(DIST's Pearson correlations already ignore each distribution's shift and "
                "scale)",
            )
        _check_float("feature_weight", self.feature_weight, 0.0, 1000.0)
        for name in ("teacher_feature_layer", "student_feature_layer"):
            if not isinstance(getattr(self, name), str):
                _fail(name, getattr(self, name), "must be a layer name (a string)")
            if self.feature_weight > 0 and not getattr(self, name).strip():
                _fail(
                    name,
                    getattr(self, name),
                    f"must name a layer with feature_weight={self.feature_weight} (e.g. "
                    "teacher_feature_layer=b2_pool student_feature_layer=pool2 for the seed "
                    "preset), or set feature_weight=0",
                )
        _check_int("teacher_views", self.teacher_views, 0)
        if self.teacher_views > MAX_TEACHER_VIEWS:
            _fail(
                "teacher_views",
                self.teacher_views,
                f"must be <= {MAX_TEACHER_VIEWS} (the cache holds N x K logits in memory); "
                "0 runs the teacher online",
            )
        if self.teacher_views > 1 and not self.augment:
            _fail(
                "teacher_views",
                self.teacher_views,
                "must be 0 or 1 with augment=False (without augmentation every view is the "
                "same image); set augment=True to cache several views",
            )
        if self.feature_weight > 0 and self.teacher_views > 0:
            _fail(
                "teacher_views",
                self.teacher_views,
                "must be 0 with feature_weight > 0: the cache holds the teacher's logits, "
                "not its features; run the teacher online (teacher_views=0)",
            )
        _check_int("teacher_mixup_views", self.teacher_mixup_views, 0)
        if self.teacher_mixup_views > 0 and self.teacher_views == 0:
            _fail(
                "teacher_mixup_views",
                self.teacher_mixup_views,
                "must be 0 with teacher_views=0: the mixed views are cached with the plain "
                "ones; set teacher_views >= 1 (e.g. 2), or teacher_mixup_views=0",
            )
        if self.teacher_views + self.teacher_mixup_views > MAX_TEACHER_VIEWS:
            _fail(
                "teacher_mixup_views",
                self.teacher_mixup_views,
                f"must be <= {MAX_TEACHER_VIEWS} - teacher_views "
                f"({MAX_TEACHER_VIEWS - self.teacher_views}): the cache holds N x (K + M) "
                "logits in memory; use fewer mixed or plain views",
            )


@dataclass(frozen=True)
class EvalConfig:
    """The evaluate stage.

    Args:
        batch_size: images per prediction batch (memory stays bounded by it).
        latency_runs: timed single-image predictions for the p50/p95 latency (ms).
        throughput_batch: batch size of the throughput measurement (images/s).
        ece_bins: equal-width confidence bins of the expected calibration error.
        collapse_threshold: a model is flagged as collapsed when more than this fraction of
            its predictions fall on its 3 most-predicted classes (a healthy 10-class model is
            near 0.3); see :func:`kd.evaluate.collapse_check`.
    """

    batch_size: int = 256
    latency_runs: int = 50
    throughput_batch: int = 256
    ece_bins: int = 15
    collapse_threshold: float = 0.6

    def __post_init__(self) -> None:
        _check_int("batch_size", self.batch_size, 1)
        _check_int("latency_runs", self.latency_runs, 1)
        _check_int("throughput_batch", self.throughput_batch, 1)
        _check_int("ece_bins", self.ece_bins, 1)
        _check_float("collapse_threshold", self.collapse_threshold, 0.0, 1.0, lo_open=True)


@dataclass(frozen=True)
class GateConfig:
    """The quality gate before the serving export. It decides on the **validation** split
    (held out from training, never the test set), and refuses a run where any model is
    flagged collapsed (:func:`kd.evaluate.collapse_check` on its validation predictions).

    Args:
        min_kd_gain: the distilled student's validation accuracy must beat the scratch
            student's by at least this many percentage points (default 1.0: distillation must
            pay for its teacher; 0 accepts a tie, a negative value a loss).
        min_accuracy: the distilled student's validation accuracy must reach this fraction
            (0-1; default 0.3, three times chance on 10 classes).
        refuse_collapsed: refuse a run where any model is flagged collapsed (default true;
            false only for smoke tests of the export, whose tiny models collapse).
    """

    min_kd_gain: float = 1.0
    min_accuracy: float = 0.3
    refuse_collapsed: bool = True

    def __post_init__(self) -> None:
        _check_float("min_kd_gain", self.min_kd_gain, -100.0, 100.0)
        _check_float("min_accuracy", self.min_accuracy, 0.0, 1.0)
        if not isinstance(self.refuse_collapsed, bool):
            _fail("refuse_collapsed", self.refuse_collapsed, "must be true or false")


@dataclass(frozen=True)
class ExportConfig:
    """The export of the blessed student.

    Args:
        check_images: test images on which the SavedModel's logits must match the Keras
            model's (0 = no check).
        calibration_images: training images that calibrate the int8 TFLite model's
            activation ranges (>= 1).
    """

    check_images: int = 256
    calibration_images: int = 200

    def __post_init__(self) -> None:
        _check_int("export_check_images", self.check_images, 0)
        _check_int("calibration_images", self.calibration_images, 1)


#: A Vertex AI resource name of a model / an endpoint (no version suffix).
_MODEL_NAME = re.compile(r"^projects/[^/\s]+/locations/([^/\s]+)/models/[^/@\s]+$")
_ENDPOINT_NAME = re.compile(r"^projects/[^/\s]+/locations/([^/\s]+)/endpoints/[^/\s]+$")
#: Vertex AI's rule for a version alias: lower case, digits and dashes, starting with a letter.
_ALIAS = re.compile(r"^[a-z][a-z0-9-]{0,126}[a-z0-9]$")


@dataclass(frozen=True)
class RegistryConfig:
    """Registering the blessed student in the Vertex AI Model Registry after a passed gate,
    and optionally deploying it to an endpoint (:mod:`kd.registry`).

    Args:
        upload: register the blessed SavedModel (off by default; the other fields are then
            unused).
        serving_image: the serving container image URI (required with ``upload``); its
            TensorFlow must load a SavedModel of this project's TensorFlow (README: "Serve").
        project: the Google Cloud project of the registry (``pipeline.py submit --target
            vertex`` fills in its ``--project`` when empty).
        location: the registry's region (``submit`` fills in its ``--region`` when empty).
        display_name: the model's display name.
        parent_model: ``projects/P/locations/L/models/ID``: upload as a new version of that
            model ("" = a new model).
        version_aliases: comma-separated aliases of the new version (Vertex moves an alias
            to the newest version that claims it).
        api_endpoint: the Vertex AI API endpoint ("" = ``https://LOCATION-aiplatform.
            googleapis.com``; e.g. a Private Service Connect endpoint). Over plain
            ``http://`` no credential is sent.
        deploy_endpoint: ``projects/P/locations/L/endpoints/ID``: deploy the new version
            there with all the traffic ("" = no deployment).
        machine_type: the deployment's machine type.
        accelerator_type: e.g. ``NVIDIA_TESLA_T4`` ("" = none).
        accelerator_count: accelerators per replica (0 without an accelerator type).
        min_replicas: the deployment's minimum replica count (>= 1).
        max_replicas: its maximum (>= ``min_replicas``).
    """

    upload: bool = False
    serving_image: str = ""
    project: str = ""
    location: str = ""
    display_name: str = "kd-student"
    parent_model: str = ""
    version_aliases: str = "blessed"
    api_endpoint: str = ""
    deploy_endpoint: str = ""
    machine_type: str = "n1-standard-4"
    accelerator_type: str = ""
    accelerator_count: int = 0
    min_replicas: int = 1
    max_replicas: int = 1

    def __post_init__(self) -> None:
        for name in (
            "serving_image", "project", "location", "display_name", "parent_model",
            "version_aliases", "api_endpoint", "deploy_endpoint", "machine_type",
            "accelerator_type",
        ):  # fmt: skip
            if not isinstance(getattr(self, name), str):
                _fail(f"registry_{name}", getattr(self, name), "must be a string")
        if not isinstance(self.upload, bool):
            _fail("registry_upload", self.upload, "must be true or false")
        _check_int("registry_accelerator_count", self.accelerator_count, 0)
        _check_int("registry_min_replicas", self.min_replicas, 1)
        _check_int("registry_max_replicas", self.max_replicas, 1)
        if self.max_replicas < self.min_replicas:
            _fail(
                "registry_max_replicas",
                self.max_replicas,
                f"must be >= registry_min_replicas ({self.min_replicas})",
            )
        if self.accelerator_type:
            from google.cloud.aiplatform_v1.types import AcceleratorType

            known = [a.name for a in AcceleratorType if a.value]  # type: ignore[attr-defined]
            if self.accelerator_type not in known:
                _fail(
                    "registry_accelerator_type",
                    self.accelerator_type,
                    f"choose one of {', '.join(known[:6])}, ... (Vertex AI's AcceleratorType)",
                )
        if bool(self.accelerator_type) != (self.accelerator_count > 0):
            _fail(
                "registry_accelerator_count",
                self.accelerator_count,
                "must be > 0 exactly when registry_accelerator_type is set (e.g. "
                "registry_accelerator_type=NVIDIA_TESLA_T4 registry_accelerator_count=1)",
            )
        if self.deploy_endpoint and not self.upload:
            _fail(
                "registry_deploy_endpoint",
                self.deploy_endpoint,
                "must be empty unless registry_upload=true: only a registered model can be "
                "deployed",
            )
        if not self.upload:
            return
        if not self.serving_image.strip():
            _fail(
                "registry_serving_image",
                self.serving_image,
                "must name a serving container image with registry_upload=true, e.g. "
                "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest (README: Serve)",
            )
        for name in ("project", "location", "display_name"):
            if not getattr(self, name).strip():
                _fail(
                    f"registry_{name}",
                    getattr(self, name),
                    f"must be set with registry_upload=true (pass --param registry_{name}=...; "
                    "pipeline.py submit --target vertex fills in project and location)",
                )
        for name, value, pattern, what in (
            ("registry_parent_model", self.parent_model, _MODEL_NAME, "models"),
            ("registry_deploy_endpoint", self.deploy_endpoint, _ENDPOINT_NAME, "endpoints"),
        ):
            if not value:
                continue
            m = pattern.match(value)
            if m is None:
                _fail(
                    name,
                    value,
                    f"must be a{'n' if what[0] == 'e' else ''} {what[:-1]} resource name "
                    f"projects/PROJECT/locations/REGION/{what}/ID",
                )
            if m.group(1) != self.location:
                _fail(
                    name,
                    value,
                    f"must be in registry_location {self.location!r}, not {m.group(1)!r}",
                )
        for alias in self.aliases():
            if not _ALIAS.match(alias):
                _fail(
                    "registry_version_aliases",
                    self.version_aliases,
                    "must be lower-case letters, digits and dashes, starting with a letter "
                    f"(alias {alias!r}; e.g. blessed,candidate)",
                )

    def aliases(self) -> list[str]:
        """The version aliases, split on commas."""
        return [a.strip() for a in self.version_aliases.split(",") if a.strip()]


def _default_grid() -> list[dict[str, Any]]:
    # Every point carries the loss too (DistillConfig's), as the sweep pipeline reads every key.
    loss = loss_defaults()
    return [
        {"temperature": t, "alpha": a, **loss} for t in (2.0, 4.0, 8.0) for a in (0.1, 0.5, 0.9)
    ]


def loss_defaults() -> dict[str, Any]:
    """DistillConfig's defaults of the loss's fields (``LOSS_KEYS``)."""
    return {k: v for k, v in defaults(DistillConfig).items() if k in LOSS_KEYS}


def loss_label(config: dict[str, Any]) -> str:
    """A short name of a distillation loss and its weights, e.g. ``dkd(1, 8)+LS`` (reports and
    the sweep's table), from a DistillConfig as a dict (what it leaves out: the defaults)."""
    c = {**defaults(DistillConfig), **config}
    name = {
        "dkd": f"dkd({c['dkd_alpha']:g}, {c['dkd_beta']:g})",
        "dist": f"dist({c['dist_beta']:g}, {c['dist_gamma']:g})",
    }.get(c["kd_loss"], c["kd_loss"])
    name += "+LS" if c["logit_standardization"] else ""
    return name + (f"+feat({c['feature_weight']:g})" if c["feature_weight"] else "")


@dataclass(frozen=True)
class SweepConfig:
    """The temperature x alpha sweep (the ``sweep`` pipeline): one distillation per grid point.

    Args:
        grid: the grid points, a non-empty list of ``{"temperature": T, "alpha": a}``, each
            checked as :class:`DistillConfig` checks ``temperature`` and ``alpha`` (default:
            T in {2, 4, 8} x alpha in {0.1, 0.5, 0.9}, 9 points). A point may also set the
            loss (``kd_loss``, ``logit_standardization`` and the loss's weights, the keys of
            ``GRID_KEYS``); what it leaves out is DistillConfig's default
            (``parameters.full_grid`` fills it in before a run is started or submitted).
    """

    grid: list[dict[str, Any]] = field(default_factory=_default_grid)

    def __post_init__(self) -> None:
        example = '[{"temperature": 4, "alpha": 0.1}]'
        if not isinstance(self.grid, list) or not self.grid:
            _fail("grid", self.grid, f"must be a non-empty list such as {example}")
        for point in self.grid:
            if (
                not isinstance(point, dict)
                or not {"temperature", "alpha"} <= set(point)
                or not set(point) <= set(GRID_KEYS)
            ):
                _fail(
                    "grid point",
                    point,
                    f"must have the keys temperature and alpha, and no others but "
                    f"{', '.join(LOSS_KEYS)}, e.g. {example}",
                )
            try:
                _check_float("temperature", point["temperature"], 0.0, 1000.0, lo_open=True)
                _check_float("alpha", point["alpha"], 0.0, 1.0)
            except ConfigError as exc:
                raise ConfigError(f"grid point {point!r}: {exc}") from None


@dataclass(frozen=True)
class ResourceConfig:
    """Compute of the pipeline's steps on a cluster (Kubernetes quantities: CPU cores, memory
    bytes). ``pipeline.py`` compiles them into the pipeline; the local runner takes ``retries``.

    Args:
        target: where the pipeline runs, ``kfp`` (a Kubeflow Pipelines server: GPUs are
            requested as ``nvidia.com/gpu``) or ``vertex`` (Vertex AI Pipelines: GPUs are
            requested by Vertex accelerator type).
        accelerator: GPU type of the training steps on Vertex AI, an alias (``L4``) or a
            Vertex name (``NVIDIA_L4``); ``None`` is ``DEFAULT_VERTEX_ACCELERATOR`` when
            ``gpus`` > 0. Ignored on KFP.
        gpus: GPUs per training step (0 = CPU only).
        train_cpu: CPU cores per training step (request and limit).
        train_memory: memory per training step (request and limit).
        light_cpu: CPU cores per light step (split, teacher check, evaluation, export).
        light_memory: memory per light step.
        retries: retries of a failed training step; each resumes from the last checkpointed
            epoch.
        backoff: wait before the first retry (it doubles each retry).
        replicas: machines each training step trains on, together (Vertex AI only: R > 1
            runs the step as a custom job of R replicas, ``kd.custom_job``, each with
            ``gpus`` GPUs; ``batch_size`` is then the global batch over all R x ``gpus``).
        machine_type: each replica's machine type when ``replicas`` > 1; empty: the one
            ``pipeline.py`` pairs with the accelerator and ``gpus``.
    """

    target: str = "kfp"
    accelerator: str | None = None
    gpus: int = 0
    train_cpu: str = "8"
    train_memory: str = "32G"
    light_cpu: str = "2"
    light_memory: str = "8G"
    retries: int = 2
    backoff: str = "30s"
    replicas: int = 1
    machine_type: str = ""

    def __post_init__(self) -> None:
        _check_choice("target", self.target, TARGETS)
        _check_int("gpus", self.gpus, 0)
        _check_int("replicas", self.replicas, 1)
        if self.machine_type and self.replicas == 1:
            _fail(
                "machine_type",
                self.machine_type,
                "is the machine of each replica of a multi-replica step. Fix: pass --replicas "
                "R with R > 1, or leave --machine-type out (one replica runs on the cluster's "
                "node with --gpus GPUs)",
            )
        if self.replicas > 1 and self.target != "vertex":
            _fail(
                "replicas",
                self.replicas,
                "runs a training step on several machines as a Vertex AI custom job, so it "
                "needs --target vertex. Fix: use --target vertex, or on a KFP cluster one "
                "replica with --gpus N",
            )
        _check_int("retries", self.retries, 0)
        for name in ("train_cpu", "train_memory", "light_cpu", "light_memory", "backoff"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                _fail(name, value, "must be a Kubernetes quantity such as '8', '32G' or '30s'")


@dataclass(frozen=True)
class PipelineConfig:
    """Everything one run of the pipeline takes (what ``pipeline.py`` exposes as parameters)."""

    split: SplitConfig = field(default_factory=SplitConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    distill: DistillConfig = field(default_factory=DistillConfig)
    evaluate: EvalConfig = field(default_factory=EvalConfig)
    gate: GateConfig = field(default_factory=GateConfig)


def to_dict(config: Any) -> dict[str, Any]:
    """A JSON-ready dict of a config dataclass."""
    return dataclasses.asdict(config)


def from_dict(cls: type[T], values: dict[str, Any]) -> T:
    """Build ``cls`` from a dict, refusing unknown keys with a clear message."""
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(
            f"unknown {cls.__name__} field(s) {unknown}: valid fields are {sorted(names)}"
        )
    return cls(**values)


def defaults(cls: type[Any]) -> dict[str, Any]:
    """The default value of every field of a config class (pipeline parameter defaults); a
    field with a ``default_factory`` gets a fresh value."""
    return {
        f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        for f in dataclasses.fields(cls)
    }


def field_docs(cls: type[Any]) -> dict[str, str]:
    """The documentation of every documented field of a config class: the entries of the
    Google-style ``Args:`` sections of its docstring and its bases' (the class's own entry
    wins), each on one line (continuation lines joined by single spaces)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        docs.update(_args_section(klass.__dict__.get("__doc__")))
    return {name: doc for name, doc in docs.items() if name in cls.__dataclass_fields__}


def _args_section(doc: str | None) -> dict[str, str]:
    lines = inspect.cleandoc(doc or "").splitlines()
    if "Args:" not in lines:
        return {}
    entries: dict[str, list[str]] = {}
    current: list[str] = []
    for line in lines[lines.index("Args:") + 1 :]:
        if line and not line.startswith(" "):  # the next section, e.g. "Raises:"
            break
        entry = re.match(r"^    (\w+): (.*)$", line)
        if entry:
            current = entries.setdefault(entry.group(1), [])
            current.append(entry.group(2))
        elif line.strip():
            current.append(line.strip())
    return {name: " ".join(words) for name, words in entries.items()}
