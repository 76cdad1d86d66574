"""Serving exports of a trained model.

- ``saved_model/``: a TensorFlow SavedModel with a ``serving_default`` signature taking
  float32 images (N, 32, 32, 3) in 0-255 and returning the 10 logits (what Vertex AI
  Prediction and TF Serving load). Needs the TensorFlow backend.
- ``model.keras``: the Keras model file itself (load with ``safe_mode=True``).
- ``export.json``: what was exported, sizes in bytes, and the check that the SavedModel's
  signature reproduces the Keras model's logits on the given images.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from kd.errors import ArtifactError
from kd.storage import atomic_path, write_text_atomic

SAVED_MODEL_DIR = "saved_model"
SIGNATURE = "serving_default"


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size


def load_saved_model_signature(path: str | Path) -> Any:
    """The ``serving_default`` function of a SavedModel folder (TensorFlow)."""
    import tensorflow as tf

    loaded = tf.saved_model.load(str(path))
    return loaded.signatures[SIGNATURE]


def saved_model_logits(path: str | Path, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits from the exported SavedModel's serving signature, in batches."""
    import tensorflow as tf

    fn = load_saved_model_signature(path)
    (input_name,) = fn.structured_input_signature[1].keys()
    outs = []
    for i in range(0, len(x), batch_size):
        batch = tf.constant(np.asarray(x[i : i + batch_size], dtype=np.float32))
        res = fn(**{input_name: batch})
        outs.append(np.asarray(next(iter(res.values()))))
    return np.concatenate(outs) if outs else np.zeros((0, 10), np.float32)


def export_serving(
    model_dir: str | Path, out_dir: str | Path, check_images: np.ndarray | None = None
) -> dict[str, Any]:
    """Export the model in ``model_dir`` for serving into ``out_dir``.

    Args:
        model_dir: a model folder written by a training stage (or a ``.keras`` file).
        out_dir: the export folder (``saved_model/``, ``model.keras``, ``export.json``).
        check_images: images to compare the SavedModel's logits with the Keras model's.

    Returns:
        The contents of ``export.json``.
    """
    import keras

    from kd.train import MODEL_FILE, load_model

    if keras.backend.backend() != "tensorflow":
        raise ArtifactError(
            f"the SavedModel export needs the TensorFlow backend, not {keras.backend.backend()}. "
            "Fix: run with KERAS_BACKEND=tensorflow"
        )
    src = Path(model_dir)
    keras_file = src / MODEL_FILE if src.is_dir() else src
    model = load_model(keras_file)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    with atomic_path(out / SAVED_MODEL_DIR) as tmp:
        model.export(str(tmp), format="tf_saved_model", verbose=False)
    with atomic_path(out / MODEL_FILE) as tmp:
        shutil.copyfile(keras_file, tmp)
    info: dict[str, Any] = {
        "saved_model": SAVED_MODEL_DIR,
        "signature": SIGNATURE,
        "input": "float32 (N, 32, 32, 3), RGB 0-255",
        "output": "float32 (N, 10) logits",
        "saved_model_bytes": _size(out / SAVED_MODEL_DIR),
        "keras_bytes": _size(out / MODEL_FILE),
    }
    if check_images is not None and len(check_images):
        ref = np.asarray(model.predict(check_images.astype(np.float32), verbose=0))
        got = saved_model_logits(out / SAVED_MODEL_DIR, check_images)
        info["check_images"] = int(len(check_images))
        info["max_abs_logit_diff"] = float(np.abs(ref - got).max())
        info["same_predictions"] = bool((ref.argmax(1) == got.argmax(1)).all())
    write_text_atomic(out / "export.json", json.dumps(info, indent=1))
    return info
