"""A local run's life through the real CLI (subprocess runner): Ctrl-C, kill -9, resume, cache.

Each test starts ``python -m local_runner run`` as a user would and reads what it prints, the
run record and ``inspect``; child processes are found in /proc (Linux).
"""

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
from runner_cli import TINY, cli, start

from kd import runs

SMALL = ["--runner", "subprocess", *TINY]
TEACHER = ["--train-teacher", "--param", "teacher_batch_size=40"]

pytestmark = pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs /proc")


_cli, _start = cli, start


def _wait_for(cond, proc: subprocess.Popen, what: str, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended before {what}:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.2)
    proc.kill()
    raise AssertionError(f"timed out waiting for {what}")


def _stage_processes(root: Path) -> list[str]:
    """Command lines of live stage processes writing under ``root``."""
    return [cmd for _, cmd in _stage_pids(root)]


def _stage_pids(root: Path) -> list[tuple[int, str]]:
    """(pid, command line) of live stage processes writing under ``root``."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmd = (d / "cmdline").read_bytes()
                state = (d / "stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if b"kfp.dsl.executor_main" in cmd and str(root).encode() in cmd and state != "Z":
                found.append((int(d.name), cmd[:80].decode(errors="replace")))
    return found


def _checkpoint(root: Path) -> bool:
    return any(root.glob("*/train-teacher/model/checkpoint/epoch-*.weights.h5"))


def _record(root: Path) -> dict:
    (run,) = [p for p in root.iterdir() if p.name.startswith("kd-cifar10-")]
    return json.loads((run / runs.RUN_RECORD).read_text())


def test_ctrl_c_cancels_the_run_stops_its_stage_and_says_so(tmp_path):
    root = tmp_path / "root"
    proc = _start(root, *SMALL, *TEACHER, "--teacher-epochs", "30")
    _wait_for(lambda: _checkpoint(root), proc, "the teacher's first epoch")
    assert _stage_processes(root), "the teacher's stage process should be running"
    # SIGINT to the runner alone (not its process group, which a terminal's Ctrl-C would
    # reach): stopping the stage is the runner's job.
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    last = out.strip().splitlines()[-1]
    assert "cancelled by SIGINT during train-teacher" in last, last
    assert "--resume kd-cifar10-" in last, last
    time.sleep(1)
    assert _stage_processes(root) == []
    record = _record(root)
    assert record["status"] == runs.CANCELLED
    assert record["tasks"]["data-split"]["status"] == "SUCCESS"
    assert record["tasks"]["train-teacher"]["status"] == runs.CANCELLED
    # The line names the stages that had finished: data-split, and whichever independent
    # stage kfp.local happened to run before the teacher (its order varies between runs).
    m = re.search(r"(\d+) of 6 stages had finished \(([^)]*)\)", last)
    assert m, last
    named = m.group(2).split(", ")
    done = [t for t, r in record["tasks"].items() if r["status"] == "SUCCESS"]
    assert int(m.group(1)) == len(named) and sorted(named) == sorted(done), (last, done)
    shown = _cli("inspect", "latest", "--pipeline-root", str(root))
    assert "Status    CANCELLED" in shown.stdout, shown.stdout


def test_sigterm_cancels_too(tmp_path):
    root = tmp_path / "root"
    proc = _start(root, *SMALL, *TEACHER, "--teacher-epochs", "30")
    _wait_for(lambda: _checkpoint(root), proc, "the teacher's first epoch")
    proc.terminate()
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    assert "cancelled by SIGTERM during train-teacher" in out, out[-3000:]
    time.sleep(1)
    assert _stage_processes(root) == []
    assert _record(root)["status"] == runs.CANCELLED


def _history(run_dir: Path) -> dict:
    return json.loads((run_dir / "train-teacher" / "model" / "history.json").read_text())


@pytest.mark.slow
def test_kill_9_reads_interrupted_and_resume_finishes_it_like_an_uninterrupted_run(tmp_path):
    args = [*SMALL, *TEACHER, "--teacher-epochs", "4"]
    # The reference: the same run, never stopped.
    ref_root = tmp_path / "reference"
    done = _cli("run", "--pipeline-root", str(ref_root), *args)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (ref,) = [p for p in ref_root.iterdir() if p.name.startswith("kd-cifar10-")]

    root = tmp_path / "root"
    proc = _start(root, *args)
    _wait_for(
        lambda: any(root.glob("*/train-teacher/model/checkpoint/epoch-0002.weights.h5")),
        proc,
        "the teacher's second epoch",
    )
    proc.kill()  # SIGKILL: the runner gets no chance to clean up
    proc.communicate(timeout=60)
    orphans = _stage_pids(root)
    assert orphans, "the killed runner's stage should still be running (orphaned)"
    for pid, _ in orphans:  # frozen, so that it is still there when the next run starts
        os.kill(pid, signal.SIGSTOP)  # however fast this machine finishes the teacher
    (run,) = [p for p in root.iterdir() if p.name.startswith("kd-cifar10-")]
    shown = _cli("inspect", run.name, "--pipeline-root", str(root))
    assert "Status    INTERRUPTED" in shown.stdout, shown.stdout
    listed = _cli("inspect", "--pipeline-root", str(root))
    assert "INTERRUPTED" in listed.stdout, listed.stdout

    resumed = _cli(
        "run", "--pipeline-root", str(root), "--runner", "subprocess", "--resume", run.name
    )
    out = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, out[-4000:]
    assert "stopped process" in out and "whose runner was killed" in out, out[:3000]
    assert f"data-split: reused from run {run.name}" in out, out[:3000]
    assert "[train_teacher] resuming after epoch" in out, out[:4000]
    assert _stage_processes(root) == []
    assert _record(root)["status"] == runs.SUCCEEDED
    assert len([p for p in root.iterdir() if p.name.startswith("kd-cifar10-")]) == 1
    # Resumed, the teacher's history is that of one uninterrupted run, epoch for epoch.
    got, want = _history(run), _history(ref)
    assert got["epoch"] == want["epoch"] == [1, 2, 3, 4]
    assert got["val_accuracy"] == pytest.approx(want["val_accuracy"], abs=1e-6)
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-4)
    # ... and so is everything after it: the students and the evaluation's scores.
    scores = [json.loads((r / "evaluate" / "metrics").read_text())["results"] for r in (run, ref)]
    accuracies = [{name: m[name]["accuracy"] for name in m} for m in scores]
    assert len(accuracies[0]) == 3 and accuracies[0] == pytest.approx(accuracies[1], abs=1e-6)


@pytest.mark.slow
def test_a_cached_rerun_reuses_every_stage_and_inspect_says_from_where(tmp_path):
    root = tmp_path / "root"
    first = _cli("run", "--pipeline-root", str(root), "--cache", *SMALL)
    assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
    second = _cli("run", "--pipeline-root", str(root), "--cache", *SMALL)
    assert second.returncode == 0, second.stdout[-3000:] + second.stderr[-3000:]
    runs_made = sorted(p.name for p in root.iterdir() if p.name.startswith("kd-cifar10-"))
    assert len(runs_made) == 2
    out = second.stdout
    for task in ("data-split", "check-teacher", "train-student-scratch", "distill-student"):
        assert f"{task}: reused from run {runs_made[0]}" in out, out[:3000]
    for task in ("evaluate", "export-model"):
        assert f"{task}: reused from run {runs_made[0]}" in out, out[:3000]
    # Only the importer (no container, nothing to cache) executes again.
    executed = [ln for ln in out.splitlines() if ln.startswith("=== stage") and "reused" not in ln]
    assert [ln.rsplit(": ", 1)[1] for ln in executed] == ["importer ==="], executed
    described = runs.describe_run(root, runs_made[1])
    status = {t["name"]: t["status"] for t in described["tasks"]}
    assert status["train-student-scratch"] == status["distill-student"] == runs.REUSED
    reused = {t["name"]: t.get("reused_from") for t in described["tasks"]}
    assert reused["evaluate"] == runs_made[0]
    # The comparison table and the report are those of the run the outputs came from.
    assert "| student_distilled |" in out
    assert f"{runs_made[0]}/evaluate/report_files/report.html" in out
    assert described["report"].startswith(str(root / runs_made[0]))


def _containers(root: Path) -> list:
    import docker
    from local_runner.lifecycle import ROOT_LABEL

    return docker.from_env().containers.list(filters={"label": f"{ROOT_LABEL}={root}"})


DOCKER = ["--runner", "docker", "--build", "offline", *TINY]


@pytest.mark.docker
def test_docker_ctrl_c_stops_the_stage_container(docker_root):
    root = docker_root
    proc = _start(root, *DOCKER, *TEACHER, "--teacher-epochs", "30")
    _wait_for(lambda: _checkpoint(root), proc, "the teacher's first epoch", timeout=1500)
    assert _containers(root), "the teacher's container should be running"
    proc.send_signal(signal.SIGINT)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    assert "Traceback" not in out, out[-3000:]
    assert "cancelled by SIGINT during train-teacher" in out and "stopped container" in out
    assert _containers(root) == []
    assert _record(root)["status"] == runs.CANCELLED


@pytest.mark.docker
def test_docker_kill_9_leaves_an_orphan_the_next_run_stops(docker_root):
    root = docker_root
    proc = _start(root, *DOCKER, *TEACHER, "--teacher-epochs", "30")
    _wait_for(lambda: _checkpoint(root), proc, "the teacher's first epoch", timeout=1500)
    proc.kill()
    proc.communicate(timeout=60)
    (orphan,) = _containers(root)  # still training, into a run nobody watches
    (run,) = [p for p in root.iterdir() if p.name.startswith("kd-cifar10-")]
    shown = _cli("inspect", run.name, "--pipeline-root", str(root))
    assert "Status    INTERRUPTED" in shown.stdout, shown.stdout
    # The next run on this root (here a new one, with the shipped teacher) stops it before
    # its own first stage.
    again = _cli("run", "--pipeline-root", str(root), *DOCKER, timeout=1500)
    out = again.stdout + again.stderr
    assert again.returncode == 0, out[-3000:]
    assert f"stopped container {orphan.name} of run {run.name}" in out, out[:3000]
    assert _containers(root) == []
