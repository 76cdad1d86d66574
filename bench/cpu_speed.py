"""CPU speed: images/s per training stage, and the local Docker run against a direct run.

    python -m bench.cpu_speed [--images 1000] [--docker [--docker-pipelines tiny demo]] \
        [--out bench/results/cpu_speed.json]

1. Training throughput of each stage (seed preset, batch 128, the shipped sample): two epochs,
   the second one timed (the first includes tracing), in images/s.
2. With ``--docker``: a pipeline run (``tiny``: the shipped sample, 30 images per class, one
   epoch per stage; ``demo``: what ``make demo`` runs) through ``python -m local_runner run``
   (Docker) and as direct library calls of the same stages in one process, both with the
   configs ``local_runner.run.stage_configs`` builds from the same parameters; their wall-time
   ratio; per stage, the task's time in the Docker run (as the runner records it in
   ``kd_run.json``: container start, imports, artifacts in and out, the work) against the same
   stage's direct call, and the difference, which is what the container costs that stage;
   and the start time of one stage container
   (``docker run --network none IMAGE python -c "import kd.train"``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
# Pipeline runs compared with and without Docker: (local_runner profile, parameter overrides).
# Both sides take their configs from the same parameters (local_runner.run.stage_configs).
PIPELINES: dict[str, tuple[str, dict[str, object]]] = {
    # one epoch per stage on 30 images per class: fixed costs dominate
    "tiny": (
        "demo",
        {
            "teacher_epochs": 1,
            "student_epochs": 1,
            "train_per_class": 30,
            "test_per_class": 10,
            "latency_runs": 5,
            "export_check_images": 16,
            "min_kd_gain": -100,
        },
    ),
    # what `make demo` runs: the shipped sample, minutes of training
    "demo": ("demo", {"min_kd_gain": -100}),
}


def training_throughput(n: int) -> dict[str, float]:
    from kd.config import DistillConfig, StudentConfig, TeacherConfig
    from kd.data import load_cifar10
    from kd.distill import distill_student
    from kd.model_folder import load_model
    from kd.train import train_student_scratch, train_teacher

    d = load_cifar10("sample")
    tr, va = (d.x_train[:n], d.y_train[:n]), (d.x_test[::10], d.y_test[::10])
    common = {"epochs": 2, "batch_size": 128, "divergence_check_epoch": 0}
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        h = train_teacher(tr, va, TeacherConfig(**common), f"{tmp}/t", log=lambda s: None)
        out["train_teacher"] = n / h.history["epoch_time_s"][1]
        h = train_student_scratch(tr, va, StudentConfig(**common), f"{tmp}/s", log=lambda s: None)
        out["train_student_scratch"] = n / h.history["epoch_time_s"][1]
        h = distill_student(
            load_model(f"{tmp}/t"), tr, va, DistillConfig(**common), f"{tmp}/d", log=lambda s: None
        )
        out["distill_student"] = n / h.history["epoch_time_s"][1]
    return {k: round(v, 1) for k, v in out.items()}


def direct_run(profile: str, overrides: dict[str, object]) -> tuple[float, dict[str, float]]:
    """The pipeline as library calls in this process (what each container does), with the
    configs the local runner builds from the same parameters: (wall s, s per stage, by the
    pipeline's task names)."""
    from kd import stages
    from local_runner.run import resolve_params, stage_configs

    c = stage_configs(resolve_params(profile, dict(overrides)))
    times: dict[str, float] = {}

    def timed(task: str, fn: Any, *args: Any) -> Any:
        t = time.perf_counter()
        result = fn(*args)
        times[task] = time.perf_counter() - t
        return result

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        p = {n: f"{tmp}/{n}" for n in ("train", "val", "test")}
        meta = timed("data-split", stages.split_data, c["split"], p["train"], p["val"], p["test"])
        tr, va = (p["train"], meta["train"]["sha256"]), (p["val"], meta["validation"]["sha256"])
        te = (p["test"], meta["test"]["sha256"])
        timed("train-teacher", stages.train_teacher, tr, va, c["teacher"], f"{tmp}/t")
        timed(
            "train-student-scratch", stages.train_student_scratch, tr, va, c["student"], f"{tmp}/s"
        )
        timed(
            "distill-student", stages.distill_student, f"{tmp}/t", tr, va, c["distill"], f"{tmp}/d"
        )
        models = {
            "teacher": f"{tmp}/t",
            "student_distilled": f"{tmp}/d",
            "student_scratch": f"{tmp}/s",
        }
        timed("evaluate", stages.evaluate, models, te, va, c["evaluate"], c["gate"], f"{tmp}/r")
        timed(
            "export-model",
            stages.export_blessed,
            f"{tmp}/d",
            te,
            c["export_check_images"],
            f"{tmp}/e",
        )
    return time.perf_counter() - t0, times


def per_stage(direct: dict[str, float], docker: dict[str, float]) -> dict[str, dict[str, float]]:
    """Each stage's direct and Docker times and their difference (what the container costs)."""
    return {
        task: {
            "direct_s": round(direct[task], 2),
            "docker_s": round(docker[task], 2),
            "container_overhead_s": round(docker[task] - direct[task], 2),
        }
        for task in direct
        if task in docker
    }


def docker_run(profile: str, overrides: dict[str, object]) -> tuple[float, dict[str, float]]:
    """The same pipeline through ``python -m local_runner run`` (one container per stage):
    (wall s, s per task as the runner recorded them in the run's ``kd_run.json``)."""
    (ROOT / "runs").mkdir(exist_ok=True)
    root = tempfile.mkdtemp(prefix="bench-docker-", dir=ROOT / "runs")
    os.chmod(root, 0o755)
    params = [a for k, v in overrides.items() for a in ("--param", f"{k}={json.dumps(v)}")]
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-m", "local_runner", "run", "--build", "offline"]
        + ["--profile", profile, "--pipeline-root", root, *params],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(r.stderr[-2000:])
    (record,) = Path(root).glob("*/kd_run.json")
    tasks = json.loads(record.read_text()).get("tasks", {})
    return wall, {k: t["duration_s"] for k, t in tasks.items() if "duration_s" in t}


def container_start() -> float:
    """Median of 5: start a stage container and import the training library."""
    from components.image import IMAGE

    starts = []
    for _ in range(5):
        t = time.perf_counter()
        subprocess.run(
            [
                "docker",
                "run",
                "--rm",
                "--network",
                "none",
                IMAGE,
                "python",
                "-c",
                "import kd.train",
            ],
            check=True,
            capture_output=True,
        )
        starts.append(time.perf_counter() - t)
    return statistics.median(starts)


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--images", type=int, default=1000)
    ap.add_argument("--docker", action="store_true", help="compare the tiny pipeline with Docker")
    ap.add_argument(
        "--docker-pipelines",
        nargs="+",
        default=["tiny"],
        choices=sorted(PIPELINES),
        help="with --docker: which pipeline runs to compare (default: tiny)",
    )
    ap.add_argument("--out", default="bench/results/cpu_speed.json")
    a = ap.parse_args()
    import keras

    out: dict = {
        "command": " ".join(["python -m bench.cpu_speed", *sys.argv[1:]]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cpus": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
        },
        "backend": f"keras-{keras.__version__}/{keras.backend.backend()}",
        "train_images_per_s": training_throughput(a.images),
    }
    if a.docker:
        # Build (or check) the image first, as the runner does: a rebuild must not count as
        # run time.
        from components.image import IMAGE
        from local_runner.run import ensure_image

        ensure_image(IMAGE, "offline", None)
        for name in a.docker_pipelines:
            profile, overrides = PIPELINES[name]
            direct, direct_stages = direct_run(profile, overrides)
            docker_wall, docker_stages = docker_run(profile, overrides)
            out[f"pipeline_{name}"] = {
                "profile": profile,
                "overrides": overrides,
                "direct_s": round(direct, 1),
                "docker_s": round(docker_wall, 1),
                "overhead_ratio": round(docker_wall / direct, 2),
                "target_ratio": 1.5,
                "stages": per_stage(direct_stages, docker_stages),
            }
        out["container_start_import_kd_s"] = round(container_start(), 2)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
