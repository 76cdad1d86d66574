"""Bring your own teacher: check a trained teacher before any student learns from it.

A teacher comes either from the pipeline's ``train_teacher`` stage or from the user
(``teacher_model``: a ``.keras`` file, a Model folder of an earlier run, or the teacher shipped
in this package, :data:`SHIPPED`). :func:`check_teacher` is the stage that admits a user's
teacher: it loads it with ``safe_mode=True``, checks that it takes the students' input and
predicts their classes, that its logits are finite and that it is better than chance on the
run's validation split, and writes it as a Model folder like the trained teacher's, whose
``info.json`` carries the teacher's identity (:func:`teacher_identity`). Every check runs
before any student trains; each failure names the file and the fix.
"""

from __future__ import annotations

import hashlib
import json
from importlib import resources
from pathlib import Path
from typing import Any

from kd.config import IMAGE_SHAPE, NUM_CLASSES, PRESETS
from kd.errors import ArtifactError, ConfigError

Log = Any

#: The ``teacher_model`` value that names the teacher shipped in ``kd/teachers/``.
SHIPPED = "shipped"
SHIPPED_FILE = "fast_teacher.keras"
PROVENANCE_SUFFIX = ".json"  # fast_teacher.keras -> fast_teacher.json, its provenance
#: A teacher whose validation accuracy is at most this is refused (chance + 2 points, the
#: divergence rule of training).
CHANCE_MARGIN = 0.02
FINITE_CHECK_IMAGES = 8


def shipped_teacher_path() -> Path:
    """The ``.keras`` file of the teacher shipped with the package (``kd/teachers/``)."""
    path = Path(str(resources.files("kd.teachers").joinpath(SHIPPED_FILE)))
    if not path.is_file():
        raise ArtifactError(
            f"the shipped teacher {path} is missing. Fix: reinstall the kd package, or train "
            "it with: python tools/train_teacher.py --data PATH_TO_CIFAR10"
        )
    return path


def sha256_file(path: str | Path) -> str:
    """The sha256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_file(path: str | Path) -> Path:
    """The ``.keras`` file of a teacher given as a file or as a Model folder."""
    from kd.model_folder import MODEL_FILE

    p = Path(path)
    return p / MODEL_FILE if p.is_dir() else p


def _provenance(path: Path) -> dict[str, Any]:
    """What was written down about a teacher file: the ``info.json`` of its Model folder, or
    the ``NAME.json`` beside ``NAME.keras`` (the shipped teacher's provenance)."""
    from kd.model_folder import INFO_FILE

    for candidate in (path.parent / INFO_FILE, path.with_suffix(PROVENANCE_SUFFIX)):
        if candidate.is_file():
            try:
                data = json.loads(candidate.read_text())
            except (OSError, ValueError):
                continue
            if isinstance(data, dict):
                data.pop("history", None)
                return data
    return {}


def check_teacher(
    teacher_path: str | Path,
    val: tuple[Any, Any],
    student_preset: str,
    out_dir: str | Path,
    *,
    uri: str = "",
    log: Log = print,
) -> dict[str, Any]:
    """Admit a trained teacher: check it, measure it, write it as a Model folder.

    Checks, in order, each a clear :class:`ArtifactError` naming the file and the fix: the
    file exists and is a Keras model that loads with ``safe_mode=True``; its input is one
    (32, 32, 3) image batch and its output (N, 10) logits; its logits on a few validation
    images are finite; its accuracy on the validation split is above chance
    (``> 1/10 + CHANCE_MARGIN``). A teacher with no more parameters than the student is
    admitted with a warning (it is recorded either way).

    Args:
        teacher_path: a ``.keras`` file or a Model folder holding ``model.keras``.
        val: (x uint8 (N,32,32,3), y (N,)) the run's validation split.
        student_preset: the preset of the students it will teach.
        out_dir: the Model folder to write (``model.keras``, ``info.json``, ``history.json``).
        uri: where the teacher came from, as the user named it (recorded).
        log: where progress lines go.

    Returns:
        The ``info.json`` written: ``stage``, ``source`` (``imported``), ``role``, ``uri``,
        ``sha256``, ``architecture``, ``parameters``, ``val_accuracy``, ``best_val_accuracy``,
        ``student_parameters``, ``provenance`` (what the file's own record says).
    """
    import numpy as np

    from kd.evaluate import predict_logits
    from kd.model_folder import HISTORY_FILE, INFO_FILE, MODEL_FILE, load_model
    from kd.models import build_model, count_params
    from kd.stages import copy_file
    from kd.storage import write_text_atomic

    if student_preset not in PRESETS:
        raise ConfigError(
            f"invalid student preset {student_preset!r}: choose one of {', '.join(PRESETS)}"
        )
    src = model_file(teacher_path)
    name = uri or str(teacher_path)
    fix = (
        "pass a .keras file of a CIFAR-10 classifier (32x32x3 images in, 10 logits out), a "
        f"teacher Model of an earlier run, '{SHIPPED}' (the teacher shipped with kd), or "
        "teacher_model='' (local_runner run --train-teacher) to train one"
    )
    if not src.is_file():
        raise ArtifactError(f"teacher {name}: no model file at {src}. Fix: {fix}")
    try:
        model = load_model(src)
    except ArtifactError as exc:
        raise ArtifactError(
            f"teacher {name} is not a loadable Keras model ({exc}). Fix: {fix}"
        ) from exc
    in_shape = tuple(model.input_shape[1:]) if not isinstance(model.input_shape, list) else None
    if in_shape != IMAGE_SHAPE:
        raise ArtifactError(
            f"teacher {name} takes inputs of shape {model.input_shape}, the students take "
            f"(None, {', '.join(map(str, IMAGE_SHAPE))}). Fix: {fix}"
        )
    out_shape = model.output_shape
    if isinstance(out_shape, list) or len(out_shape) != 2 or out_shape[-1] != NUM_CLASSES:
        raise ArtifactError(
            f"teacher {name} outputs {out_shape}, the students predict {NUM_CLASSES} classes "
            f"(None, {NUM_CLASSES}). Fix: {fix}"
        )
    x, y = val
    first = predict_logits(model, x[:FINITE_CHECK_IMAGES], FINITE_CHECK_IMAGES)
    if not np.all(np.isfinite(first)):
        raise ArtifactError(
            f"teacher {name} gives non-finite logits (NaN or inf) on validation images. Fix: {fix}"
        )
    logits = predict_logits(model, x, 500)
    accuracy = float(np.mean(np.argmax(logits, axis=1) == np.asarray(y).reshape(-1)))
    chance = 1.0 / NUM_CLASSES
    if not np.all(np.isfinite(logits)) or accuracy <= chance + CHANCE_MARGIN:
        raise ArtifactError(
            f"teacher {name} is no better than chance on the {len(y)} validation images "
            f"(accuracy {accuracy:.2%}, chance {chance:.0%}): it has nothing to teach. Fix: "
            f"{fix}"
        )
    params = count_params(model)
    student_params = count_params(build_model(student_preset, "student"))["total"]
    if params["total"] <= student_params:
        log(
            f"[check_teacher] warning: teacher {name} ({model.name}, {params['total']:,} "
            f"parameters) is no larger than the {student_preset} student "
            f"({student_params:,}); is it a student?"
        )
    info = {
        "stage": "check_teacher",
        "source": "imported",
        "role": "teacher",
        "uri": name,
        "sha256": sha256_file(src),
        "architecture": model.name,
        "parameters": params,
        "val_accuracy": accuracy,
        "best_val_accuracy": accuracy,
        "val_images": int(len(y)),
        "student_preset": student_preset,
        "student_parameters": student_params,
        "provenance": _provenance(src),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    copy_file(src, out / MODEL_FILE)
    write_text_atomic(out / HISTORY_FILE, "{}")
    write_text_atomic(out / INFO_FILE, json.dumps(info, indent=1))
    log(
        f"[check_teacher] teacher {name}: {model.name}, {params['total']:,} parameters, "
        f"validation accuracy {accuracy:.2%} on {len(y)} images"
    )
    return info


def teacher_identity(model_dir: str | Path) -> dict[str, Any]:
    """Who a teacher Model folder holds, for the students' metadata and the report.

    ``{"source": "imported"|"trained", "uri", "sha256", "architecture", "parameters",
    "val_accuracy", "trained_on"}``; ``trained_on`` is what the teacher's own provenance says
    about its training data (the shipped teacher: the official training set), or None.
    """
    from kd.model_folder import INFO_FILE

    d = Path(model_dir)
    src = model_file(d)
    try:
        info = json.loads((d / INFO_FILE).read_text()) if d.is_dir() else {}
    except (OSError, ValueError):
        info = {}
    prov = info.get("provenance") or {}
    params = info.get("parameters")
    data = prov.get("data") or {}
    return {
        "source": info.get("source", "trained"),
        "uri": info.get("uri", str(d)),
        "sha256": info.get("sha256") or (sha256_file(src) if src.is_file() else None),
        "architecture": info.get("architecture") or prov.get("architecture"),
        "preset": info.get("preset") or prov.get("preset"),
        "parameters": params.get("total") if isinstance(params, dict) else params,
        "val_accuracy": info.get("val_accuracy", info.get("best_val_accuracy")),
        "trained_on": (
            f"{int(data['train_images']):,} images of the official CIFAR-10 training set"
            if data.get("train_images")
            else None
        ),
        "reported_test_accuracy": prov.get("test_accuracy"),
    }
