"""Metrics, comparisons and run aggregation for the teacher and the two students.

Everything except :func:`predict_logits`, :func:`model_footprint`, :func:`measure_speed` and
:func:`evaluate_model` is a pure numpy/scikit-learn function of predictions, so it is tested on
hand-made predictions with known answers. Keras is imported lazily, only by the functions that
touch a model, so ``import kd.evaluate`` stays light.

Conventions:

- Models take images of shape ``(N, 32, 32, 3)`` with values 0-255 (uint8 or float; the
  preprocessing is inside the model) and return 10 **logits** (not probabilities).
- Accuracies are fractions in [0, 1]; differences between accuracies are reported in
  **percentage points** (``*_points`` keys, 1 point = 0.01 accuracy).
- Model names are ``teacher``, ``student_distilled`` and ``student_scratch``.
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from kd.config import CLASS_NAMES, NUM_CLASSES, EvalConfig
from kd.errors import ArtifactError, DataError

TEACHER = "teacher"
DISTILLED = "student_distilled"
SCRATCH = "student_scratch"
MODEL_NAMES = (TEACHER, DISTILLED, SCRATCH)
STUDENTS = (DISTILLED, SCRATCH)

#: A class predicted less often than this fraction of its uniform share ``N / K`` counts as
#: (almost) never predicted by :func:`collapse_check`.
RARE_CLASS_FRACTION = 0.02
#: :func:`collapse_check` only applies the rare-class rule when a uniform predictor would
#: predict every class at least this many times (smaller sets are too noisy to judge).
MIN_EXPECTED_PER_CLASS = 50


# --------------------------------------------------------------------------------------------
# Predictions
# --------------------------------------------------------------------------------------------


def predict_logits(model: Any, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Predict logits in streamed batches, with memory bounded by ``batch_size``.

    Only one batch at a time is converted to float32 (``x`` may be a large uint8 array or a
    memory map); the model does its own preprocessing.

    Args:
        model: a Keras 3 model mapping ``(B, 32, 32, 3)`` images (0-255) to ``(B, K)`` logits.
        x: images, shape ``(N, H, W, C)``, any numeric dtype (uint8 typical).
        batch_size: images per forward pass (>= 1).

    Returns:
        float32 array of shape ``(N, K)``: the logits.

    Raises:
        DataError: ``x`` is empty, not 4-D, or ``batch_size`` < 1.
        ArtifactError: the model's output is not a 2-D ``(B, K)`` array.
    """
    if batch_size < 1:
        raise DataError(f"invalid batch_size={batch_size!r}: must be an integer >= 1")
    if getattr(x, "ndim", None) != 4:
        raise DataError(
            f"images must have shape (N, H, W, C), got {getattr(x, 'shape', type(x))}: "
            "pass a batch of images, e.g. x_test from kd.data"
        )
    n = int(x.shape[0])
    if n == 0:
        raise DataError("no images to predict: the evaluation set is empty")
    out: np.ndarray | None = None
    for start in range(0, n, batch_size):
        batch = np.asarray(x[start : start + batch_size], dtype=np.float32)
        logits = np.asarray(model.predict_on_batch(batch)).astype(np.float32, copy=False)
        if logits.ndim != 2 or logits.shape[0] != batch.shape[0]:
            raise ArtifactError(
                f"model returned shape {logits.shape} for a batch of {batch.shape[0]} images: "
                "expected (batch, num_classes) logits; check that the model ends in a Dense "
                "layer without softmax"
            )
        if out is None:
            out = np.empty((n, logits.shape[1]), dtype=np.float32)
        out[start : start + batch.shape[0]] = logits
    assert out is not None
    return out


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Numerically stable log-softmax along the last axis, in float64.

    ``log_softmax(z)_k = z_k - m - log(sum_j exp(z_j - m))`` with ``m = max_j z_j``, so no
    ``exp`` overflows for large logits.

    Args:
        logits: array ``(..., K)``.

    Returns:
        float64 array of the same shape: log-probabilities (natural log).
    """
    z = np.asarray(logits, dtype=np.float64)
    z = z - np.max(z, axis=-1, keepdims=True)
    return z - np.log(np.sum(np.exp(z), axis=-1, keepdims=True))


def softmax(logits: np.ndarray) -> np.ndarray:
    """Softmax along the last axis (float64): ``exp(log_softmax(z))``."""
    return np.exp(log_softmax(logits))


def _labels(y: Any, n: int | None = None, num_classes: int | None = None) -> np.ndarray:
    """Integer labels ``(N,)`` from ``(N,)``, ``(N, 1)`` or one-hot ``(N, K)`` input."""
    arr = np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    elif arr.ndim == 2 and num_classes is not None and arr.shape[1] == num_classes > 1:
        arr = np.argmax(arr, axis=1)
    if arr.ndim != 1:
        raise DataError(f"labels must have shape (N,) or (N, 1), got {arr.shape}")
    if arr.size and not np.all(np.equal(np.mod(arr, 1), 0)):
        raise DataError("labels must be integer class indices 0..K-1")
    arr = arr.astype(np.int64)
    if n is not None and arr.shape[0] != n:
        raise DataError(
            f"{arr.shape[0]} labels for {n} predictions: pass the labels of the same images"
        )
    if num_classes is not None and arr.size and (arr.min() < 0 or arr.max() >= num_classes):
        raise DataError(
            f"labels must be in 0..{num_classes - 1}, got min {arr.min()} and max {arr.max()}"
        )
    return arr


def _class_names(num_classes: int, class_names: Sequence[str] | None = None) -> list[str]:
    if class_names is not None and len(class_names) == num_classes:
        return [str(c) for c in class_names]
    if num_classes == NUM_CLASSES:
        return list(CLASS_NAMES)
    return [str(i) for i in range(num_classes)]


# --------------------------------------------------------------------------------------------
# Classification metrics
# --------------------------------------------------------------------------------------------


def expected_calibration_error(
    confidences: np.ndarray, correct: np.ndarray, n_bins: int = 15
) -> tuple[float, list[dict[str, Any]]]:
    """Expected calibration error (Guo et al., 2017) with equal-width confidence bins.

    Bin ``b`` (0-based) holds the samples with confidence in ``(b/B, (b+1)/B]`` (a confidence
    of exactly 0 falls into bin 0). Then::

        ECE = sum_b |B_b| / N * |acc(B_b) - conf(B_b)|

    where ``acc(B_b)`` is the fraction of correct predictions in the bin and ``conf(B_b)`` the
    mean confidence (max softmax probability) in the bin. Empty bins contribute 0.

    Args:
        confidences: max softmax probability per sample, shape ``(N,)``, in [0, 1].
        correct: whether each prediction is right, shape ``(N,)`` (bool or 0/1).
        n_bins: number of bins ``B`` >= 1.

    Returns:
        ``(ece, reliability)``: ECE as a fraction in [0, 1], and per bin a dict with
        ``lower``, ``upper`` (bin edges), ``confidence`` and ``accuracy`` (``None`` for an
        empty bin) and ``count``.
    """
    conf = np.asarray(confidences, dtype=np.float64).reshape(-1)
    hit = np.asarray(correct, dtype=np.float64).reshape(-1)
    if conf.shape != hit.shape:
        raise DataError(f"{conf.shape[0]} confidences for {hit.shape[0]} correctness flags")
    if n_bins < 1:
        raise DataError(f"invalid n_bins={n_bins!r}: must be an integer >= 1")
    n = conf.shape[0]
    idx = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    ece = 0.0
    reliability: list[dict[str, Any]] = []
    for b in range(n_bins):
        mask = idx == b
        count = int(mask.sum())
        entry: dict[str, Any] = {
            "lower": b / n_bins,
            "upper": (b + 1) / n_bins,
            "confidence": None,
            "accuracy": None,
            "count": count,
        }
        if count:
            bin_conf = float(conf[mask].mean())
            bin_acc = float(hit[mask].mean())
            entry["confidence"] = bin_conf
            entry["accuracy"] = bin_acc
            ece += count / n * abs(bin_acc - bin_conf)
        reliability.append(entry)
    return float(ece), reliability


def collapse_check(
    pred_classes: Sequence[int] | np.ndarray,
    num_classes: int = NUM_CLASSES,
    threshold: float = 0.6,
    *,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Flag a model whose predictions concentrate on a few classes (mode collapse).

    Rule (either condition flags the model):

    1. **Concentration**: the 3 most-predicted classes receive more than ``threshold`` of all
       predictions (``top3_share > threshold``). A uniform predictor over 10 classes has
       ``top3_share = 0.3``; a healthy CIFAR-10 model at 70 % accuracy stays near 0.3-0.4.
    2. **Missing classes**: some class is predicted fewer than ``RARE_CLASS_FRACTION`` (2 %)
       times as often as a uniform predictor would (``count < 0.02 * N / K``). This rule is
       only applied when ``N / K >= MIN_EXPECTED_PER_CLASS`` (50): on smaller sets a class can
       go unpredicted by chance.

    The notebook's collapsed student (never predicts *airplane*, most mass on 3 classes) fires
    both rules; a healthy model with roughly uniform predictions fires neither.

    Args:
        pred_classes: predicted class index per sample, shape ``(N,)``.
        num_classes: number of classes ``K``.
        threshold: maximum healthy ``top3_share``, in (0, 1].
        class_names: names for the ``never_predicted`` list (default: CIFAR-10 names when
            ``K == 10``, else the indices as strings).

    Returns:
        ``{"collapsed": bool, "reason": str, "top3_share": float, "never_predicted": [names],
        "rare_classes": [names], "threshold": float}``; ``reason`` is ``""`` when not
        collapsed. ``never_predicted`` lists classes with zero predictions; ``rare_classes``
        those under the 2 % rule (only filled when the rule applies).
    """
    preds = np.asarray(pred_classes, dtype=np.int64).reshape(-1)
    names = _class_names(num_classes, class_names)
    n = int(preds.shape[0])
    counts = np.bincount(preds[(preds >= 0) & (preds < num_classes)], minlength=num_classes)
    if n == 0:
        return {
            "collapsed": False,
            "reason": "no predictions to check",
            "top3_share": 0.0,
            "never_predicted": [],
            "rare_classes": [],
            "threshold": float(threshold),
        }
    top3 = np.sort(counts)[::-1][:3]
    top3_share = float(top3.sum() / n)
    top3_idx = [int(i) for i in np.argsort(-counts, kind="stable")[:3]]
    never = [names[i] for i in range(num_classes) if counts[i] == 0]
    expected = n / num_classes
    rare: list[str] = []
    if expected >= MIN_EXPECTED_PER_CLASS:
        rare = [names[i] for i in range(num_classes) if counts[i] < RARE_CLASS_FRACTION * expected]
    reasons = []
    if top3_share > threshold:
        top = ", ".join(f"{names[i]} {counts[i] / n:.0%}" for i in top3_idx)
        reasons.append(
            f"{top3_share:.0%} of predictions fall on 3 classes ({top}); "
            f"limit {threshold:.0%}, uniform would be {3 / num_classes:.0%}"
        )
    if rare:
        kind = "never predicted" if set(rare) == set(never) else "(almost) never predicted"
        reasons.append(f"{kind}: {', '.join(rare)}")
    return {
        "collapsed": bool(reasons),
        "reason": "; ".join(reasons),
        "top3_share": top3_share,
        "never_predicted": never,
        "rare_classes": rare,
        "threshold": float(threshold),
    }


def classification_metrics(
    y_true: Any,
    logits: np.ndarray,
    class_names: Sequence[str] = CLASS_NAMES,
    ece_bins: int = 15,
    *,
    collapse_threshold: float = 0.6,
) -> dict[str, Any]:
    """Accuracy, loss, per-class scores, confusion matrix, calibration and collapse check.

    Args:
        y_true: integer labels, shape ``(N,)`` or ``(N, 1)``.
        logits: model outputs before softmax, shape ``(N, K)``.
        class_names: the ``K`` class names (rows/columns of the confusion matrix).
        ece_bins: equal-width bins of the expected calibration error.
        collapse_threshold: ``threshold`` of :func:`collapse_check`.

    Returns:
        A JSON-ready dict:

        - ``accuracy``: fraction correct, ``mean(argmax(z) == y)``, in [0, 1].
        - ``loss``: mean sparse cross-entropy in nats, ``-mean(log_softmax(z)[y])``.
        - ``per_class_accuracy``: per class ``k``, the fraction of images of class ``k``
          predicted correctly (recall of ``k``); ``None`` when ``k`` has no images.
        - ``precision`` / ``recall`` / ``f1``: per-class lists (scikit-learn, 0 where
          undefined); ``macro_precision`` / ``macro_recall`` / ``macro_f1``: their means.
        - ``confusion_matrix``: ``K x K`` counts, rows = true class, columns = predicted.
        - ``ece`` and ``reliability``: see :func:`expected_calibration_error`.
        - ``mean_confidence``: mean max softmax probability.
        - ``predicted_class_counts``: how often each class is predicted.
        - ``collapse``: :func:`collapse_check` of the predictions.
        - ``num_examples``, ``class_names``.
    """
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    z = np.asarray(logits)
    if z.ndim != 2 or z.shape[0] == 0:
        raise DataError(f"logits must have shape (N, K) with N >= 1, got {z.shape}")
    n, k = z.shape
    names = _class_names(k, class_names)
    if len(names) != k:
        raise DataError(f"{len(class_names)} class names for {k} logits per image")
    y = _labels(y_true, n, k)
    logp = log_softmax(z)
    if not np.all(np.isfinite(logp)):
        raise ArtifactError(
            "the model produced non-finite logits (NaN/inf): it diverged; retrain it with a "
            "lower learning rate or gradient clipping"
        )
    pred = np.argmax(logp, axis=1)
    correct = pred == y
    loss = float(-np.mean(logp[np.arange(n), y]))
    conf = np.exp(np.max(logp, axis=1))
    ece, reliability = expected_calibration_error(conf, correct, ece_bins)
    labels = list(range(k))
    cm = confusion_matrix(y, pred, labels=labels)
    support = cm.sum(axis=1)
    per_class = [float(cm[i, i] / support[i]) if support[i] else None for i in labels]
    precision, recall, f1, _ = precision_recall_fscore_support(
        y, pred, labels=labels, average=None, zero_division=0
    )
    return {
        "num_examples": int(n),
        "class_names": names,
        "accuracy": float(correct.mean()),
        "loss": loss,
        "per_class_accuracy": per_class,
        "precision": [float(v) for v in precision],
        "recall": [float(v) for v in recall],
        "f1": [float(v) for v in f1],
        "macro_precision": float(np.mean(precision)),
        "macro_recall": float(np.mean(recall)),
        "macro_f1": float(np.mean(f1)),
        "confusion_matrix": cm.astype(int).tolist(),
        "ece": ece,
        "reliability": reliability,
        "mean_confidence": float(conf.mean()),
        "predicted_class_counts": np.bincount(pred, minlength=k).astype(int).tolist(),
        "collapse": collapse_check(pred, k, collapse_threshold, class_names=names),
    }


# --------------------------------------------------------------------------------------------
# Size and speed
# --------------------------------------------------------------------------------------------


def _path_size(path: str | os.PathLike[str]) -> int | None:
    """Bytes of a file, or of every file under a folder; None when it does not exist."""
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return None


def model_footprint(model: Any, model_path: str | os.PathLike[str] | None = None) -> dict:
    """Parameter counts and on-disk size of a model.

    Args:
        model: a built Keras 3 model.
        model_path: the saved model (a ``.keras`` file or a SavedModel folder); ``gs://`` URIs
            and missing paths give ``size_bytes = None``.

    Returns:
        ``{"params": int, "trainable_params": int, "non_trainable_params": int,
        "size_bytes": int | None, "size_mb": float | None, "model_path": str | None}``;
        ``size_mb = size_bytes / 2**20`` (MiB).
    """
    total = int(model.count_params())
    trainable = int(sum(math.prod(w.shape) for w in model.trainable_weights))
    size = None
    if model_path is not None and not str(model_path).startswith("gs://"):
        size = _path_size(model_path)
    return {
        "params": total,
        "trainable_params": trainable,
        "non_trainable_params": total - trainable,
        "size_bytes": size,
        "size_mb": None if size is None else size / 2**20,
        "model_path": None if model_path is None else str(model_path),
    }


def machine_info() -> dict[str, Any]:
    """Where a speed measurement ran: host, CPU, Keras backend and GPU (if any).

    Returns:
        ``{"node", "processor", "cpu_model", "cpu_avx512", "platform", "cpu_count", "python",
        "keras_backend", "keras_version", "gpu"}``; ``cpu_model`` is ``/proc/cpuinfo``'s
        model name (``None`` where it cannot be read), ``cpu_avx512`` whether the CPU has
        AVX-512 (TensorFlow's kernels then differ, and so do the trained weights' digits);
        ``gpu`` is the first GPU's name or ``None``.
    """
    import keras

    backend = keras.backend.backend()
    cpu_model, avx512 = None, None
    try:
        text = Path("/proc/cpuinfo").read_text()
        names = [
            line.split(":", 1)[1].strip() for line in text.splitlines() if "model name" in line
        ]
        cpu_model = names[0] if names else None
        avx512 = "avx512f" in text
    except OSError:
        pass
    info: dict[str, Any] = {
        "node": platform.node(),
        "processor": platform.processor() or platform.machine(),
        "cpu_model": cpu_model,
        "cpu_avx512": avx512,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "keras_backend": backend,
        "keras_version": keras.__version__,
        "gpu": None,
    }
    try:
        if backend == "tensorflow":
            import tensorflow as tf

            gpus = tf.config.list_physical_devices("GPU")
            if gpus:
                details = tf.config.experimental.get_device_details(gpus[0])
                info["gpu"] = details.get("device_name") or gpus[0].name
        elif backend == "torch":
            import torch

            if torch.cuda.is_available():
                info["gpu"] = torch.cuda.get_device_name(0)
        elif backend == "jax":
            import jax

            gpus = [d for d in jax.devices() if d.platform == "gpu"]
            if gpus:
                info["gpu"] = gpus[0].device_kind
    except Exception:  # a broken driver must not break the evaluation
        info["gpu"] = None
    return info


def measure_speed(model: Any, x: np.ndarray, cfg: EvalConfig) -> dict[str, Any]:
    """Batch-1 latency and batched throughput of ``model.predict_on_batch``.

    Latency: 3 warm-up calls, then ``cfg.latency_runs`` timed single-image predictions
    (``time.perf_counter``), cycling through the first images of ``x``. Throughput: one warm-up
    call, then batches of ``cfg.throughput_batch`` images (tiled from ``x`` when it is smaller)
    until at least 3 batches and 0.5 s have passed;
    ``throughput_ips = images / elapsed seconds``.

    Args:
        model: a Keras 3 model taking 0-255 images.
        x: images ``(N, 32, 32, 3)``, N >= 1.
        cfg: ``latency_runs`` and ``throughput_batch`` are used.

    Returns:
        ``{"latency_p50_ms", "latency_p95_ms", "latency_mean_ms"`` (milliseconds per image at
        batch 1), ``"throughput_ips"`` (images/second), ``"throughput_batch"``,
        ``"latency_runs"``, ``"machine"`` (:func:`machine_info`)``}``.
    """
    if getattr(x, "ndim", None) != 4 or x.shape[0] == 0:
        raise DataError(f"need at least one image of shape (H, W, C) to time, got {x.shape}")
    n = int(x.shape[0])
    singles = [np.asarray(x[i : i + 1], dtype=np.float32) for i in range(min(n, 16))]
    for i in range(3):
        model.predict_on_batch(singles[i % len(singles)])
    times_ms = []
    for i in range(cfg.latency_runs):
        t0 = time.perf_counter()
        model.predict_on_batch(singles[i % len(singles)])
        times_ms.append((time.perf_counter() - t0) * 1000.0)

    bs = cfg.throughput_batch
    m = min(n, bs)
    batch = np.asarray(x[:m], dtype=np.float32)[np.arange(bs) % m]
    model.predict_on_batch(batch)
    images, batches = 0, 0
    t0 = time.perf_counter()
    while True:
        model.predict_on_batch(batch)
        images += bs
        batches += 1
        elapsed = time.perf_counter() - t0
        if batches >= 3 and elapsed >= 0.5:
            break
    return {
        "latency_p50_ms": float(np.percentile(times_ms, 50)),
        "latency_p95_ms": float(np.percentile(times_ms, 95)),
        "latency_mean_ms": float(np.mean(times_ms)),
        "throughput_ips": float(images / elapsed),
        "throughput_batch": int(bs),
        "latency_runs": int(cfg.latency_runs),
        "machine": machine_info(),
    }


def evaluate_model(
    model: Any,
    x: np.ndarray,
    y: Any,
    *,
    name: str,
    cfg: EvalConfig,
    model_path: str | os.PathLike[str] | None = None,
    measure: bool = True,
) -> dict[str, Any]:
    """Evaluate one model: metrics, footprint and (optionally) speed.

    Args:
        model: a Keras 3 model returning logits.
        x: test images ``(N, 32, 32, 3)``, 0-255.
        y: test labels ``(N,)`` or ``(N, 1)``.
        name: the model's name (``teacher``, ``student_distilled``, ``student_scratch``).
        cfg: batch size, ECE bins, collapse threshold and speed settings.
        model_path: the saved model, for its size on disk.
        measure: time latency and throughput (``speed`` is ``None`` when False).

    Returns:
        :func:`classification_metrics` plus ``name``, ``footprint``
        (:func:`model_footprint`), ``speed`` (:func:`measure_speed` or ``None``), ``pred``
        (predicted class per image, a list, for agreement) and ``eval_seconds``.
    """
    t0 = time.perf_counter()
    logits = predict_logits(model, x, cfg.batch_size)
    result: dict[str, Any] = {"name": name}
    result.update(
        classification_metrics(
            y, logits, ece_bins=cfg.ece_bins, collapse_threshold=cfg.collapse_threshold
        )
    )
    result["footprint"] = model_footprint(model, model_path)
    result["speed"] = measure_speed(model, x, cfg) if measure else None
    result["pred"] = np.argmax(logits, axis=1).astype(int).tolist()
    result["eval_seconds"] = time.perf_counter() - t0
    return result


# --------------------------------------------------------------------------------------------
# Comparisons
# --------------------------------------------------------------------------------------------


def _params(result: Mapping[str, Any]) -> int | None:
    fp = result.get("footprint") or {}
    value = fp.get("params", result.get("params"))
    return None if value is None else int(value)


def agreement_rate(pred_a: Sequence[int], pred_b: Sequence[int]) -> float:
    """Fraction of images on which two models predict the same class, in [0, 1].

    Raises:
        ArtifactError: the two prediction lists have different lengths.
    """
    a = np.asarray(pred_a).reshape(-1)
    b = np.asarray(pred_b).reshape(-1)
    if a.shape != b.shape or a.size == 0:
        raise ArtifactError(
            f"cannot compare {a.size} with {b.size} predictions: evaluate every model on the "
            "same test images"
        )
    return float(np.mean(a == b))


def paired_gain_interval(
    y: Any, pred_a: Sequence[int], pred_b: Sequence[int], z: float = 1.96
) -> dict[str, Any]:
    """How well these test images pin down ``100 * (acc_a - acc_b)``: a 95 % interval for the
    gain of model ``a`` over model ``b`` measured on the same images, and McNemar's test.

    Per image ``d_i = [a right] - [b right]`` (in {-1, 0, 1}); the gain is ``100 * mean(d)``
    points, its standard error ``100 * sd(d) / sqrt(n)`` (``sd`` with ``ddof=1``), the interval
    ``gain +- z * se`` (the normal approximation of the paired difference; ``z = 1.96``: 95 %).
    McNemar's exact test: of the images exactly one model gets right (``only_a``, ``only_b``),
    the two-sided binomial p-value of that split under "equally likely"
    (``scipy.stats.binomtest``). Our own code because scikit-learn has no paired test; the
    interval is the textbook formula. ``resolved``: the interval excludes 0 **and** McNemar's
    p < 0.05 (with few images on which the models differ the normal interval alone is too
    liberal: 7 against 1 of 2,000 gives +0.02 to +0.58 points but p = 0.07).

    Returns:
        ``{"gain_points", "low_points", "high_points", "n", "only_a", "only_b", "mcnemar_p",
        "resolved"}``.
    """
    from scipy.stats import binomtest

    labels = np.asarray(y).reshape(-1)
    a, b = np.asarray(pred_a).reshape(-1), np.asarray(pred_b).reshape(-1)
    if not (a.size == b.size == labels.size) or labels.size < 2:
        raise DataError(
            f"paired_gain_interval needs >= 2 images with a prediction of each model, got "
            f"{labels.size} labels, {a.size} and {b.size} predictions. Fix: score both models "
            "on the same test images"
        )
    a, b = a == labels, b == labels
    d = a.astype(np.float64) - b.astype(np.float64)
    n = d.size
    gain = 100.0 * float(d.mean())
    se = 100.0 * float(d.std(ddof=1)) / math.sqrt(n)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(b & ~a))
    p = float(binomtest(only_a, only_a + only_b, 0.5).pvalue) if only_a + only_b else 1.0
    low, high = gain - z * se, gain + z * se
    return {
        "gain_points": gain,
        "low_points": low,
        "high_points": high,
        "n": n,
        "only_a": only_a,
        "only_b": only_b,
        "mcnemar_p": p,
        "resolved": bool((low > 0 or high < 0) and p < 0.05),
    }


def compare_models(results: Mapping[str, Mapping[str, Any]], labels: Any = None) -> dict[str, Any]:
    """Knowledge-distillation gain, compression and teacher agreement.

    With ``acc`` the test accuracy (fraction) and ``err = 1 - acc``:

    - ``kd_gain_points = 100 * (acc_distilled - acc_scratch)`` (percentage points).
    - ``relative_error_reduction = (err_scratch - err_distilled) / err_scratch`` (fraction of
      the scratch student's errors that distillation removes; ``None`` if ``err_scratch = 0``).
    - ``compression_ratio = params_teacher / params_distilled`` (``compression_ratios``: per
      student).
    - ``accuracy_gap_to_teacher_points[s] = 100 * (acc_teacher - acc_s)``.
    - ``agreement_with_teacher[s]``: fraction of test images where ``s`` predicts the
      teacher's class (needs ``pred`` in both results).
    - ``kd_gain_interval``: with ``labels`` (>= 2) and both students' ``pred``, how well these
      test images resolve the KD gain (:func:`paired_gain_interval`, distilled over scratch).

    Models that are missing give ``None`` for the values that need them.

    Args:
        results: model name -> :func:`evaluate_model` result (at least ``accuracy``).
        labels: the test labels the ``pred`` lists were scored against.

    Returns:
        The dict above plus ``accuracies`` (name -> accuracy) and ``params`` (name -> count).
    """
    acc = {name: float(r["accuracy"]) for name, r in results.items() if "accuracy" in r}
    params = {name: _params(r) for name, r in results.items()}
    out: dict[str, Any] = {
        "accuracies": acc,
        "params": params,
        "kd_gain_points": None,
        "relative_error_reduction": None,
        "compression_ratio": None,
        "compression_ratios": {},
        "accuracy_gap_to_teacher_points": {},
        "agreement_with_teacher": {},
        "kd_gain_interval": None,
    }
    if DISTILLED in acc and SCRATCH in acc:
        out["kd_gain_points"] = 100.0 * (acc[DISTILLED] - acc[SCRATCH])
        err_s, err_kd = 1.0 - acc[SCRATCH], 1.0 - acc[DISTILLED]
        out["relative_error_reduction"] = (err_s - err_kd) / err_s if err_s > 0 else None
        p_kd, p_s = results[DISTILLED].get("pred"), results[SCRATCH].get("pred")
        n = None if labels is None else np.asarray(labels).size
        if n is not None and n >= 2 and p_kd is not None and p_s is not None:
            if len(p_kd) == len(p_s) == n:  # scored on the same images
                out["kd_gain_interval"] = paired_gain_interval(labels, p_kd, p_s)
    teacher = results.get(TEACHER)
    for s in STUDENTS:
        if s not in results:
            continue
        p_t, p_s = params.get(TEACHER), params.get(s)
        out["compression_ratios"][s] = p_t / p_s if p_t and p_s else None
        if TEACHER in acc and s in acc:
            out["accuracy_gap_to_teacher_points"][s] = 100.0 * (acc[TEACHER] - acc[s])
        if teacher is not None and teacher.get("pred") is not None and results[s].get("pred"):
            out["agreement_with_teacher"][s] = agreement_rate(teacher["pred"], results[s]["pred"])
    out["compression_ratio"] = out["compression_ratios"].get(DISTILLED)
    return out


def _series(history: Mapping[str, Any], key: str) -> np.ndarray | None:
    values = history.get(key)
    if values is None or len(values) == 0:
        return None
    return np.asarray([np.nan if v is None else v for v in values], dtype=np.float64)


def overfitting_analysis(history: Mapping[str, Any]) -> dict[str, Any]:
    """Train/validation accuracy gap from a training history.

    ``gap = 100 * (train accuracy - validation accuracy)`` in percentage points; positive means
    the model fits the training split better than it generalises. The best epoch is the one
    with the highest validation accuracy (first on ties, NaNs ignored).

    Args:
        history: the trainer's ``history.json`` (dict of per-epoch lists: ``epoch``
            (1-based), ``accuracy``, ``val_accuracy`` ...). Missing keys give ``None``.

    Returns:
        ``{"epochs_run", "final_train_accuracy", "final_val_accuracy", "final_gap_points",
        "best_epoch"`` (1-based), ``"best_val_accuracy", "gap_at_best_points",
        "epochs_after_best", "note"}``; ``note`` says what could not be computed.
    """
    acc = _series(history, "accuracy")
    val = _series(history, "val_accuracy")
    epochs = _series(history, "epoch")
    lengths = [len(s) for s in (acc, val) if s is not None]
    n_epochs = max(lengths) if lengths else (len(epochs) if epochs is not None else 0)
    out: dict[str, Any] = {
        "epochs_run": int(n_epochs),
        "final_train_accuracy": None,
        "final_val_accuracy": None,
        "final_gap_points": None,
        "best_epoch": None,
        "best_val_accuracy": None,
        "gap_at_best_points": None,
        "epochs_after_best": None,
        "note": "",
    }
    notes = []
    if acc is not None and np.isfinite(acc[-1]):
        out["final_train_accuracy"] = float(acc[-1])
    if val is not None and np.isfinite(val[-1]):
        out["final_val_accuracy"] = float(val[-1])
    if out["final_train_accuracy"] is not None and out["final_val_accuracy"] is not None:
        out["final_gap_points"] = 100.0 * (out["final_train_accuracy"] - out["final_val_accuracy"])
    if val is None or not np.any(np.isfinite(val)):
        notes.append("no val_accuracy in the history: best epoch unknown")
    else:
        i = int(np.nanargmax(val))
        if epochs is not None and len(epochs) == len(val) and np.isfinite(epochs[i]):
            out["best_epoch"] = int(epochs[i])
        else:
            out["best_epoch"] = i + 1
        out["best_val_accuracy"] = float(val[i])
        out["epochs_after_best"] = int(len(val) - 1 - i)
        if acc is not None and len(acc) == len(val) and np.isfinite(acc[i]):
            out["gap_at_best_points"] = 100.0 * (float(acc[i]) - float(val[i]))
    if acc is None:
        notes.append("no training accuracy in the history: gaps unknown")
    out["note"] = "; ".join(notes)
    return out


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    mean = float(statistics.fmean(values))
    std = float(statistics.stdev(values)) if len(values) > 1 else 0.0
    return mean, std


def aggregate_runs(runs: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and spread of the accuracies and the KD gain over several seeds.

    ``std`` is the sample standard deviation (ddof=1) for ``n > 1`` runs and 0 for one run.
    The KD gain is judged real when ``mean > 2 * std`` of the gain over the runs
    (``kd_gain_exceeds_spread``); with one run there is no spread estimate and the flag is
    False.

    Args:
        runs: one entry per seed: model name -> result (at least ``accuracy``), or a dict
            with that mapping under ``"results"``.

    Returns:
        ``{"n_runs", "models": {name: {"accuracy_mean", "accuracy_std", "accuracies"}},
        "kd_gain_points": {"mean", "std", "values"}, "kd_gain_exceeds_spread", "note"}``;
        accuracies are fractions, the gain is in percentage points.
    """
    per_run = [r["results"] if "results" in r else r for r in runs]
    names: list[str] = [n for n in MODEL_NAMES if any(n in r for r in per_run)]
    names += sorted({n for r in per_run for n in r} - set(names))
    models = {}
    for name in names:
        accs = [float(r[name]["accuracy"]) for r in per_run if name in r]
        mean, std = _mean_std(accs)
        models[name] = {"accuracy_mean": mean, "accuracy_std": std, "accuracies": accs}
    gains = [
        100.0 * (float(r[DISTILLED]["accuracy"]) - float(r[SCRATCH]["accuracy"]))
        for r in per_run
        if DISTILLED in r and SCRATCH in r
    ]
    g_mean, g_std = _mean_std(gains)
    mean, spread = g_mean or 0.0, 2.0 * (g_std or 0.0)
    exceeds = len(gains) > 1 and mean > spread
    if not gains:
        note = "no run has both students: KD gain unknown"
    elif len(gains) == 1:
        note = "one run only: no spread estimate, so the KD gain cannot be called significant"
    elif exceeds:
        note = f"KD gain {mean:+.2f} points exceeds 2 std ({spread:.2f}) over {len(gains)} runs"
    else:
        note = (
            f"KD gain {mean:+.2f} points is within 2 std ({spread:.2f}) over "
            f"{len(gains)} runs: not distinguishable from seed noise"
        )
    return {
        "n_runs": len(per_run),
        "models": models,
        "kd_gain_points": {"mean": g_mean, "std": g_std, "values": gains},
        "kd_gain_exceeds_spread": bool(exceeds),
        "note": note,
    }
