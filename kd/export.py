"""Serving exports of a trained model.

A TensorFlow SavedModel with a ``serving_default`` signature taking float32 images
(N, 32, 32, 3) in 0-255 and returning the 10 logits, in the two layouts servers load (needs
the TensorFlow backend):

- **at the folder's root** (``saved_model.pb``, ``variables/``, ...): what Vertex AI's
  prebuilt TensorFlow serving containers take as the artifact URI of a model upload;
- **``serving/NAME/1/``**: TF Serving's and KServe's layout, a model base path
  (``serving/NAME``) holding numbered versions: ``tensorflow_model_server
  --model_name=NAME --model_base_path=.../serving/NAME`` or a KServe ``InferenceService``
  with ``storageUri`` there. ``NAME`` is :data:`SERVING_NAME`.

Beside them:

- ``model.keras``: the Keras model file itself (load with ``safe_mode=True``).
- ``export.json``: what was exported, sizes in bytes, and the check that the SavedModel's
  signature reproduces the Keras model's logits on the given images.

Edge exports (:func:`export_tflite`), converted from the SavedModel:

- ``model_float32.tflite``: float32 in, float32 logits out.
- ``model_int8.tflite``: full-integer post-training quantization (int8 weights and
  activations); **uint8 input** (the raw RGB pixels, scale 1, zero point 0) and **int8 output**
  (quantized logits: ``logits = scale * (q - zero_point)``).
- ``tflite.json``: per format the size in bytes, test accuracy, accuracy drop versus the Keras
  model in percentage points, agreement with Keras and batch-1 latency (p50/p95 ms).

:func:`tflite_logits` runs either file and returns float32 logits (it quantizes the input and
dequantizes the output of the int8 model), which is what ``kd.predict`` uses for ``.tflite``.

ONNX (:func:`export_onnx`), converted from the SavedModel by ``tf2onnx``:

- ``model.onnx``: float32 (N, 32, 32, 3) 0-255 images in (input ``image``), float32 (N, 10)
  logits out, for onnxruntime and the runtimes outside TensorFlow.
- ``onnx.json``: as ``tflite.json``: size, test accuracy, drop and agreement versus Keras,
  batch-1 latency under onnxruntime.

:func:`onnx_logits` runs it (``kd.predict`` uses it for ``.onnx``).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from kd.errors import ArtifactError
from kd.storage import atomic_path, write_text_atomic

SIGNATURE = "serving_default"
#: The model name of the TF Serving / KServe layout ``serving/NAME/1/``.
SERVING_NAME = "kd_student"
SERVING_VERSION = 1


def serving_layouts(out_dir: str | Path) -> dict[str, Path]:
    """Where :func:`export_serving` writes each SavedModel layout under ``out_dir``:
    ``vertex`` (the folder itself) and ``tf_serving`` (``serving/NAME/1``)."""
    out = Path(out_dir)
    return {"vertex": out, "tf_serving": out / "serving" / SERVING_NAME / str(SERVING_VERSION)}


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
        out_dir: the export folder: the SavedModel at its root and in ``serving/NAME/1/``,
            ``model.keras``, ``export.json``.
        check_images: images to compare the SavedModel's logits with the Keras model's.

    Returns:
        The contents of ``export.json``.
    """
    import keras

    from kd.model_folder import MODEL_FILE, load_model

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
    layouts = serving_layouts(out)
    # Exported once, into the versioned layout; its entries then copied to the root.
    with atomic_path(layouts["tf_serving"]) as tmp:
        model.export(str(tmp), format="tf_saved_model", verbose=False)
    for entry in sorted(layouts["tf_serving"].iterdir()):
        with atomic_path(out / entry.name) as tmp:
            if entry.is_dir():
                shutil.copytree(entry, tmp)
            else:
                shutil.copyfile(entry, tmp)
    with atomic_path(out / MODEL_FILE) as tmp:
        shutil.copyfile(keras_file, tmp)
    versioned = layouts["tf_serving"].relative_to(out).as_posix()
    info: dict[str, Any] = {
        "saved_model": {"vertex": ".", "tf_serving": versioned},
        "serving_name": SERVING_NAME,
        "signature": SIGNATURE,
        "input": "float32 (N, 32, 32, 3), RGB 0-255",
        "output": "float32 (N, 10) logits",
        "saved_model_bytes": _size(layouts["tf_serving"]),
        "keras_bytes": _size(out / MODEL_FILE),
    }
    if check_images is not None and len(check_images):
        ref = np.asarray(model.predict(check_images.astype(np.float32), verbose=0))
        diffs, same = [], True
        for path in layouts.values():  # each layout, loaded as its server loads it
            got = saved_model_logits(path, check_images)
            diffs.append(float(np.abs(ref - got).max()))
            same = same and bool((ref.argmax(1) == got.argmax(1)).all())
        info["check_images"] = int(len(check_images))
        info["max_abs_logit_diff"] = max(diffs)
        info["same_predictions"] = same
    write_text_atomic(out / "export.json", json.dumps(info, indent=1))
    return info


# --------------------------------------------------------------------------------------------
# TFLite (edge) exports
# --------------------------------------------------------------------------------------------

TFLITE_FLOAT32 = "model_float32.tflite"
TFLITE_INT8 = "model_int8.tflite"
TFLITE_JSON = "tflite.json"


def _interpreter_class() -> tuple[Any, str]:
    """The TFLite interpreter class and its name: LiteRT's (``ai_edge_litert``) when installed,
    else TensorFlow's ``tf.lite.Interpreter`` (deprecated in favour of LiteRT, still shipped and
    working in TF 2.21; its deprecation warning is silenced)."""
    try:
        from ai_edge_litert.interpreter import Interpreter  # type: ignore[import-not-found]

        return Interpreter, "ai_edge_litert"
    except ImportError:
        import tensorflow as tf

        return tf.lite.Interpreter, f"tf.lite.Interpreter (tensorflow {tf.__version__})"


def load_tflite(path: str | Path, num_threads: int | None = None) -> Any:
    """A ready TFLite interpreter for the model file at ``path``.

    Args:
        path: a ``.tflite`` file.
        num_threads: CPU threads of the interpreter (None: the runtime's default).

    Raises:
        ArtifactError: the file is missing or not a TFLite flatbuffer, or the model does not
            take one (N, 32, 32, 3) image input and return (N, 10) outputs.
    """
    import warnings

    p = Path(path)
    if not p.is_file():
        raise ArtifactError(
            f"no TFLite model at {p}. Fix: pass a .tflite file written by "
            "kd.export.export_tflite (model_float32.tflite or model_int8.tflite)"
        )
    cls, _ = _interpreter_class()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            interp = cls(model_path=str(p), num_threads=num_threads)
        interp.allocate_tensors()
    except Exception as exc:
        raise ArtifactError(
            f"{p} is not a loadable TFLite model ({type(exc).__name__}: {exc}). Fix: pass a "
            ".tflite file written by kd.export.export_tflite"
        ) from exc
    ins, outs = interp.get_input_details(), interp.get_output_details()
    in_shape = tuple(int(d) for d in ins[0]["shape"][1:]) if len(ins) == 1 else None
    out_shape = tuple(int(d) for d in outs[0]["shape"][1:]) if len(outs) == 1 else None
    if in_shape != (32, 32, 3) or out_shape != (10,):
        raise ArtifactError(
            f"TFLite model {p} takes inputs {[tuple(d['shape']) for d in ins]} and returns "
            f"{[tuple(d['shape']) for d in outs]}; expected one (N, 32, 32, 3) image input and "
            "(N, 10) logits. Fix: pass a CIFAR-10 model exported by kd.export.export_tflite"
        )
    return interp


def _quantize_input(x: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """Images (0-255) as the interpreter's input tensor: float32 as is, or quantized with the
    input's scale and zero point (``q = round(x / scale) + zero_point``, clipped)."""
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32:
        return np.asarray(x, dtype=np.float32)
    scale, zero = detail["quantization"]
    xf = np.asarray(x, dtype=np.float32)
    if scale == 1.0 and zero == 0 and dtype == np.uint8 and np.asarray(x).dtype == np.uint8:
        return np.asarray(x)  # raw pixels are the quantized input exactly
    info = np.iinfo(dtype)
    q = np.round(xf / (scale or 1.0)) + zero
    return np.clip(q, info.min, info.max).astype(dtype)


def _dequantize_output(q: np.ndarray, detail: dict[str, Any]) -> np.ndarray:
    """The output tensor as float32 logits (``scale * (q - zero_point)`` when quantized)."""
    scale, zero = detail["quantization"]
    if np.dtype(detail["dtype"]) == np.float32 or not scale:
        return np.asarray(q, dtype=np.float32)
    return (scale * (q.astype(np.float32) - zero)).astype(np.float32)


def tflite_logits(path: str | Path | Any, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Logits of a TFLite model on images, handling quantized inputs and outputs.

    A float32 model gets the images as float32 0-255. A full-integer model (``model_int8``:
    uint8 input, int8 output) gets the images quantized with its input's scale and zero point
    (1 and 0 for our exports: the raw pixels) and its int8 output is dequantized with the
    output's scale and zero point, so both return comparable float32 logits.

    Args:
        path: a ``.tflite`` file, or an interpreter from :func:`load_tflite`.
        x: images (N, 32, 32, 3), RGB 0-255 (uint8 or float).
        batch_size: images per interpreter call (the input is resized to it).

    Returns:
        float32 (N, 10) logits.

    Raises:
        DataError: ``x`` is not a non-empty (N, 32, 32, 3) batch.
        ArtifactError: the file is not a usable TFLite model.
    """
    from kd.errors import DataError

    x = np.asarray(x)
    if x.ndim != 4 or x.shape[1:] != (32, 32, 3) or len(x) == 0:
        raise DataError(
            f"images must have shape (N, 32, 32, 3) with N >= 1, got {x.shape}. Fix: decode "
            "and resize images with kd.predict.load_images"
        )
    interp: Any = path if hasattr(path, "get_input_details") else load_tflite(path)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
    results = []
    current = None
    for i in range(0, len(x), batch_size):
        batch = _quantize_input(x[i : i + batch_size], inp)
        if current != len(batch):
            interp.resize_tensor_input(inp["index"], [len(batch), 32, 32, 3])
            interp.allocate_tensors()
            inp, out = interp.get_input_details()[0], interp.get_output_details()[0]
            current = len(batch)
        interp.set_tensor(inp["index"], batch)
        interp.invoke()
        results.append(_dequantize_output(interp.get_tensor(out["index"]), out))
    return np.concatenate(results)


def _latency_ms(call: Any, singles: list[np.ndarray], runs: int, warmup: int) -> dict[str, float]:
    """Batch-1 latency (ms): ``warmup`` untimed calls of ``call``, then ``runs`` timed ones
    (``time.perf_counter``), cycling through ``singles``; p50 and p95. One loop for every
    runtime, so their figures are measured alike."""
    import time

    times = []
    for i in range(warmup + runs):
        t0 = time.perf_counter()
        call(singles[i % len(singles)])
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1000.0)
    return {
        "latency_p50_ms": float(np.percentile(times, 50)),
        "latency_p95_ms": float(np.percentile(times, 95)),
    }


def _singles(x: np.ndarray, prepare: Any = None) -> list[np.ndarray]:
    """Up to 16 batch-1 inputs from ``x`` (float32, or as ``prepare`` makes them)."""
    make = prepare or (lambda b: np.asarray(b, dtype=np.float32))
    return [make(x[i : i + 1]) for i in range(min(len(x), 16))]


def _tflite_latency_ms(path: Path, x: np.ndarray, runs: int, num_threads: int) -> dict[str, float]:
    """Batch-1 latency of a TFLite model (set_tensor + invoke + get_tensor), 5 warm-up calls."""
    interp = load_tflite(path, num_threads=num_threads)
    inp, out = interp.get_input_details()[0], interp.get_output_details()[0]

    def call(single: np.ndarray) -> None:
        interp.set_tensor(inp["index"], single)
        interp.invoke()
        interp.get_tensor(out["index"])

    return _latency_ms(call, _singles(x, lambda b: _quantize_input(b, inp)), runs, warmup=5)


def _keras_latency_ms(model: Any, x: np.ndarray, runs: int) -> float:
    """Batch-1 p50 latency (ms) of ``model.predict_on_batch``, 3 warm-up calls."""
    return _latency_ms(model.predict_on_batch, _singles(x), runs, warmup=3)["latency_p50_ms"]


def _check_images(x: Any, what: str) -> np.ndarray:
    from kd.errors import DataError

    arr = np.asarray(x)
    if arr.ndim != 4 or arr.shape[1:] != (32, 32, 3) or len(arr) == 0:
        raise DataError(
            f"{what} must be a non-empty (N, 32, 32, 3) array of RGB 0-255 images, got shape "
            f"{arr.shape}. Fix: pass e.g. x_train[:200] from kd.data.load_cifar10"
        )
    return arr


def export_tflite(
    model_dir: str | Path,
    out_dir: str | Path,
    calibration_images: np.ndarray,
    test: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    latency_runs: int = 50,
    num_threads: int = 1,
) -> dict[str, Any]:
    """Export a trained model as TFLite float32 and full-integer int8 for edge devices.

    Both are converted with ``tf.lite.TFLiteConverter.from_saved_model`` from the model's
    SavedModel (``<model_dir>/saved_model`` when ``model_dir`` is a serving export, else one
    exported from ``model.keras`` into a temporary folder); the preprocessing layer is inside
    the model, so both take raw pixels.

    - ``model_float32.tflite``: float32 weights and activations; input float32
      (N, 32, 32, 3) 0-255, output float32 (N, 10) logits.
    - ``model_int8.tflite``: post-training full-integer quantization (int8 weights and
      activations, every op ``TFLITE_BUILTINS_INT8``, so it runs on integer-only
      accelerators), calibrated on ``calibration_images``. **Integer I/O**: input uint8
      (N, 32, 32, 3), the raw RGB pixels (the calibration's 0-255 range gives input scale 1,
      zero point 0; ``tflite.json`` records them and ``input_is_raw_pixels``); output int8
      quantized logits, ``logits = scale * (q - zero_point)`` (scale and zero point in
      ``tflite.json``). :func:`tflite_logits` and ``kd.predict`` handle both conversions.

    Args:
        model_dir: a model folder (``model.keras``), a ``.keras`` file, or a serving export
            folder (:func:`export_serving`: its root SavedModel is converted).
        out_dir: where ``model_float32.tflite``, ``model_int8.tflite`` and ``tflite.json`` are
            written (each atomically).
        calibration_images: the representative dataset, uint8 (N, 32, 32, 3) RGB 0-255 from
            the training split (e.g. 200 images; every image is used once).
        test: optional (x, y) test images and labels: accuracy of the Keras model and of each
            TFLite model, the drop in percentage points, and the agreement with Keras.
        latency_runs: timed batch-1 invocations for the latency (p50/p95 in milliseconds).
        num_threads: interpreter CPU threads for the latency (1: like a small edge CPU, and
            stable across machines).

    Returns:
        The contents of ``tflite.json``: per format ``file``, ``size_bytes``, ``input``,
        ``output``, ``latency_p50_ms``, ``latency_p95_ms`` and with ``test`` the
        ``accuracy``, ``accuracy_drop_points`` (Keras minus TFLite, in points) and
        ``agreement_with_keras`` (fraction of same top-1); plus ``keras`` (accuracy, batch-1
        p50 latency, size), ``calibration_images``, ``runtime`` and ``machine``.

    Raises:
        ArtifactError: the model cannot be loaded or converted.
        DataError: calibration or test images of the wrong shape.
    """
    import platform
    import tempfile
    import warnings

    import tensorflow as tf

    from kd.evaluate import predict_logits
    from kd.model_folder import MODEL_FILE, load_model

    cal = _check_images(calibration_images, "calibration_images")
    x_test = y_test = None
    if test is not None:
        x_test = _check_images(test[0], "test images")
        y_test = np.asarray(test[1]).reshape(-1)
        if len(y_test) != len(x_test):
            from kd.errors import DataError

            raise DataError(
                f"test has {len(x_test)} images but {len(y_test)} labels. Fix: pass (x, y) of "
                "the same length"
            )
    src = Path(model_dir)
    keras_file = src / MODEL_FILE if src.is_dir() else src
    model = load_model(keras_file)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def representative() -> Any:
        for i in range(len(cal)):
            yield [cal[i : i + 1].astype(np.float32)]

    blobs: dict[str, bytes] = {}
    with tempfile.TemporaryDirectory(prefix="kd-tflite-") as tmp:
        saved = src if src.is_dir() else None
        if saved is None or not (saved / "saved_model.pb").is_file():
            saved = Path(tmp) / "saved_model"
            model.export(str(saved), format="tf_saved_model", verbose=False)
        for kind in ("float32", "int8"):
            try:
                conv = tf.lite.TFLiteConverter.from_saved_model(str(saved))
                if kind == "int8":
                    conv.optimizations = [tf.lite.Optimize.DEFAULT]
                    conv.representative_dataset = representative
                    conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
                    conv.inference_input_type = tf.uint8
                    conv.inference_output_type = tf.int8
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    blobs[kind] = conv.convert()
            except Exception as exc:
                raise ArtifactError(
                    f"TFLite {kind} conversion of {keras_file} failed ({type(exc).__name__}: "
                    f"{exc}). Fix: export a model built by kd.models (every layer must have a "
                    "TFLite builtin op, int8 ones for the int8 export)"
                ) from exc

    files = {"float32": TFLITE_FLOAT32, "int8": TFLITE_INT8}
    for kind, name in files.items():
        with atomic_path(out / name) as tmp_file:
            tmp_file.write_bytes(blobs[kind])

    ref_logits = None
    keras_info: dict[str, Any] = {
        "file": str(keras_file),
        "size_bytes": _size(keras_file),
        "latency_p50_ms": _keras_latency_ms(
            model, x_test if x_test is not None else cal, latency_runs
        ),
    }
    if x_test is not None:
        ref_logits = predict_logits(model, x_test)
        keras_info["accuracy"] = float((ref_logits.argmax(1) == y_test).mean())
    _, runtime = _interpreter_class()
    info: dict[str, Any] = {
        "keras": keras_info,
        "calibration_images": int(len(cal)),
        "runtime": runtime,
        "num_threads": int(num_threads),
        "latency_runs": int(latency_runs),
        "machine": {
            "processor": platform.processor() or platform.machine(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
        },
    }
    for kind, name in files.items():
        path = out / name
        interp = load_tflite(path)
        inp, outp = interp.get_input_details()[0], interp.get_output_details()[0]
        entry: dict[str, Any] = {
            "file": name,
            "size_bytes": _size(path),
            "input": {
                "dtype": np.dtype(inp["dtype"]).name,
                "shape": "(N, 32, 32, 3)",
                "scale": float(inp["quantization"][0]),
                "zero_point": int(inp["quantization"][1]),
            },
            "output": {
                "dtype": np.dtype(outp["dtype"]).name,
                "shape": "(N, 10) logits",
                "scale": float(outp["quantization"][0]),
                "zero_point": int(outp["quantization"][1]),
            },
        }
        if kind == "int8":
            entry["input_is_raw_pixels"] = bool(
                entry["input"]["dtype"] == "uint8"
                and entry["input"]["scale"] == 1.0
                and entry["input"]["zero_point"] == 0
            )
        entry.update(
            _tflite_latency_ms(
                path, x_test if x_test is not None else cal, latency_runs, num_threads
            )
        )
        if x_test is not None and ref_logits is not None:
            got = tflite_logits(interp, x_test)
            acc = float((got.argmax(1) == y_test).mean())
            entry["accuracy"] = acc
            entry["accuracy_drop_points"] = (keras_info["accuracy"] - acc) * 100.0
            entry["agreement_with_keras"] = float((got.argmax(1) == ref_logits.argmax(1)).mean())
            entry["max_abs_logit_diff"] = float(np.abs(got - ref_logits).max())
        info[kind] = entry
    info["int8_vs_float32_size_ratio"] = info["float32"]["size_bytes"] / info["int8"]["size_bytes"]
    write_text_atomic(out / TFLITE_JSON, json.dumps(info, indent=1))
    return info


ONNX_FILE = "model.onnx"
ONNX_JSON = "onnx.json"
#: ONNX opset of the export: 17 is read by onnxruntime >= 1.13 and by TensorRT 8.6+.
ONNX_OPSET = 17


def onnx_session(path: str | Path, num_threads: int | None = None) -> Any:
    """An onnxruntime CPU session of ``path`` (``num_threads``: intra-op threads; None: its
    default); a file that is not an ONNX model of (N, 32, 32, 3) images is an ArtifactError."""
    import onnxruntime as ort

    p = Path(path)
    if not p.is_file():
        raise ArtifactError(
            f"no ONNX model at {p}. Fix: pass the model.onnx written by kd.export.export_onnx"
        )
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if num_threads:
        opts.intra_op_num_threads = opts.inter_op_num_threads = int(num_threads)
    try:
        sess = ort.InferenceSession(str(p), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ArtifactError(
            f"{p} is not an ONNX model onnxruntime can load ({type(exc).__name__}: {exc}). "
            "Fix: pass the model.onnx written by kd.export.export_onnx"
        ) from exc
    inputs, outputs = sess.get_inputs(), sess.get_outputs()
    if (
        len(inputs) != 1
        or list(inputs[0].shape[1:]) != [32, 32, 3]
        or inputs[0].type != "tensor(float)"
        or len(outputs) != 1
        or list(outputs[0].shape[1:]) != [10]
    ):
        raise ArtifactError(
            f"{p} takes {[(i.name, i.type, i.shape) for i in inputs]} and returns "
            f"{[(o.name, o.shape) for o in outputs]}, not float (N, 32, 32, 3) images to "
            "(N, 10) logits. Fix: pass a CIFAR-10 model exported by kd.export.export_onnx"
        )
    return sess


def onnx_logits(path: str | Path | Any, x: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Float32 (N, 10) logits of the ONNX model (a path or an :func:`onnx_session`) on uint8
    or float (N, 32, 32, 3) images in 0-255."""
    sess: Any = path if hasattr(path, "get_inputs") else onnx_session(path)
    name = sess.get_inputs()[0].name
    x = _check_images(x, "images").astype(np.float32, copy=False)
    parts = [sess.run(None, {name: x[i : i + batch_size]})[0] for i in range(0, len(x), batch_size)]
    return np.concatenate(parts).astype(np.float32, copy=False)


def _onnx_latency_ms(sess: Any, x: np.ndarray, runs: int) -> dict[str, float]:
    """Batch-1 latency of an onnxruntime session's ``run``, 5 warm-up calls."""
    name = sess.get_inputs()[0].name
    return _latency_ms(lambda single: sess.run(None, {name: single}), _singles(x), runs, 5)


def export_onnx(
    saved_model_dir: str | Path,
    out_dir: str | Path,
    test: tuple[np.ndarray, np.ndarray] | None = None,
    *,
    reference: Any = None,
    latency_runs: int = 50,
    num_threads: int = 1,
) -> dict[str, Any]:
    """Convert a serving SavedModel (:func:`export_serving`'s root) to ``model.onnx`` and check
    it with onnxruntime.

    Converted by ``tf2onnx`` from the SavedModel's ``serving_default`` signature
    (``tf_loader.from_saved_model``, then ``convert.from_graph_def``, what its
    ``--saved-model`` command line does), at opset :data:`ONNX_OPSET`. Not Keras 3's
    ``model.export(format="onnx")``: with the TensorFlow backend it leaves the
    ``Normalization`` layer's mean and variance as extra graph inputs, so the file does not
    run on images alone (tf2onnx 1.17, Keras 3.15; measured), and tf2onnx's ``from_keras``
    does not take Keras 3 models.

    Args:
        saved_model_dir: a folder with ``saved_model.pb`` at its root.
        out_dir: where ``model.onnx`` and ``onnx.json`` are written (each atomically).
        test: optional (x, y) test images and labels: accuracy, drop versus ``reference``
            (points), top-1 agreement and the largest logit difference.
        reference: the Keras model the drop is measured against (needed with ``test``).
        latency_runs: timed batch-1 runs for p50/p95 latency (ms).
        num_threads: onnxruntime threads for the latency (1, as for TFLite).

    Returns:
        The contents of ``onnx.json``: ``file``, ``size_bytes``, ``opset``, ``input``,
        ``output``, ``latency_p50_ms``, ``latency_p95_ms``, ``runtime``, and with ``test``
        ``accuracy``, ``keras_accuracy``, ``accuracy_drop_points``, ``agreement_with_keras``,
        ``max_abs_logit_diff``.

    Raises:
        ArtifactError: no SavedModel there, or the conversion failed.
    """
    import logging
    import tempfile

    src = Path(saved_model_dir)
    if not (src / "saved_model.pb").is_file():
        raise ArtifactError(
            f"no SavedModel at {src} (saved_model.pb missing). Fix: pass the folder written by "
            "kd.export.export_serving"
        )
    import tf2onnx
    from tf2onnx import tf_loader

    logging.getLogger("tf2onnx").setLevel(logging.ERROR)
    out = Path(out_dir)
    with tempfile.TemporaryDirectory(prefix="kd-onnx-") as tmp:
        tmp_file = Path(tmp) / ONNX_FILE
        try:
            graph_def, inputs, outputs, renames = tf_loader.from_saved_model(
                str(src), None, None, signatures=[SIGNATURE], return_tensors_to_rename=True
            )
            tf2onnx.convert.from_graph_def(
                graph_def,
                input_names=inputs,
                output_names=outputs,
                opset=ONNX_OPSET,
                tensors_to_rename=renames,
                output_path=str(tmp_file),
            )
        except Exception as exc:
            raise ArtifactError(
                f"ONNX conversion of {src} failed ({type(exc).__name__}: {exc}). Fix: export "
                f"a model built by kd.models (every op needs an ONNX opset {ONNX_OPSET} "
                "equivalent)"
            ) from exc
        # Checked from the temporary file: model.onnx and onnx.json are written together,
        # at the end, or not at all.
        info = _check_onnx(tmp_file, test, reference, latency_runs, num_threads)
        out.mkdir(parents=True, exist_ok=True)
        with atomic_path(out / ONNX_FILE) as tmp_path:
            shutil.copyfile(tmp_file, tmp_path)
    write_text_atomic(out / ONNX_JSON, json.dumps(info, indent=1))
    return info


def _check_onnx(
    path: Path,
    test: tuple[np.ndarray, np.ndarray] | None,
    reference: Any,
    latency_runs: int,
    num_threads: int,
) -> dict[str, Any]:
    """What ``onnx.json`` records of the ONNX file at ``path`` (see :func:`export_onnx`)."""
    import onnxruntime
    import tf2onnx

    sess = onnx_session(path)
    inp, outp = sess.get_inputs()[0], sess.get_outputs()[0]
    info: dict[str, Any] = {
        "file": ONNX_FILE,
        "size_bytes": _size(path),
        "opset": ONNX_OPSET,
        "input": {"name": inp.name, "dtype": inp.type, "shape": "(N, 32, 32, 3) 0-255"},
        "output": {"name": outp.name, "dtype": outp.type, "shape": "(N, 10) logits"},
        "runtime": f"onnxruntime {onnxruntime.__version__}, tf2onnx {tf2onnx.__version__}",
        "num_threads": int(num_threads),
        "latency_runs": int(latency_runs),
    }
    if test is not None:
        x = _check_images(test[0], "test images")
        y = np.asarray(test[1]).reshape(-1)
        if reference is None:
            raise ArtifactError("export_onnx with test needs the Keras reference model")
        from kd.evaluate import predict_logits

        ref = predict_logits(reference, x)
        got = onnx_logits(sess, x)
        keras_acc = float((ref.argmax(1) == y).mean())
        acc = float((got.argmax(1) == y).mean())
        info.update(
            accuracy=acc,
            keras_accuracy=keras_acc,
            accuracy_drop_points=(keras_acc - acc) * 100.0,
            agreement_with_keras=float((got.argmax(1) == ref.argmax(1)).mean()),
            max_abs_logit_diff=float(np.abs(got - ref).max()),
        )
        lat_x = x
    else:
        lat_x = np.zeros((1, 32, 32, 3), np.float32)
    info.update(_onnx_latency_ms(onnx_session(path, num_threads=num_threads), lat_x, latency_runs))
    return info
