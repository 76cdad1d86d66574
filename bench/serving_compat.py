"""Does the blessed SavedModel load in an older TensorFlow (a prebuilt serving image's)?

Exports a seed student (:func:`kd.export.export_serving`, both layouts) with this project's
TensorFlow, then loads each layout with ``--python``, an interpreter that has the older
TensorFlow (e.g. a venv with ``tensorflow-cpu==2.15.1``, the version of Vertex AI's
``tf2-cpu.2-15`` prediction image), calls ``serving_default`` on 64 images and compares the
logits with this TensorFlow's. This checks the TensorFlow runtime's loader and kernels, not
the serving binary of the image itself.

    python3 -m venv /tmp/tf215 && /tmp/tf215/bin/pip install tensorflow-cpu==2.15.1
    python -m bench.serving_compat --python /tmp/tf215/bin/python \
        --out bench/results/serving-compat-tf2.15.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import subprocess
import sys
import tempfile
from pathlib import Path

OTHER = """
import json, sys
import numpy as np, tensorflow as tf
x = np.load(sys.argv[1])
out = {"tensorflow": tf.__version__, "layouts": {}}
for layout in sys.argv[3:]:
    sig = tf.saved_model.load(layout).signatures["serving_default"]
    np.save(layout + ".logits.npy", list(sig(image=tf.constant(x)).values())[0].numpy())
    out["layouts"][layout] = "loaded"
open(sys.argv[2], "w").write(json.dumps(out))
"""


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--python", required=True, help="an interpreter with the older TensorFlow")
    ap.add_argument("--out", required=True, help="result JSON")
    a = ap.parse_args(argv)

    import numpy as np
    import tensorflow as tf

    from kd.export import export_serving, saved_model_logits, serving_layouts
    from kd.models import build_model

    with tempfile.TemporaryDirectory(prefix="kd-serving-compat-") as tmp:
        work = Path(tmp)
        build_model("seed", "student", seed=0).save(work / "student.keras")
        export_serving(work / "student.keras", work / "blessed")
        layouts = {k: str(v) for k, v in serving_layouts(work / "blessed").items()}
        x = np.random.default_rng(0).integers(0, 256, (64, 32, 32, 3)).astype(np.float32)
        np.save(work / "x.npy", x)
        report = work / "other.json"
        proc = subprocess.run(
            [a.python, "-c", OTHER, str(work / "x.npy"), str(report), *layouts.values()],
            capture_output=True,
            text=True,
        )
        result = {
            "command": " ".join(["python -m bench.serving_compat", *(argv or sys.argv[1:])]),
            "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
            "exported_with": f"tensorflow {tf.__version__}",
            "returncode": proc.returncode,
        }
        if proc.returncode == 0:
            other = json.loads(report.read_text())
            result["loaded_with"] = f"tensorflow {other['tensorflow']}"
            result["layouts"] = {}
            for name, path in layouts.items():
                got = np.load(path + ".logits.npy")
                ref = saved_model_logits(path, x)
                result["layouts"][name] = {
                    "loaded": True,
                    "max_abs_logit_diff": float(np.abs(got - ref).max()),
                    "same_top1": float((got.argmax(1) == ref.argmax(1)).mean()),
                }
        else:
            result["stderr_tail"] = proc.stderr[-2000:]
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result.get("layouts", result), indent=1))
    return 0 if proc.returncode == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
