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

    tr, va = _load(*train, "train"), _load(*val, "validation")
    return kd_train.train_student_scratch(tr, va, cfg, out_dir, log=log).info


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

    teacher = kd_train.load_model(teacher_dir)
    tr, va = _load(*train, "train"), _load(*val, "validation")
    return kd_train.distill_student(teacher, tr, va, cfg, out_dir, log=log).info


def gate_decision(comparison: dict[str, Any], cfg: GateConfig) -> tuple[bool, str]:
    """Whether the distilled student may be published, and why (not).

    Passes when ``kd_gain_points >= cfg.min_kd_gain`` and the distilled student's test
    accuracy ``>= cfg.min_accuracy``.
    """
    gain = comparison.get("kd_gain_points")
    acc = (comparison.get("accuracies") or {}).get("student_distilled")
    failed = []
    if gain is None or gain < cfg.min_kd_gain:
        failed.append(
            f"KD gain {gain if gain is None else round(gain, 2)} points < required "
            f"{cfg.min_kd_gain}"
        )
    if acc is None or acc < cfg.min_accuracy:
        failed.append(
            f"distilled accuracy {acc if acc is None else round(acc, 4)} < required "
            f"{cfg.min_accuracy}"
        )
    if failed:
        return False, "gate failed: " + "; ".join(failed)
    return True, (
        f"gate passed: KD gain {gain:.2f} points >= {cfg.min_kd_gain}, distilled "
        f"accuracy {acc:.4f} >= {cfg.min_accuracy}"
    )


def evaluate(
    model_dirs: dict[str, str],
    test: tuple[str, str | None],
    cfg: EvalConfig,
    gate: GateConfig,
    out_dir: str,
    run_info: dict | None = None,
    log: Log = print,
) -> dict[str, Any]:
    """Evaluate the three models on the test set and write the report into ``out_dir``.

    Args:
        model_dirs: ``teacher``, ``student_distilled``, ``student_scratch`` -> model folder.
        test: (test Dataset path, expected sha256).
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
    from kd.train import HISTORY_FILE, MODEL_FILE, load_model

    missing = [n for n in MODEL_NAMES if n not in model_dirs]
    if missing:
        raise ArtifactError(f"evaluate needs models {MODEL_NAMES}; missing {missing}")
    models = {n: load_model(model_dirs[n]) for n in MODEL_NAMES}  # all checked before work
    x, y = _load(*test, "test")
    results, histories = {}, {}
    for n in MODEL_NAMES:
        log(f"[evaluate] {n}: {len(x)} test images")
        results[n] = ev.evaluate_model(
            models[n], x, y, name=n, cfg=cfg, model_path=Path(model_dirs[n]) / MODEL_FILE
        )
        hist = Path(model_dirs[n]) / HISTORY_FILE
        histories[n] = json.loads(hist.read_text()) if hist.exists() else {}
    comparison = ev.compare_models(results)
    passed, reason = gate_decision(comparison, gate)
    info = dict(run_info or {})
    info["gate"] = reason
    with atomic_path(out_dir) as tmp:
        paths = report.write_report(tmp, results, histories, comparison, run_info=info)
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
        "paths": {k: str(v) for k, v in paths.items()},
        "summary_table": report.summary_table(results, comparison),
        "class_names": list(CLASS_NAMES),
    }


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
    images) with size, test accuracy, accuracy drop and latency (see
    :func:`kd.export.export_tflite`)."""
    from kd.export import export_tflite

    x_train, _ = _load(*train, "train")
    x, y = _load(*test, "test")
    return export_tflite(model_dir, out_dir, x_train[:calibration_images], (x, y))
