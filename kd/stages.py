"""The pipeline's stages as plain functions over paths and configs.

Each KFP component in ``components/`` is a thin adapter that turns its artifacts into paths
and calls one function here; the local benchmarks call the same functions directly. Every
function checks its inputs (configs, dataset hashes, model files) before any expensive work.

Model folders (a ``Model`` artifact's path) hold ``model.keras``, ``history.json`` and
``info.json`` (see :mod:`kd.train`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from kd.config import (
    CLASS_NAMES,
    DistillConfig,
    EvalConfig,
    GateConfig,
    SplitConfig,
    StudentConfig,
    TeacherConfig,
)
from kd.errors import ArtifactError
from kd.storage import atomic_path

MODEL_NAMES = ("teacher", "student_distilled", "student_scratch")
Log = Any


def split_data(cfg: SplitConfig, train_path: str, val_path: str, test_path: str) -> dict:
    """Data split: load ``cfg.source``, split, write three Dataset files; returns metadata."""
    from kd.data import make_splits

    return make_splits(cfg, train_path, val_path, test_path)


def _load(path: str, sha256: str | None, what: str) -> tuple[Any, Any]:
    from kd.data import load_dataset

    if not sha256:
        raise ArtifactError(
            f"the {what} Dataset at {path} has no sha256 in its metadata. Fix: pass the Dataset "
            "produced by the data_split stage"
        )
    return load_dataset(path, expected_sha256=sha256)


def train_teacher(
    train: tuple[str, str | None],
    val: tuple[str, str | None],
    cfg: TeacherConfig,
    out_dir: str,
    log: Log = print,
) -> dict[str, Any]:
    """Train the teacher; ``train``/``val`` are (Dataset path, expected sha256)."""
    from kd import train as kd_train
    from kd.parallel import join_cluster

    kd_train.pad_heap()  # before the first TensorFlow op (its docstring says why)
    join_cluster()  # before the first TensorFlow op too: a multi-replica job's collectives
    tr, va = _load(*train, "train"), _load(*val, "validation")
    return kd_train.train_teacher(tr, va, cfg, out_dir, log=log).info


def train_student_scratch(
    train: tuple[str, str | None],
    val: tuple[str, str | None],
    cfg: StudentConfig,
    out_dir: str,
    log: Log = print,
) -> dict[str, Any]:
    """Train the student from scratch (hard labels only)."""
    from kd import train as kd_train
    from kd.parallel import join_cluster

    kd_train.pad_heap()  # before the first TensorFlow op (its docstring says why)
    join_cluster()  # before the first TensorFlow op too: a multi-replica job's collectives
    tr, va = _load(*train, "train"), _load(*val, "validation")
    return kd_train.train_student_scratch(tr, va, cfg, out_dir, log=log).info


def check_teacher(
    teacher_path: str,
    val: tuple[str, str | None],
    student_preset: str,
    out_dir: str,
    uri: str = "",
    log: Log = print,
) -> dict[str, Any]:
    """Admit a user's teacher (see :func:`kd.teacher.check_teacher`)."""
    from kd.teacher import check_teacher as run

    return run(teacher_path, _load(*val, "validation"), student_preset, out_dir, uri=uri, log=log)


def distill_student(
    teacher_dir: str,
    train: tuple[str, str | None],
    val: tuple[str, str | None],
    cfg: DistillConfig,
    out_dir: str,
    log: Log = print,
) -> dict[str, Any]:
    """Distill the student from the teacher saved in ``teacher_dir``."""
    from kd import train as kd_train
    from kd.distill import distill_student as run
    from kd.model_folder import load_model
    from kd.parallel import join_cluster
    from kd.teacher import teacher_identity

    kd_train.pad_heap()  # before the first TensorFlow op (its docstring says why)
    join_cluster()  # before the first TensorFlow op too: a multi-replica job's collectives
    teacher = load_model(teacher_dir)
    tr, va = _load(*train, "train"), _load(*val, "validation")
    identity = teacher_identity(teacher_dir)
    result = run(teacher, tr, va, cfg, out_dir, log=log, teacher_info=identity)
    return result.info


def gate_decision(
    val_results: dict[str, dict[str, Any]], cfg: GateConfig
) -> tuple[bool, str, dict[str, Any]]:
    """Whether the distilled student may be published, and why (not), from **validation**
    results only (the test set never decides).

    Passes when no model is flagged collapsed on the validation split, the KD gain
    ``100 * (val_acc_distilled - val_acc_scratch) >= cfg.min_kd_gain`` (points) and the
    distilled student's ``val_acc >= cfg.min_accuracy``.

    Args:
        val_results: model name -> :func:`kd.evaluate.classification_metrics` on the
            validation split (``accuracy`` and ``collapse``).
        cfg: the thresholds.

    Returns:
        ``(passed, reason, detail)``: ``reason`` is one line naming each failed condition (or
        all passed ones), ``detail`` the numbers, thresholds and the deciding condition.
    """
    acc = {n: r.get("accuracy") for n, r in val_results.items()}
    d, s = acc.get("student_distilled"), acc.get("student_scratch")
    gain = None if d is None or s is None else 100.0 * (d - s)
    collapsed = sorted(
        n for n, r in val_results.items() if (r.get("collapse") or {}).get("collapsed")
    )
    checks = [
        (
            "no model collapsed",
            not (collapsed and cfg.refuse_collapsed),
            f"collapsed on validation: {', '.join(collapsed)}",
        ),
        (
            f"validation KD gain >= {cfg.min_kd_gain} points",
            gain is not None and gain >= cfg.min_kd_gain,
            f"validation KD gain {gain if gain is None else round(gain, 2)} points < required "
            f"{cfg.min_kd_gain}",
        ),
        (
            f"distilled validation accuracy >= {cfg.min_accuracy}",
            d is not None and d >= cfg.min_accuracy,
            f"distilled validation accuracy {d if d is None else round(d, 4)} < required "
            f"{cfg.min_accuracy}",
        ),
    ]
    failed = [why for _, ok, why in checks if not ok]
    detail = {
        "decided_on": "validation",
        "passed": not failed,
        "min_kd_gain": cfg.min_kd_gain,
        "min_accuracy": cfg.min_accuracy,
        "refuse_collapsed": cfg.refuse_collapsed,
        "val_accuracy": acc,
        "val_kd_gain_points": gain,
        "collapsed": collapsed,
        "failed": failed,
        "deciding": failed[0] if failed else "all conditions passed",
    }
    if failed:
        return False, "gate failed: " + "; ".join(failed), detail
    return (
        True,
        f"gate passed on validation: KD gain {gain:.2f} points >= {cfg.min_kd_gain}, "
        f"distilled accuracy {d:.4f} >= {cfg.min_accuracy}"
        + (", no model collapsed" if not collapsed else f" (collapsed, allowed: {collapsed})"),
        detail,
    )


def evaluate(
    model_dirs: dict[str, str],
    test: tuple[str, str | None],
    val: tuple[str, str | None],
    cfg: EvalConfig,
    gate: GateConfig,
    out_dir: str,
    run_info: dict | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """Evaluate the three models on the test set and write the report into ``out_dir``; the
    gate decides on the validation split (:func:`gate_decision`).

    Args:
        model_dirs: ``teacher``, ``student_distilled``, ``student_scratch`` -> model folder.
        test: (test Dataset path, expected sha256).
        val: (validation Dataset path, expected sha256): what the gate decides on.
        cfg: evaluation settings.
        gate: thresholds of the quality gate.
        out_dir: where ``report.html``, ``summary.md``, ``metrics.json``, ``metrics.csv`` and
            the PNGs go.
        run_info: settings to list in the report.

    Returns:
        ``{"results", "comparison", "gate_passed", "gate_reason", "paths"}``; ``results`` maps
        each model to its metrics (without the raw predictions).
    """
    from kd import evaluate as ev
    from kd import report
    from kd.model_folder import HISTORY_FILE, MODEL_FILE, load_model

    missing = [n for n in MODEL_NAMES if n not in model_dirs]
    if missing:
        raise ArtifactError(f"evaluate needs models {MODEL_NAMES}; missing {missing}")
    models = {n: load_model(model_dirs[n]) for n in MODEL_NAMES}  # all checked before work
    from kd.teacher import teacher_identity

    x, y = _load(*test, "test")
    xv, yv = _load(*val, "validation")
    results, histories, val_results = {}, {}, {}
    for n in MODEL_NAMES:
        log(f"[evaluate] {n}: {len(x)} test images")
        results[n] = ev.evaluate_model(
            models[n], x, y, name=n, cfg=cfg, model_path=Path(model_dirs[n]) / MODEL_FILE
        )
        val_results[n] = ev.classification_metrics(
            yv,
            ev.predict_logits(models[n], xv, cfg.batch_size),
            ece_bins=cfg.ece_bins,
            collapse_threshold=cfg.collapse_threshold,
        )
        hist = Path(model_dirs[n]) / HISTORY_FILE
        histories[n] = json.loads(hist.read_text()) if hist.exists() else {}
    comparison = ev.compare_models(results, labels=y)
    passed, reason, gate_detail = gate_decision(val_results, gate)
    teacher = teacher_identity(model_dirs["teacher"])
    teacher["test_accuracy"] = results["teacher"]["accuracy"]
    info = dict(run_info or {})
    info["gate"] = reason
    # Each student's peak learning rate (the scratch student's may be its own:
    # kd.config.ScratchConfig), so the report says what the baseline was trained with.
    rates = {n: _config_of(model_dirs[n]).get("learning_rate") for n in MODEL_NAMES[1:]}
    if all(r is not None for r in rates.values()):
        info["peak_learning_rate"] = rates
    # What the distilled student learned from besides the labels: the loss's weights and the
    # teacher's views (mixed views are images no labelled example shows, kd.config).
    distilled = _config_of(model_dirs["student_distilled"])
    keys = ("temperature", "alpha", "kd_loss", "teacher_views", "teacher_mixup_views", "epochs")
    if distilled:
        info["distillation"] = {k: distilled[k] for k in keys if k in distilled}
    with atomic_path(out_dir) as tmp:
        paths = report.write_report(
            tmp,
            results,
            histories,
            comparison,
            run_info=info,
            teacher=teacher,
            gate=gate_detail,
        )
    paths = {k: Path(out_dir) / Path(p).name for k, p in paths.items()}
    for r in results.values():
        r.pop("pred", None)
    for n, r in results.items():
        log(f"[evaluate] {n}: test accuracy {r['accuracy']:.4f}")
    log(f"[evaluate] {reason}")
    return {
        "results": results,
        "comparison": comparison,
        "gate_passed": passed,
        "gate_reason": reason,
        "gate": gate_detail,
        "teacher": teacher,
        "paths": {k: str(v) for k, v in paths.items()},
        "summary_table": report.summary_table(results, comparison),
        "class_names": list(CLASS_NAMES),
    }


def _config_of(model_dir: str) -> dict[str, Any]:
    """The training config a model folder's ``info.json`` records (empty if none)."""
    from kd.model_folder import INFO_FILE

    path = Path(model_dir) / INFO_FILE
    try:
        config = json.loads(path.read_text()).get("config") if path.is_file() else None
    except (OSError, ValueError):
        return {}
    return config if isinstance(config, dict) else {}


def copy_file(src: str | Path, dst: str | Path) -> None:
    """Copy ``src`` to ``dst`` atomically."""
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def export_blessed(
    model_dir: str, test: tuple[str, str | None], check_images: int, out_dir: str
) -> dict[str, Any]:
    """Export the gate-passing student for serving (see :func:`kd.export.export_serving`);
    fails if the SavedModel's predictions differ from the Keras model's on test images."""
    from kd.export import export_serving

    x, _ = _load(*test, "test")
    info = export_serving(model_dir, out_dir, check_images=x[:check_images])
    if check_images and not info.get("same_predictions", False):
        raise ArtifactError(
            f"the exported SavedModel predicts differently from the Keras model on "
            f"{check_images} test images (max logit difference "
            f"{info.get('max_abs_logit_diff')}). Fix: re-run the export with the TensorFlow "
            "backend the model was trained with"
        )
    return info


def export_edge(
    model_dir: str,
    train: tuple[str, str | None],
    test: tuple[str, str | None],
    calibration_images: int,
    out_dir: str,
) -> dict[str, Any]:
    """TFLite float32 and int8 (calibrated on the first ``calibration_images`` training
    images) and ONNX, each with size, test accuracy, accuracy drop and latency (see
    :func:`kd.export.export_tflite` and :func:`kd.export.export_onnx`): ``tflite.json``'s
    contents with ``onnx.json``'s under ``"onnx"``. ``model_dir`` is the serving export."""
    from kd.export import export_onnx, export_tflite
    from kd.model_folder import MODEL_FILE, load_model

    x_train, _ = _load(*train, "train")
    x, y = _load(*test, "test")
    info = export_tflite(model_dir, out_dir, x_train[:calibration_images], (x, y))
    reference = load_model(Path(model_dir) / MODEL_FILE)
    info["onnx"] = export_onnx(model_dir, out_dir, (x, y), reference=reference)
    return info
