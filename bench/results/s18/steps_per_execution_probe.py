# ruff: noqa: E731, UP031  (an archived probe: the code that ran, reformatted by ruff)
"""EXPLORATORY PROBE, not a maintained benchmark (session 18; the closing note of session 18).

Does ``keras.Model.compile(steps_per_execution=N)`` speed up the demo's students? Patches
``compile`` to pass N, trains the demo's scratch student (or ``distill``) for E epochs on the
shipped sample through the stage functions, and prints the wall time and a hash of the final
weights (equal hashes: the same training).

    .venv/bin/python bench/results/s18/steps_per_execution_probe.py N E [scratch|distill]
"""

import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, ".")
import keras
import numpy as np

import parameters
from kd import stages
from local_runner.run import PROFILES

spe = int(sys.argv[1])
epochs = int(sys.argv[2])
which = sys.argv[3] if len(sys.argv) > 3 else "scratch"
orig = keras.Model.compile


def compile(self, *a, **k):
    k["steps_per_execution"] = spe
    return orig(self, *a, **k)


keras.Model.compile = compile
with tempfile.TemporaryDirectory() as tmp:
    work = Path(tmp)
    params = parameters.resolve({"student_epochs": epochs}, base=PROFILES["demo"])
    cfg = parameters.stage_configs(params)
    paths = {n: str(work / n) for n in ("train", "validation", "test")}
    meta = stages.split_data(cfg["split"], paths["train"], paths["validation"], paths["test"])
    val = (paths["validation"], meta["validation"]["sha256"])
    times = []
    log = lambda s: times.append((time.perf_counter(), s)) if "epoch" in s else None
    t = time.perf_counter()
    if which == "scratch":
        stages.train_student_scratch(
            (paths["train"], meta["train"]["sha256"]), val, cfg["student"], str(work / "d"), log=log
        )
    else:
        from kd.teacher import shipped_teacher_path

        stages.check_teacher(
            str(shipped_teacher_path()),
            val,
            cfg["distill"].preset,
            str(work / "teacher"),
            log=lambda *_: None,
        )
        stages.distill_student(
            str(work / "teacher"),
            (paths["train"], meta["train"]["sha256"]),
            val,
            cfg["distill"],
            str(work / "d"),
            log=log,
        )
    total = time.perf_counter() - t
    m = keras.saving.load_model(str(work / "d" / "model.keras"))
    h = hashlib.sha256(b"".join(np.asarray(w).tobytes() for w in m.get_weights())).hexdigest()[:12]
    ep = [s for _, s in times if "/%d loss" % epochs in s or " loss " in s]
    print(
        json.dumps(
            {
                "spe": spe,
                "which": which,
                "total_s": round(total, 1),
                "weights": h,
                "last": ep[-1] if ep else None,
            }
        )
    )
