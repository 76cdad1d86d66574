"""The model folder: what a training stage writes and what reading a model needs.

A stage's ``Model`` artifact is a folder holding ``model.keras`` (the model, preprocessing
included, no optimizer state), ``history.json`` (per-epoch metrics) and ``info.json`` (preset,
role, parameters, best validation accuracy, config; see :func:`kd.train.finish_stage`). This
module reads and writes that layout without the training code, so export, predict, evaluate
and the sweep load models without importing :mod:`kd.train`; Keras is imported only to save or
load, so the file names are importable without TensorFlow (the command line uses them).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from kd.errors import ArtifactError
from kd.storage import atomic_path, write_text_atomic

MODEL_FILE = "model.keras"
HISTORY_FILE = "history.json"
INFO_FILE = "info.json"


def save_outputs(
    model: Any, out_dir: str | Path, history: dict[str, Any], info: dict[str, Any]
) -> Path:
    """Write ``model.keras``, ``history.json`` and ``info.json`` atomically into ``out_dir``."""
    import keras

    out = Path(out_dir)
    # A clean copy: architecture and weights, no optimizer state or training config. Not
    # keras.models.clone_model: it compiles the clone when the model was compiled, and the
    # saved file then carries the optimizer's slots (2x the size with SGD momentum).
    clean = keras.Model.from_config(model.get_config())
    clean.set_weights(model.get_weights())
    with atomic_path(out / MODEL_FILE) as tmp:
        keras_tmp = tmp.with_suffix(".keras")  # Keras insists on the .keras suffix
        try:
            clean.save(str(keras_tmp))
            keras_tmp.rename(tmp)
        finally:
            keras_tmp.unlink(missing_ok=True)  # a save that failed half-way leaves nothing
    write_text_atomic(out / HISTORY_FILE, json.dumps(history, indent=1))
    write_text_atomic(out / INFO_FILE, json.dumps(info, indent=1))
    return out / MODEL_FILE


def load_model(path: str | Path) -> Any:
    """Load a model saved by a stage (``model.keras`` or the folder holding it) safely.

    ``safe_mode=True``: a file that would deserialise arbitrary code (a Lambda layer) is
    refused. Raises ArtifactError for anything that is not a Keras model.
    """
    p = Path(path)
    if p.is_dir():
        p = p / MODEL_FILE
    if not p.exists():
        raise ArtifactError(
            f"no model at {p}: expected a .keras file or a folder holding {MODEL_FILE}. Fix: "
            "pass the Model artifact written by a training stage"
        )
    try:
        import zipfile

        import keras

        if not zipfile.is_zipfile(p):
            raise ValueError("not a .keras archive (zip)")
        return keras.saving.load_model(str(p), compile=False, safe_mode=True)
    except Exception as exc:
        raise ArtifactError(
            f"{p} is not a loadable Keras model ({type(exc).__name__}: {exc}). Fix: pass a "
            ".keras file saved by train_teacher, distill_student or train_student_scratch"
        ) from exc
