"""The model folder: what a training stage writes and what reading a model needs.

A stage's ``Model`` artifact is a folder holding ``model.keras`` (the model, preprocessing
included, no optimizer state), ``history.json`` (per-epoch metrics) and ``info.json`` (preset,
role, parameters, best validation accuracy, config; see :func:`kd.train.finish_stage`) and
``tensorboard/`` (the same curves as TensorBoard event files, :func:`write_tensorboard`). This
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
TENSORBOARD_DIR = "tensorboard"


def save_outputs(
    model: Any, out_dir: str | Path, history: dict[str, Any], info: dict[str, Any]
) -> Path:
    """Write ``model.keras``, ``history.json``, ``info.json`` and ``tensorboard/`` atomically
    into ``out_dir``."""
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
    write_tensorboard(history, out / TENSORBOARD_DIR)
    return out / MODEL_FILE


def write_tensorboard(history: dict[str, Any], logdir: str | Path) -> Path | None:
    """The training curves of ``history`` as TensorBoard event files in ``logdir`` (atomic).

    One scalar series per numeric key but ``epoch``, at step = the epoch (1-based): ``loss``,
    ``accuracy``, ``val_loss``, ``val_accuracy``, ``lr``, ``epoch_time_s`` (s), and for the
    distiller its parts ``student_loss`` (the hard loss) and ``distillation_loss`` (the soft
    term). Written from the history at the end of training (so a resumed run's file holds
    every epoch once), with ``tf.summary``, the writer TensorBoard and Vertex AI TensorBoard
    read; where TensorFlow is not installed (a JAX-only machine) nothing is written and None
    returned. View with ``tensorboard --logdir DIR`` (``pip install tensorboard``).

    Each value goes through ``tf.summary.write`` with the scalar plugin's metadata, which is
    what ``tf.summary.scalar`` writes: that function lives in the ``tensorboard`` package,
    which TensorFlow 2.21 no longer installs, and a viewer is not needed to write the files.
    """
    try:
        import tensorflow as tf
    except ImportError:
        return None
    epochs = [int(e) for e in history.get("epoch", [])]
    series = {
        k: v
        for k, v in history.items()
        if k != "epoch"
        and isinstance(v, list)
        and len(v) == len(epochs)
        and all(isinstance(x, int | float) for x in v)
    }
    final = Path(logdir)
    with atomic_path(final) as tmp:
        tmp.mkdir()
        scalar = tf.compat.v1.SummaryMetadata(
            plugin_data=tf.compat.v1.SummaryMetadata.PluginData(plugin_name="scalars")
        )
        writer = tf.summary.create_file_writer(str(tmp))
        with writer.as_default():
            for key, values in sorted(series.items()):
                for epoch, value in zip(epochs, values, strict=True):
                    tf.summary.write(
                        key, tf.constant(float(value), tf.float32), step=epoch, metadata=scalar
                    )
        writer.close()
    return final


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
