# ruff: noqa: E402
"""EXPLORATORY PROBE, not a maintained benchmark (session 18; docs/RESULTS.md section 17).

Would a larger sample let the demo show a larger KD gain? The demo profile (40 epochs, 2 + 6
teacher views, the scratch student at its own 0.025), both students trained on ``n`` labeled
images drawn per seed from the shipped teacher's training split (``bench.label_budget``'s
``student_splits``: stratified, the students' validation split 1,000 of the teacher's held-out
images), through the product's stage functions; each scored on 4,000 of the teacher's 5,000
held-out images (official *training* images no model trained on; never the test set).
As run, 788 of those 4,000 are also the students' validation images (only watched: no early
stopping); the comment at ``rest`` below misread ``student_splits``, which sorts before it
takes the first 1,000 (found in review, kept as run; docs/RESULTS.md section 17).
One JSON line per (n, student, seed) to --log; finished lines are skipped on a rerun.

    .venv/bin/python bench/results/s18/sample_size_probe.py --n 2000 5000 --seeds 0 1 2 \
        --log bench/results/s18/sample_size_probe.jsonl
"""

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, ".")
ap = argparse.ArgumentParser()
ap.add_argument("--data", default="../shared/data/cifar10")
ap.add_argument("--n", type=int, nargs="+", default=[2000, 5000])
ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
ap.add_argument("--epochs", type=int, default=0, help="override student_epochs (smoke runs)")
ap.add_argument("--log", required=True)
a = ap.parse_args()

import numpy as np

import parameters
from bench.label_budget import VAL_IMAGES, student_splits
from kd import stages
from kd.data import save_dataset, stratified_split
from kd.evaluate import classification_metrics, predict_logits
from kd.model_folder import load_model
from kd.teacher import shipped_teacher_path
from local_runner.run import PROFILES

folder = Path(a.data)
with np.load(folder / "train.npz") as f:
    x_all, y_all = f["x"], f["y"].astype(np.uint8).ravel()
_, teacher_val = stratified_split(y_all, 0.1, 0)
# (Wrong, see the docstring: student_splits sorts the permutation before taking VAL_IMAGES.)
rest = np.sort(teacher_val[np.random.default_rng(1234).permutation(len(teacher_val))][VAL_IMAGES:])
hold_x, hold_y = x_all[rest], y_all[rest]
log_path = Path(a.log)
done = set()
if log_path.exists():
    done = {(r["n"], r["student"], r["seed"]) for r in map(json.loads, log_path.open())}
for n in a.n:
    for seed in a.seeds:
        todo = [s for s in ("distilled", "scratch") if (n, s, seed) not in done]
        if not todo:
            continue
        (xt, yt), (xv, yv) = student_splits(folder, n, seed)
        assert not set(map(bytes, xt[:50])) & set(map(bytes, hold_x)), "train/holdout overlap"
        extra = {"student_seed": seed, "split_seed": seed}
        if a.epochs:
            extra["student_epochs"] = a.epochs
        cfg = parameters.stage_configs(parameters.resolve(extra, base=PROFILES["demo"]))
        with tempfile.TemporaryDirectory(prefix="s18-") as tmp:
            work = Path(tmp)
            train = (str(work / "train"), save_dataset(work / "train", xt, yt)["sha256"])
            val = (str(work / "val"), save_dataset(work / "val", xv, yv)["sha256"])
            for student in todo:
                t = time.perf_counter()
                if student == "scratch":
                    stages.train_student_scratch(
                        train, val, cfg["student"], str(work / student), log=lambda *_: None
                    )
                else:
                    stages.check_teacher(
                        str(shipped_teacher_path()),
                        val,
                        cfg["distill"].preset,
                        str(work / "teacher"),
                        log=lambda *_: None,
                    )
                    stages.distill_student(
                        str(work / "teacher"),
                        train,
                        val,
                        cfg["distill"],
                        str(work / student),
                        log=lambda *_: None,
                    )
                wall = time.perf_counter() - t
                logits = predict_logits(load_model(work / student), hold_x, 500)
                acc = classification_metrics(hold_y, logits)["accuracy"]
                row = {
                    "n": n,
                    "student": student,
                    "seed": seed,
                    "holdout_accuracy": float(acc),
                    "holdout_images": len(hold_y),
                    "wall_s": round(wall, 1),
                    "epochs": cfg["student"].epochs,
                }
                print(json.dumps(row), flush=True)
                with log_path.open("a") as fh:
                    fh.write(json.dumps(row) + "\n")
