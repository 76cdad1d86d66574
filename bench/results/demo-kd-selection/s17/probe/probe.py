# ruff: noqa: E402, E401  (an archived probe: the code that ran, reformatted by ruff)
"""EXPLORATORY PROBE, not a maintained benchmark (session 17; docs/RESULTS.md section 16).

One student per run, the distilled one or (``--scratch``) the scratch one (neither depends on
the other's settings), through the product's stage functions with the demo profile and one
change, scored on the 4,765 held-out training images (bench.demo_kd.holdout_split), 3 seeds.
One JSON line per seed to --log. See README.md beside this file."""

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, ".")
ap = argparse.ArgumentParser()
ap.add_argument("--name", required=True)
ap.add_argument("--param", action="append", default=[])
ap.add_argument("--distill", action="append", default=[], help="DistillConfig field=value")
ap.add_argument("--blend", default="", help="lo,hi weight range in 256ths (probe hook)")
ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
ap.add_argument("--scratch", action="store_true", help="train the scratch student instead")
ap.add_argument("--log", default="/tmp/s17/probe.jsonl")
a = ap.parse_args()
import numpy as np

import kd.distill as kdd
import parameters
from bench.demo_kd import holdout_split
from kd import stages
from kd.evaluate import classification_metrics, predict_logits
from kd.model_folder import load_model
from kd.teacher import shipped_teacher_path
from local_runner.run import PROFILES, parse_value

if a.blend and not hasattr(kdd, "_blend_weights"):
    sys.exit("--blend needs the probe's hook kd.distill._blend_weights, not in the committed code")
if a.blend:
    lo, hi = map(int, a.blend.split(","))
    kdd._blend_weights = lambda rng, n: rng.integers(lo, hi + 1, size=n)
extra = {k: parse_value(v) for k, _, v in (p.partition("=") for p in a.param)}
hold = holdout_split(Path("../shared/data/cifar10"), 5000)
accs = []
for seed in a.seeds:
    with tempfile.TemporaryDirectory(prefix="s17-") as tmp:
        work = Path(tmp)
        params = parameters.resolve(
            {"split_seed": seed, "student_seed": seed, "teacher_seed": seed, **extra},
            base=PROFILES["demo"],
        )
        cfg = parameters.stage_configs(params)
        d = cfg["distill"]
        if a.distill:
            d = dataclasses.replace(
                d, **{k: parse_value(v) for k, _, v in (p.partition("=") for p in a.distill)}
            )
        paths = {n: str(work / n) for n in ("train", "validation", "test")}
        meta = stages.split_data(cfg["split"], paths["train"], paths["validation"], paths["test"])
        val = (paths["validation"], meta["validation"]["sha256"])
        stages.check_teacher(
            str(shipped_teacher_path()), val, d.preset, str(work / "teacher"), log=lambda *_: None
        )
        t = time.perf_counter()
        if a.scratch:
            sc = cfg["student"]
            if a.distill:
                sc = dataclasses.replace(
                    sc, **{k: parse_value(v) for k, _, v in (p.partition("=") for p in a.distill)}
                )
            stages.train_student_scratch(
                (paths["train"], meta["train"]["sha256"]),
                val,
                sc,
                str(work / "d"),
                log=lambda *_: None,
            )
        else:
            stages.distill_student(
                str(work / "teacher"),
                (paths["train"], meta["train"]["sha256"]),
                val,
                d,
                str(work / "d"),
                log=lambda *_: None,
            )
        secs = time.perf_counter() - t
        acc = float(
            classification_metrics(hold[1], predict_logits(load_model(work / "d"), hold[0], 500))[
                "accuracy"
            ]
        )
    accs.append(acc)
    line = {
        "name": a.name,
        "seed": seed,
        "student": "scratch" if a.scratch else "distilled",
        "holdout": acc,
        "distill_s": secs,
        "param": a.param,
        "distill": a.distill,
        "blend": a.blend,
    }
    print(json.dumps(line), flush=True)
    with open(a.log, "a") as f:
        f.write(json.dumps(line) + "\n")
print(f"{a.name}: {100 * np.mean(accs):.2f} +- {100 * np.std(accs, ddof=1):.2f}", flush=True)
