"""End to end: the local runner runs the compiled components, then ``inspect`` reads the run.

The Docker test builds the image offline and runs every stage in its own container with
networking off. Where no Docker engine runs it skips loudly; with CI=true it fails instead.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from runner_cli import TINY, cli

ROOT = Path(__file__).resolve().parents[1]
_cli = cli


def _check_run(root: Path, out: str, trained: bool = False) -> dict:
    """What a finished run shows on the terminal and what ``inspect`` reads back."""
    teacher_tasks = ("train-teacher",) if trained else ("importer", "check-teacher")
    total = 6 if trained else 7
    assert f"=== stage 1 of {total}: data-split ===" in out
    # The teacher's tasks and the scratch student are independent (in parallel on a cluster),
    # so kfp.local runs them in either order; the distillation always comes after the teacher.
    for task in teacher_tasks:
        assert re.search(rf"=== stage [2-5] of {total}: {task} ===", out), task
        assert out.index(f": {task} ===") < out.index(": distill-student ===")
    assert ("[train_teacher] epoch 1/1" in out) is trained
    assert "[distill_student] epoch 1/1" in out and "step 1/" not in out
    assert "=== evaluate: done in " in out
    # kfp.local's per-task dumps went to the log file, not the terminal.
    assert "Wrote executor output file" not in out and "confusionMatrix" not in out
    assert "report:" in out and "student_distilled" in out
    log = Path(out.split("log:")[-1].split()[0])
    assert log.name == "run.log" and "Wrote executor output file" in log.read_text()
    r = _cli("inspect", "latest", "--pipeline-root", str(root), "--json")
    assert r.returncode == 0, r.stderr
    run = json.loads(r.stdout)
    assert run["status"] == "SUCCEEDED"
    status = {t["name"]: t["status"] for t in run["tasks"]}
    for task in (
        "data-split",
        *teacher_tasks,
        "train-student-scratch",
        "distill-student",
        "evaluate",
        "export-model",
    ):
        assert status[task] in ("SUCCESS", "SUCCEEDED"), status
    if not trained:  # listed from the pipeline spec, but it never ran
        assert status.get("train-teacher") not in ("SUCCESS", "SUCCEEDED"), status
    types = {f"{a['task']}/{a['name']}": a["type"] for a in run["artifacts"]}
    teacher_artifact = "train-teacher/model" if trained else "check-teacher/model"
    assert types[teacher_artifact] == "system.Model"
    assert types["evaluate/report"] == "system.HTML"
    assert types["export-model/blessed"] == "system.Model"
    assert run["report"] and Path(run["report"]).exists()
    html = Path(run["report"]).read_text()
    assert "data:image/png;base64" in html
    assert "decided on the validation split" in html
    metrics = json.dumps(run["metrics"])
    assert "kd_gain_points" in metrics and "student_distilled_accuracy" in metrics
    # The distilled student says which teacher taught it.
    distilled = next(root.glob("*/distill-student/model/info.json"))
    who = json.loads(distilled.read_text())["teacher"]
    if trained:
        assert who["source"] == "trained"
        assert "trained in this run" in html
    else:
        from kd.teacher import sha256_file, shipped_teacher_path

        assert who["source"] == "imported"
        assert who["sha256"] == sha256_file(shipped_teacher_path())
        assert "brought in, not trained in this run" in html
        assert "45,000 images of the official CIFAR-10 training set" in html
    return run


@pytest.mark.slow
def test_subprocess_runner_end_to_end(tmp_path):
    """The demo's default: distil from the shipped teacher, imported and checked."""
    r = _cli("run", "--runner", "subprocess", "--pipeline-root", str(tmp_path), *TINY)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    _check_run(tmp_path, r.stdout)


@pytest.mark.slow
def test_subprocess_runner_trains_a_teacher_when_told(tmp_path):
    r = _cli(
        "run",
        "--runner",
        "subprocess",
        "--pipeline-root",
        str(tmp_path),
        "--train-teacher",
        *TINY,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    _check_run(tmp_path, r.stdout, trained=True)


@pytest.mark.slow
def test_a_teacher_file_of_the_users_is_distilled_from(tmp_path):
    """--teacher PATH: a teacher Model folder of an earlier run; it is copied into the
    pipeline root (where every runner's tasks can read it) and admitted by check-teacher."""
    import shutil as sh

    from kd.teacher import shipped_teacher_path

    mine = tmp_path / "elsewhere" / "my-teacher"
    mine.mkdir(parents=True)
    sh.copyfile(shipped_teacher_path(), mine / "model.keras")
    root = tmp_path / "runs"
    r = _cli(
        "run", "--runner", "subprocess", "--pipeline-root", str(root), "--teacher", str(mine), *TINY
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert f"teacher: {mine}" in r.stdout
    info = json.loads(next(root.glob("*/check-teacher/model/info.json")).read_text())
    assert info["uri"].startswith(str(root / "teachers"))
    assert info["val_accuracy"] > 0.5


def test_a_failing_stage_prints_its_own_reason(tmp_path):
    """A stage that fails inside the run: the terminal gets that stage's reason in one line,
    the run stops there (no student trained), and inspect records the same reason."""
    bad = tmp_path / "teacher.keras"
    bad.write_text("not a model")
    r = _cli(
        "run",
        "--runner",
        "subprocess",
        "--pipeline-root",
        str(tmp_path / "runs"),
        "--teacher",
        str(bad),
        "--train-per-class",
        "20",
        "--test-per-class",
        "5",
    )
    assert r.returncode == 2, r.stdout[-3000:]
    line = next(x for x in r.stderr.splitlines() if x.startswith("error:"))
    assert "stage check-teacher failed: ArtifactError: teacher" in line
    assert str(bad) in line and "is not a loadable Keras model" in line and "Fix:" in line
    assert "\x1b[" not in r.stderr
    # Nothing starts after the failed stage: no distillation. The scratch student does not
    # depend on the teacher, so kfp.local may have run it first, but never after the failure.
    assert "distill-student" not in r.stdout
    if "train-student-scratch" in r.stdout:
        assert r.stdout.index("train-student-scratch") < r.stdout.index("check-teacher")
    root = str(tmp_path / "runs")
    run = json.loads(_cli("inspect", "latest", "--pipeline-root", root, "--json").stdout)
    assert run["status"] == "FAILED" and "stage check-teacher failed" in run["error"]


@pytest.mark.docker
def test_docker_runner_end_to_end(docker_root):
    tmp_path = docker_root  # the containers' non-root user can reach it
    r = _cli(
        "run",
        "--runner",
        "docker",
        "--build",
        "offline",
        "--pipeline-root",
        str(tmp_path),
        *TINY,
        timeout=1800,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    _check_run(tmp_path, r.stdout)
    # Written by the containers' non-root user.
    model = next(tmp_path.glob("*/check-teacher/model/model.keras"))
    assert model.stat().st_uid != 0


def test_build_auto_builds_the_way_this_machine_can():
    from local_runner.run import choose_build

    def no_registry() -> bool:
        raise AssertionError("the registry is asked only when nothing else decides")

    assert choose_build("auto", True, True, no_registry)[0] == "offline"  # after make demo
    assert choose_build("auto", False, True, no_registry)[0] == "online"
    assert choose_build("auto", False, False, lambda: True)[0] == "online"
    mode, why = choose_build("auto", False, False, lambda: False)
    assert mode == "offline" and "no container registry reachable" in why
    assert choose_build("online", True, False, no_registry)[0] == "online"  # as told


def test_bad_parameter_fails_before_any_stage(tmp_path):
    r = _cli(
        "run",
        "--runner",
        "subprocess",
        "--pipeline-root",
        str(tmp_path),
        "--param",
        "temperature=0",
    )
    assert r.returncode == 2
    assert "temperature" in r.stderr and "error:" in r.stderr
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]


@pytest.mark.slow
def test_sweep_through_the_local_runner(tmp_path):
    grid = '[{"temperature": 2, "alpha": 0.5}, {"temperature": 6, "alpha": 0.1}]'
    r = _cli(
        "run",
        "--pipeline",
        "sweep",
        "--runner",
        "subprocess",
        "--pipeline-root",
        str(tmp_path),
        "--teacher-epochs",
        "1",
        "--student-epochs",
        "1",
        "--train-per-class",
        "30",
        "--test-per-class",
        "10",
        "--param",
        f"grid={grid}",
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    assert "Chosen by validation accuracy" in r.stdout
    run = json.loads(_cli("inspect", "latest", "--pipeline-root", str(tmp_path), "--json").stdout)
    assert run["status"] == "SUCCEEDED"
    best = next(a for a in run["artifacts"] if a["name"] == "best")
    assert best["metadata"]["temperature"] in (2.0, 6.0)
    # Its test accuracy is the chosen model's own, on the run's test split.
    from kd.data import load_dataset
    from kd.evaluate import predict_logits
    from kd.model_folder import load_model

    test = next(a for a in run["artifacts"] if a["task"] == "data-split" and a["name"] == "test")
    x, y = load_dataset(test["uri"])
    own = float(np.mean(predict_logits(load_model(best["uri"]), x).argmax(1) == y))
    assert best["metadata"]["test_accuracy"] == pytest.approx(own)
    heatmap = next(a for a in run["artifacts"] if a["name"] == "heatmap")
    assert "data:image/png;base64" in Path(heatmap["uri"]).read_text()


@pytest.mark.docker
def test_killed_container_is_retried_and_resumes(docker_root):
    """kill -9 the teacher's container mid-training: kfp.local retries the task (the retry
    policy compiled into the pipeline) and the retry resumes from the last saved epoch."""
    import docker
    from components.image import IMAGE

    root = docker_root
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "local_runner",
            "run",
            "--build",
            "offline",
            "--pipeline-root",
            str(root),
            "--train-teacher",
            "--teacher-epochs",
            "3",
            "--student-epochs",
            "1",
            "--train-per-class",
            "60",
            "--test-per-class",
            "10",
            "--param",
            "teacher_batch_size=40",
            "--param",
            "latency_runs=2",
            "--param",
            "export_check_images=8",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    client = docker.from_env()
    killed = False
    deadline = time.time() + 900
    while time.time() < deadline and proc.poll() is None and not killed:
        # A completed epoch's checkpoint (renamed into place, so complete once it exists);
        # the history alone can be one epoch ahead of it.
        if any(root.glob("*/train-teacher/model/checkpoint/epoch-*.weights.h5")):
            running = client.containers.list(filters={"ancestor": IMAGE})
            if running:
                running[0].kill()  # SIGKILL
                killed = True
        time.sleep(0.2)
    out, _ = proc.communicate(timeout=1200)
    assert killed, "never found the teacher's container mid-training:\n" + out[-3000:]
    assert proc.returncode == 0, out[-4000:]
    # The killed attempt failed, the terminal says it is retried, and the retry picked up
    # from the checkpoint; the stage counter counts the stage once.
    assert "=== train-teacher: FAILURE" in out, out[-4000:]
    assert out.count(": train-teacher ===") == 1, out[-4000:]
    assert "[train_teacher] resuming after epoch" in out, out[-4000:]
    # The retry says why (the container's exit status) and from which epoch it goes on.
    retry = re.search(
        r"=== retry 2/\d+ of train-teacher in \d+ s \((.*)\): resuming from epoch (\d+)", out
    )
    assert retry and retry.group(1) == "exited 137 (killed)", out[-4000:]
    # inspect lists both attempts, with their exit status.
    shown = _cli("inspect", "latest", "--pipeline-root", str(root)).stdout
    assert "train-teacher attempt 1: FAILURE, exit status 137" in shown, shown
    assert "train-teacher attempt 2: SUCCESS, exit status 0" in shown, shown
    teacher = next(root.glob("*/train-teacher/model"))
    assert json.loads((teacher / "history.json").read_text())["epoch"] == [1, 2, 3]
    assert not (teacher / "checkpoint").exists()


def test_cache_source_names_the_run_of_any_pipeline(tmp_path):
    """A cache hit's source run is read from the cached outputs' URIs, whatever the pipeline
    is called (it once matched only names starting with kd-cifar10)."""
    from local_runner.lifecycle import new_run_name
    from local_runner.run import cache_source

    run = new_run_name("my-pipeline")
    uri = str(tmp_path / run / "distill-student" / "model")
    (tmp_path / "abc123.json").write_text(json.dumps({"model": {"uri": uri}}))
    assert cache_source(tmp_path, "abc") == run
    assert cache_source(tmp_path, "zzz") is None
