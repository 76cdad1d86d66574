"""Data parallelism (kd.parallel) on two virtual CPU devices, on both backends: N devices train
as one device with the same global batch; the teacher stays frozen; a resume on another
device count says so and continues; bad device counts are refused before training."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_train import _kill_after_epochs  # noqa: E402

WORKER = Path(__file__).with_name("parallel_worker.py")
DP_LINE = "data-parallel over 2 devices: global batch 50, 25 images per device"


def _env(backend: str, devices: int) -> dict[str, str]:
    env = {**os.environ, "PYTHONHASHSEED": "0", "TF_CPP_MIN_LOG_LEVEL": "3"}
    if backend == "jax":
        pytest.importorskip("jax")
        env |= {
            "KERAS_BACKEND": "jax",
            "JAX_PLATFORMS": "cpu",
            "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}",
        }
    else:
        env |= {"KERAS_BACKEND": "tensorflow", "KD_TEST_CPU_DEVICES": str(devices)}
    return env


def _run(stage: str, devices: int, out: Path, env: dict[str, str]) -> dict:
    r = subprocess.run(
        [sys.executable, str(WORKER), stage, str(devices), str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
@pytest.mark.parametrize(
    ("backend", "stage"),
    [("tensorflow", "scratch"), ("tensorflow", "distill"), ("jax", "scratch")]
    + [("jax", "distill-cached")],
)
def test_two_devices_train_as_one_with_the_same_global_batch(backend, stage, tmp_path):
    env = _env(backend, 2)
    one = _run(stage, 1, tmp_path / "one", env)
    two = _run(stage, 0, tmp_path / "two", env)  # 0: every visible device, here 2
    assert any(DP_LINE in line for line in two["log"]) and not any(
        "data-parallel" in line for line in one["log"]
    )
    a, b = np.load(tmp_path / "one" / "weights.npy"), np.load(tmp_path / "two" / "weights.npy")
    assert np.abs(a).max() > 0
    np.testing.assert_allclose(b, a, atol=1e-5)  # gradient-norm clip included (clipnorm 2)
    if stage != "scratch":
        before, after = two["teacher_sum"]
        assert before == after  # the replicated teacher was not updated


@pytest.mark.slow
def test_splits_that_four_devices_do_not_divide_are_padded_or_trimmed(tmp_path):
    """JAX shards every batch into N equal parts: the teacher cache pads its 202 images to a
    multiple of 4 (and drops the padding's logits), validation keeps 100 of its 102 images."""
    env = _env("jax", 4) | {"KD_TEST_TRAIN": "202", "KD_TEST_VAL": "102", "KD_TEST_BATCH": "48"}
    one = _run("distill-cached", 1, tmp_path / "one", env)
    four = _run("distill-cached", 4, tmp_path / "four", env)
    assert any(
        "validating on 100 of 102 images (a multiple of the 4 devices)" in line
        for line in four["log"]
    )
    assert not any("validating on" in line for line in one["log"])
    a, b = np.load(tmp_path / "one" / "weights.npy"), np.load(tmp_path / "four" / "weights.npy")
    # the cache's batches differ in size (padded to multiples of 4): float rounding only
    np.testing.assert_allclose(b, a, atol=1e-4)


@pytest.mark.slow
def test_a_resume_on_another_device_count_says_so_and_continues(tmp_path):
    env2, env1 = _env("jax", 2), _env("jax", 1)
    env2["KD_TEST_EPOCHS"] = env1["KD_TEST_EPOCHS"] = "5"
    ref = _run("scratch", 0, tmp_path / "ref", env2)
    out = tmp_path / "resumed"
    args = ["scratch", "0", str(out)]
    # An epoch of this tiny run can be shorter than the kill's wait: the resume goes on from
    # whichever epoch the checkpoint holds (CI once killed it after epoch 3 of 3, and once
    # between epoch 3's history line and its weights).
    done = _kill_after_epochs(args, out / "checkpoint" / "history.json", 2, env2, WORKER)
    if not 0 < done < 5:
        pytest.fail(f"the kill left {done} checkpointed epochs of 5; the test needs 1-4")
    assert (out / "checkpoint" / "devices.txt").read_text() == "2"
    resumed = _run("scratch", 0, out, env1)
    assert any(
        "note: resuming on 1 device(s) a run checkpointed on 2" in line for line in resumed["log"]
    ), resumed["log"]
    assert any(f"resuming after epoch {done}/5" in line for line in resumed["log"])
    assert DP_LINE in " ".join(ref["log"])
    a, b = np.load(tmp_path / "ref" / "weights.npy"), np.load(out / "weights.npy")
    np.testing.assert_allclose(b, a, atol=1e-4)


def test_bad_device_counts_are_refused_before_training(tmp_path, monkeypatch):
    import kd.parallel
    from kd.config import StudentConfig
    from kd.errors import ConfigError
    from kd.train import train_student_scratch

    x = np.zeros((100, 32, 32, 3), np.uint8)
    y = np.arange(100) % 10
    with pytest.raises(ConfigError, match=r"invalid devices=3: .* sees 1 device\(s\)\. Fix"):
        cfg = StudentConfig(devices=3, batch_size=30)
        train_student_scratch((x, y), (x, y), cfg, tmp_path / "a")
    monkeypatch.setattr(kd.parallel, "visible_devices", lambda: ["gpu0", "gpu1"])
    cfg = StudentConfig(batch_size=25)
    with pytest.raises(ConfigError, match=r"invalid batch_size=25: .* over 2 devices\. Fix: use"):
        train_student_scratch((x, y), (x, y), cfg, tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ----------------------------------------------------------------------------------------------
# Several machines: one process per replica of a multi-replica job, each told its place by
# TF_CONFIG as Vertex AI tells it (kd.parallel.join_cluster: MultiWorkerMirroredStrategy)
# ----------------------------------------------------------------------------------------------


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _replicas(
    stage: str, outs: list[Path], env: dict[str, str], chief_output: Path | None = None
) -> list[subprocess.Popen]:
    """One worker process per replica (replica 0 the chief), each writing to its ``outs``."""
    addresses = [f"127.0.0.1:{_free_port()}" for _ in outs]
    cluster = {"chief": addresses[:1], "worker": addresses[1:]}
    procs = []
    for i, out in enumerate(outs):
        task = {"type": "chief", "index": 0} if i == 0 else {"type": "worker", "index": i - 1}
        e = env | {"TF_CONFIG": json.dumps({"cluster": cluster, "task": task})}
        if chief_output is not None and i > 0:
            e["KD_CHIEF_OUTPUT"] = str(chief_output)
        procs.append(
            subprocess.Popen(
                [sys.executable, str(WORKER), stage, "0", str(out)],
                env=e,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
    return procs


def _finish(procs: list[subprocess.Popen], timeout: float = 600) -> list[dict]:
    results = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=timeout)
            assert p.returncode == 0, err[-3000:]
            results.append(json.loads(out.strip().splitlines()[-1]))
    finally:
        for p in procs:
            p.kill()
    return results


@pytest.mark.slow
def test_two_replicas_train_as_one_device_with_the_same_global_batch(tmp_path):
    """Distillation from cached teacher views (the teacher itself trained on both replicas
    first): the chief's student is the one-device student, the worker's the same."""
    env = _env("tensorflow", 1)
    one = _run("distill-cached", 1, tmp_path / "one", env)
    chief, worker = _finish(_replicas("distill-cached", [tmp_path / "r0", tmp_path / "r1"], env))
    assert DP_LINE in " ".join(chief["log"]) and "data-parallel" not in " ".join(one["log"])
    a = np.load(tmp_path / "one" / "weights.npy")
    b, c = np.load(tmp_path / "r0" / "weights.npy"), np.load(tmp_path / "r1" / "weights.npy")
    assert np.abs(a).max() > 0
    np.testing.assert_allclose(b, a, atol=1e-5)
    np.testing.assert_array_equal(c, b)
    assert chief["teacher_sum"][0] == chief["teacher_sum"][1]  # the teacher was not updated


@pytest.mark.slow
def test_a_retried_job_resumes_every_replica_from_the_chiefs_checkpoint(tmp_path):
    """Killed after an epoch; the retry's worker is a new machine (an empty output folder):
    it starts from the chief's checkpoint (KD_CHIEF_OUTPUT), so both resume from the same
    epoch and the result is the uninterrupted job's. (A worker that started from scratch
    would not take part in the chief's restore, and the job fails.)

    The reference is the uninterrupted two-replica job, not one device: over three epochs
    one device and two replicas drift apart by more than 1e-5 on some CPUs (1.2e-3 on an
    AMD EPYC without AVX-512, from epoch 2 on, with or without the clip); one device against
    two replicas is the test above's, over one epoch of distillation."""
    env = _env("tensorflow", 1) | {"KD_TEST_EPOCHS": "3"}
    _finish(_replicas("scratch", [tmp_path / "ref", tmp_path / "ref-worker"], env))
    chief = tmp_path / "chief"
    procs = _replicas("scratch", [chief, tmp_path / "w-first"], env, chief_output=chief)
    deadline = time.time() + 300
    while not list((chief / "checkpoint").glob("epoch-*.weights.h5")):  # an epoch saved
        assert time.time() < deadline and all(p.poll() is None for p in procs)
        time.sleep(0.05)
    for p in procs:
        p.kill()
        p.wait()
    assert not (chief / "model.keras").exists()  # killed before the end
    retry = _replicas("scratch", [chief, tmp_path / "w-retry"], env, chief_output=chief)
    resumed = [
        [line for line in r["log"] if "resuming after epoch" in line]
        for r in _finish(retry, timeout=240)
    ]
    assert resumed[0] and resumed[0] == resumed[1], resumed
    a, b = np.load(tmp_path / "ref" / "weights.npy"), np.load(chief / "weights.npy")
    np.testing.assert_allclose(b, a, atol=1e-5)
