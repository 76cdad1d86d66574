# ruff: noqa: E402, B007, F841  (an archived probe, kept as it ran but for its temp and data paths)
"""EXPLORATORY PROBE, not a maintained benchmark (session 16): whether teacher-labelled mixup
views ("function matching", Beyer et al. 2022) help the demo's distilled student, and whether
mixup with mixed labels helps the scratch student, before any of it went into kd/.

Run from the repository root (``python bench/results/demo-kd-selection/s16/probe/
probe_function_matching.py --seed 0 --mix mixup --copies 3 --views 2 --epochs 30``) with the
code of 022d893 (the later runs with the working tree of the mixed-views change, whose path
without mixed views is the same) (before ``teacher_mixup_views``
existed), on the held-out training images of ``bench.demo_kd --holdout 5000``; ``probe.jsonl``
beside this file holds each run's RESULT line and its arguments. How it differs from the
product's ``teacher_mixup_views``: it materializes ``--copies`` mixed copies of the 2,000
training images (float mixup rounded to uint8, one partner and one lambda ~ Beta(1, 1) per
copy), appends them to the originals and distills on the larger set for ``epochs / (1 +
copies)`` epochs (the same number of steps), each image with ``--views`` cached crops.
``--label-mix 1`` trains the scratch student's recipe (its learning rate, alpha = 0, T = 1)
against the mixed one-hot labels instead of the teacher: mixup for the baseline (its
accuracy is then the ``holdout_distilled`` field of the RESULT line). ``--no-distill 1
--scratch 1`` trains only the scratch student through ``kd.stages`` (the learning-rate check at
40 epochs). ``--param`` goes over the demo profile of the working tree it ran with: the runs
named ``scratch40-*`` and ``dist40-*`` in ``probe.jsonl`` ran after the demo profile cached 2
plain and 6 mixed views (so ``dist40-*``, with ``--copies 0 --views 2``, is the product's
mixed-view distillation at another learning rate). docs/RESULTS.md section 15 reads them.
"""

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[5]))  # the repository root
ap = argparse.ArgumentParser()
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--mix", default="mixup")  # mixup | cutmix | none
ap.add_argument("--copies", type=int, default=1)  # mixed copies per image, added to the originals
ap.add_argument("--keep", type=int, default=1)  # 1: keep originals
ap.add_argument("--views", type=int, default=4)
ap.add_argument("--epochs", type=int, default=20)
ap.add_argument("--beta", type=float, default=1.0)
ap.add_argument("--param", action="append", default=[])
ap.add_argument("--scratch", type=int, default=0)
ap.add_argument("--no-distill", type=int, default=0)
ap.add_argument("--label-mix", type=int, default=0)
ap.add_argument("--data", default="../shared/data/cifar10", help="the folder holding train.npz")
a = ap.parse_args()
import parameters
from bench.demo_kd import holdout_split
from kd import stages
from kd.data import load_dataset
from kd.distill import distill_student
from kd.evaluate import classification_metrics, predict_logits
from kd.model_folder import load_model
from kd.teacher import shipped_teacher_path
from local_runner.run import PROFILES, parse_value

extra = {k: parse_value(v) for k, _, v in (p.partition("=") for p in a.param)}
seed = a.seed
params = parameters.resolve(
    {"split_seed": seed, "student_seed": seed, "teacher_seed": seed, **extra}, base=PROFILES["demo"]
)
cfg = parameters.stage_configs(params)
work = Path(tempfile.mkdtemp(prefix=f"fm-probe-{seed}-"))  # made here
paths = {n: str(work / n) for n in ("train", "validation", "test")}
meta = stages.split_data(cfg["split"], paths["train"], paths["validation"], paths["test"])
train = (paths["train"], meta["train"]["sha256"])
val = (paths["validation"], meta["validation"]["sha256"])
stages.check_teacher(
    str(shipped_teacher_path()),
    val,
    cfg["distill"].preset,
    str(work / "teacher"),
    log=lambda *_: None,
)
x, y = load_dataset(paths["train"])
xv, yv = load_dataset(paths["validation"])
rng = np.random.default_rng([seed, 99])
xs, ys = ([x], [y]) if a.keep else ([], [])
soft = [np.eye(10, dtype=np.float32)[y]] if a.keep else []
n = len(x)
for c in range(a.copies):
    j = rng.permutation(n)
    lam = rng.beta(a.beta, a.beta, size=n)
    if a.mix == "mixup":
        xm = np.rint(lam[:, None, None, None] * x + (1 - lam[:, None, None, None]) * x[j]).astype(
            np.uint8
        )
    else:  # cutmix: box of area (1-lam) from partner
        xm = x.copy()
        for i in range(n):
            r = np.sqrt(1 - lam[i])
            h = int(32 * r)
            w = int(32 * r)
            cy, cx = rng.integers(0, 32, 2)
            y0, y1 = max(cy - h // 2, 0), min(cy + h // 2, 32)
            x0, x1 = max(cx - w // 2, 0), min(cx + w // 2, 32)
            xm[i, y0:y1, x0:x1] = x[j[i], y0:y1, x0:x1]
            lam[i] = 1 - (y1 - y0) * (x1 - x0) / 1024
    E = np.eye(10, dtype=np.float32)
    soft.append(
        lam[:, None].astype(np.float32) * E[y] + (1 - lam[:, None].astype(np.float32)) * E[y[j]]
    )
    xs.append(xm)
    ys.append(np.where(lam >= 0.5, y, y[j]).astype(y.dtype))
X, Y = np.concatenate(xs), np.concatenate(ys)
factor = len(X) / n
ep = max(1, round(a.epochs / factor))
dcfg = dataclasses.replace(cfg["distill"], epochs=ep, teacher_views=a.views)
teacher = load_model(work / "teacher")
if a.label_mix:
    import kd.distill as kdd

    S = np.concatenate(soft)
    orig = kdd.cache_teacher_views

    def fake(teacher, xx, views, **kw):
        tv = orig(teacher, xx[:64], views, **kw)
        if len(xx) == len(S):
            rows = [
                kdd.draw_augmentation(np.random.default_rng([kw["seed"], k, 0, 3]), len(xx), 4)
                for k in range(views)
            ]
            lg = np.repeat(np.log(S + 1e-6)[:, None], views, axis=1)
            return kdd.TeacherViews(np.stack(rows, 1), lg, flip_free=False)
        lg = np.repeat(np.log(np.eye(10, dtype=np.float32)[yv] + 1e-6)[:, None], views, 1)
        return kdd.TeacherViews(
            np.tile(kdd.identity_augmentation(len(xx))[:, None], (1, views, 1)), lg, flip_free=False
        )

    kdd.cache_teacher_views = fake
    dcfg = dataclasses.replace(
        dcfg, temperature=1.0, alpha=0.0, learning_rate=cfg["student"].learning_rate
    )
t0 = time.perf_counter()
if not a.no_distill:
    distill_student(teacher, (X, Y), (xv, yv), dcfg, work / "d", log=lambda *_: None)
t_d = time.perf_counter() - t0
hold = holdout_split(Path(a.data), 5000)
res = {"seed": seed, "args": vars(a), "epochs_run": ep, "train_images": len(X), "distill_s": t_d}
if not a.no_distill:
    m = load_model(work / "d")
    res["holdout_distilled"] = float(
        classification_metrics(hold[1], predict_logits(m, hold[0], 500))["accuracy"]
    )
    res["val_distilled"] = float(classification_metrics(yv, predict_logits(m, xv, 500))["accuracy"])
if a.scratch:
    stages.train_student_scratch(train, val, cfg["student"], str(work / "s"), log=lambda *_: None)
    m = load_model(work / "s")
    res["holdout_scratch"] = float(
        classification_metrics(hold[1], predict_logits(m, hold[0], 500))["accuracy"]
    )
print("RESULT", json.dumps(res), flush=True)
