"""Accuracy benchmark: teacher, distilled and scratch student on real CIFAR-10, several seeds.

Runs the pipeline's stages as library calls (kd.stages: the same functions the components
call), on the data source given, and writes one JSON per run plus a summary JSON:

    python -m bench.accuracy --data PATH_TO_CIFAR10 --preset seed --seeds 0 1 2 \
        [--teacher-epochs 60] [--student-epochs 60] [--jobs 3] [--reports DIR] \
        --out bench/results/accuracy-NAME.json

``--parallel-stages`` trains the teacher and the scratch student at the same time (the scratch
student in a second process), as the pipeline's graph allows (neither needs the other), then
distills; each seed's ``three_trainings_wall_s`` is the wall time from the teacher's start to
the distilled student's end, compilation included.

``--teacher-views K [K ...]`` also distills, after the online distillation, one student per K
from the teacher's cached logits (``DistillConfig.teacher_views = K``), from the same teacher,
split and seed; each is timed (``distill_views_K_s``, the caching included) and its test
accuracy recorded as ``student_distilled_views_K``.

``--jobs N`` runs N seeds at once, each in its own process (on one GPU they share the device:
their stage times then measure throughput under sharing, not a lone run's speed); each seed's
JSON is written as soon as it finishes, next to the summary. ``--reports DIR`` keeps each
seed's evaluation report (HTML, Markdown, plots) as ``DIR/PRESET-seed-S.tar.gz``.

The numbers in docs/RESULTS.md come from the JSON files this command writes (committed under
bench/results/), with the command line recorded inside each file.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from kd.config import (
    DistillConfig,
    EvalConfig,
    GateConfig,
    SplitConfig,
    StudentConfig,
    TeacherConfig,
)


def run_once(args: argparse.Namespace, seed: int, work: Path) -> dict[str, Any]:
    """One seed: split, teacher, scratch, distill, evaluate; returns the comparison."""
    from kd import stages
    from kd.data import load_dataset

    split = SplitConfig(
        source=args.data,
        seed=seed,
        train_per_class=args.train_per_class,
        test_per_class=args.test_per_class,
    )
    paths = {n: str(work / n) for n in ("train", "validation", "test")}
    t0 = time.perf_counter()
    meta = stages.split_data(split, paths["train"], paths["validation"], paths["test"])
    shas = {n: meta[n]["sha256"] for n in paths}
    train, val = (paths["train"], shas["train"]), (paths["validation"], shas["validation"])
    common = {
        "preset": args.preset,
        "seed": seed,
        "batch_size": args.batch_size,
        "mixed_precision": args.mixed_precision,
    }
    teacher_cfg = TeacherConfig(
        epochs=args.teacher_epochs,
        learning_rate=args.teacher_lr,
        augment=args.teacher_augment,
        **common,
    )
    student = {"epochs": args.student_epochs, "learning_rate": args.student_lr}
    student_cfg = StudentConfig(**student, **common)
    distill_cfg = DistillConfig(temperature=args.temperature, alpha=args.alpha, **student, **common)
    times = {"split_s": time.perf_counter() - t0}
    start = t = time.perf_counter()
    scratch_job = None
    if args.parallel_stages:
        import multiprocessing

        # spawn: a fresh interpreter (the backend in this process is already initialised).
        scratch_job = multiprocessing.get_context("spawn").Process(
            target=stages.train_student_scratch,
            args=(train, val, student_cfg, str(work / "scratch")),
        )
        scratch_job.start()
    else:
        stages.train_student_scratch(train, val, student_cfg, str(work / "scratch"))
        times["scratch_s"] = time.perf_counter() - t
        t = time.perf_counter()
    stages.train_teacher(train, val, teacher_cfg, str(work / "teacher"))
    times["teacher_s"] = time.perf_counter() - t
    if scratch_job is not None:
        scratch_job.join()
        if scratch_job.exitcode != 0:
            raise SystemExit(f"the scratch student's process failed (exit {scratch_job.exitcode})")
        times["teacher_and_scratch_s"] = time.perf_counter() - start
    t = time.perf_counter()
    stages.distill_student(str(work / "teacher"), train, val, distill_cfg, str(work / "distill"))
    times["distill_s"] = time.perf_counter() - t
    times["three_trainings_wall_s"] = time.perf_counter() - start
    cached = {}
    if args.teacher_views:  # the test split, read once for every cached student
        x_test, y_test = load_dataset(paths["test"], expected_sha256=shas["test"])
    for k in args.teacher_views:
        cfg_k = dataclasses.replace(distill_cfg, teacher_views=k)
        t = time.perf_counter()
        info = stages.distill_student(
            str(work / "teacher"), train, val, cfg_k, str(work / f"distill-views-{k}")
        )
        times[f"distill_views_{k}_s"] = time.perf_counter() - t
        times[f"teacher_cache_views_{k}_s"] = info["teacher_cache_s"]
        cached[f"student_distilled_views_{k}"] = _test_accuracy(
            work / f"distill-views-{k}", x_test, y_test
        )
    out = stages.evaluate(
        {
            "teacher": str(work / "teacher"),
            "student_distilled": str(work / "distill"),
            "student_scratch": str(work / "scratch"),
        },
        (paths["test"], shas["test"]),
        (paths["validation"], shas["validation"]),
        EvalConfig(latency_runs=20),
        GateConfig(),
        str(work / "report"),
    )
    times["total_s"] = time.perf_counter() - t0
    if args.reports:
        import tarfile

        Path(args.reports).mkdir(parents=True, exist_ok=True)
        with tarfile.open(Path(args.reports) / f"{args.preset}-seed-{seed}.tar.gz", "w:gz") as tar:
            tar.add(work / "report", arcname=f"{args.preset}-seed-{seed}")
    histories = {
        n: json.loads((work / d / "history.json").read_text())
        for n, d in (
            ("teacher", "teacher"),
            ("student_distilled", "distill"),
            ("student_scratch", "scratch"),
        )
    }
    return {
        "seed": seed,
        "accuracy": {**{n: r["accuracy"] for n, r in out["results"].items()}, **cached},
        "comparison": out["comparison"],
        "times": times,
        "histories": histories,
        "test_images": meta["test"]["num_examples"],
        "configs": {
            "teacher": teacher_cfg.__dict__,
            "student": student_cfg.__dict__,
            "distill": distill_cfg.__dict__,
        },
    }


def _test_accuracy(model_dir: Path, x: Any, y: Any) -> float:
    """Top-1 accuracy (fraction) of a saved model on the test images ``x``, labels ``y``."""
    from kd.evaluate import classification_metrics, predict_logits
    from kd.model_folder import load_model

    logits = predict_logits(load_model(model_dir), x, EvalConfig().batch_size)
    return float(classification_metrics(y, logits)["accuracy"])


def _run_parallel(args: argparse.Namespace, argv: list[str]) -> list[dict[str, Any]]:
    """Each seed in its own ``python -m bench.accuracy`` process, ``args.jobs`` at a time."""
    import subprocess

    out_dir = Path(args.out).with_suffix("")
    out_dir.mkdir(parents=True, exist_ok=True)
    # Drop --seeds/--jobs/--out from the command line; each child gets its own.
    base, skip = [], False
    for a in argv:
        if a in ("--seeds", "--jobs", "--out"):
            skip = True
            continue
        if skip and not a.startswith("--"):
            continue
        skip = False
        base.append(a)
    env = dict(os.environ)
    # JAX takes 75 % of the GPU's memory per process unless told otherwise.
    env.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{0.9 / args.jobs:.2f}")
    pending: list[int] = list(args.seeds)
    running: list[tuple[int, Any, Path, Any]] = []
    runs: list[dict[str, Any]] = []
    while pending or running:
        while pending and len(running) < args.jobs:
            seed = pending.pop(0)
            path = out_dir / f"seed-{seed}.json"
            log = open(out_dir / f"seed-{seed}.log", "w")  # noqa: SIM115 (closed below)
            cmd = [sys.executable, "-m", "bench.accuracy", *base, "--seeds", str(seed)]
            proc = subprocess.Popen([*cmd, "--out", str(path)], stdout=log, stderr=log, env=env)
            running.append((seed, proc, path, log))
        time.sleep(2)
        for item in list(running):
            seed, proc, path, log = item
            if proc.poll() is None:
                continue
            running.remove(item)
            log.close()
            if proc.returncode != 0:
                print(f"seed {seed} failed (exit {proc.returncode}); see {log.name}", flush=True)
                continue
            runs.extend(json.loads(path.read_text())["runs"])
            print(f"seed {seed} done: {runs[-1]['accuracy']}", flush=True)
    return sorted(runs, key=lambda r: r["seed"])


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", required=True, help="CIFAR-10 source (a path, keras, gs://...)")
    ap.add_argument("--preset", default="seed", help="model preset (default: seed)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="seeds (default: 0)")
    ap.add_argument("--teacher-epochs", type=int, default=TeacherConfig().epochs)
    ap.add_argument("--student-epochs", type=int, default=StudentConfig().epochs)
    ap.add_argument("--batch-size", type=int, default=TeacherConfig().batch_size)
    ap.add_argument("--teacher-lr", type=float, default=TeacherConfig().learning_rate)
    ap.add_argument(
        "--teacher-augment",
        action=argparse.BooleanOptionalAction,
        default=TeacherConfig().augment,
        help="crop + flip for the teacher (the local runner's demo profile turns it off)",
    )
    ap.add_argument(
        "--student-lr",
        type=float,
        default=StudentConfig().learning_rate,
        help="peak lr of both students (scratch and distilled)",
    )
    ap.add_argument("--temperature", type=float, default=DistillConfig().temperature)
    ap.add_argument("--alpha", type=float, default=DistillConfig().alpha)
    ap.add_argument(
        "--teacher-views",
        type=int,
        nargs="*",
        default=[],
        help="also distill from the teacher's cached logits, K views each (e.g. 1 4)",
    )
    ap.add_argument("--mixed-precision", action="store_true")
    ap.add_argument("--train-per-class", type=int, default=0, help="subsample (0 = all)")
    ap.add_argument("--test-per-class", type=int, default=0, help="subsample (0 = all)")
    ap.add_argument(
        "--parallel-stages",
        action="store_true",
        help="train the teacher and the scratch student at once (two processes)",
    )
    ap.add_argument("--jobs", type=int, default=1, help="seeds run at once, one process each")
    ap.add_argument(
        "--reports", default="", help="keep each seed's report as DIR/PRESET-seed-S.tar.gz"
    )
    ap.add_argument("--out", required=True, help="summary JSON path")
    args = ap.parse_args()
    for k in args.teacher_views:  # before any training: a bad K would fail after the rest
        if k < 1:
            raise SystemExit(
                f"error: --teacher-views {k}: each K must be >= 1 (0 is the online run)"
            )
        DistillConfig(teacher_views=k)
    import keras

    from kd.evaluate import aggregate_runs, machine_info

    runs = []
    if args.jobs > 1 and len(args.seeds) > 1:
        runs = _run_parallel(args, sys.argv[1:])
    else:
        for seed in args.seeds:
            with tempfile.TemporaryDirectory(prefix="kd-bench-") as tmp:
                r = run_once(args, seed, Path(tmp))
            runs.append(r)
            print(
                json.dumps({"seed": seed, "accuracy": r["accuracy"], "times": r["times"]}),
                flush=True,
            )
    if not runs:
        raise SystemExit("no seed finished")
    summary = {
        "command": " ".join(["python -m bench.accuracy", *sys.argv[1:]]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "backend": f"keras-{keras.__version__}/{keras.backend.backend()}",
        "jobs": args.jobs,
        "aggregate": aggregate_runs(
            [{"results": {n: {"accuracy": a} for n, a in r["accuracy"].items()}} for r in runs]
        ),
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=1, default=str))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
