"""Exports of a seed student: SavedModel, TFLite float32/int8 and ONNX; size, accuracy, latency.

    python -m bench.edge [--epochs 15] [--out bench/results/edge.json]

Trains the seed student from scratch on the shipped sample (2,000 training images; the test
images held out by the sample itself: 500 until session 9, 2,000 until session 15, 5,000
since), exports it the way the pipeline's export step does (kd.export.export_serving, then
kd.export.export_tflite calibrated on 200 training images, and kd.export.export_onnx), and
records what ``tflite.json`` and ``onnx.json`` report.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--epochs", type=int, default=15)
    ap.add_argument("--out", default="bench/results/edge.json")
    a = ap.parse_args()
    from kd.config import StudentConfig
    from kd.data import load_cifar10
    from kd.export import export_onnx, export_serving, export_tflite
    from kd.model_folder import load_model
    from kd.train import train_student_scratch

    d = load_cifar10("sample")
    with tempfile.TemporaryDirectory() as tmp:
        train_student_scratch(
            (d.x_train[:2000], d.y_train[:2000]),
            (d.x_train[2000:], d.y_train[2000:]),
            StudentConfig(epochs=a.epochs, batch_size=32, divergence_check_epoch=0),
            f"{tmp}/student",
            log=lambda m: None,
        )
        serving = export_serving(f"{tmp}/student", f"{tmp}/blessed", check_images=d.x_test)
        test = (d.x_test, d.y_test)
        tfl = export_tflite(f"{tmp}/blessed", f"{tmp}/edge", d.x_train[:200], test)
        reference = load_model(f"{tmp}/student")
        onnx = export_onnx(f"{tmp}/blessed", f"{tmp}/edge", test, reference=reference)
    out = {
        "command": " ".join(["python -m bench.edge", *sys.argv[1:]]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "serving": serving,
        "tflite": tfl,
        "onnx": onnx,
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1, default=str))
    print(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
