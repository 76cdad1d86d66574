"""Training steps as multi-replica Vertex AI custom jobs (``pipeline.py compile --replicas R``):
the compiled launcher (kd.custom_job) against a local server that speaks the Vertex AI REST
calls (tests/vertex_fake.py), and the cluster spec each replica reads (kd.parallel)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vertex_fake import FakeVertex  # noqa: E402

import pipeline  # noqa: E402
from kd import custom_job, parallel  # noqa: E402
from kd.errors import ArtifactError, ConfigError  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
IMAGE = "us-docker.pkg.dev/my-project/repo/kd-pipeline:0.1.0"
PROJECT, REGION = "my-project", "us-central1"
ROOT = "gs://my-bucket/root/kd-cifar10/run-1"
EXECUTOR_INPUT = {
    "inputs": {
        "parameterValues": {"epochs": 20, "batch_size": 128},
        "artifacts": {
            "train": {"artifacts": [{"name": "train", "uri": f"{ROOT}/data-split/train"}]},
        },
    },
    "outputs": {
        "artifacts": {
            "model": {"artifacts": [{"name": "model", "uri": f"{ROOT}/distill-student/model"}]},
            "metrics": {
                "artifacts": [{"name": "metrics", "uri": f"{ROOT}/distill-student/metrics"}]
            },
        },
        "outputFile": f"/gcs/{ROOT[5:]}/distill-student/executor_output.json",
    },
}


def _compile(tmp_path: Path, name: str, **res: Any) -> dict[str, Any]:
    out = pipeline.compile_pipeline(
        tmp_path / f"{name}.yaml", res=pipeline.Resources(target="vertex", **res), image=IMAGE
    )
    return yaml.safe_load(out.read_text())


def _executors(spec: dict[str, Any]) -> dict[str, Any]:
    return spec["deploymentSpec"]["executors"]


def _launcher_args(container: dict[str, Any], fake: FakeVertex) -> list[str]:
    """The compiled launcher's arguments as Vertex AI Pipelines fills them in."""
    fill = {
        "{{$}}": json.dumps(EXECUTOR_INPUT),
        pipeline.PROJECT_PLACEHOLDER: PROJECT,
        pipeline.LOCATION_PLACEHOLDER: REGION,
    }
    return [fill.get(a, a) for a in container["args"]] + ["--api-endpoint", fake.url]


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, dict]:
    tmp = tmp_path_factory.mktemp("compiled")
    one = _compile(tmp, "one", gpus=1, accelerator="A100")
    three = _compile(tmp, "three", gpus=1, accelerator="A100", replicas=3)
    return one, three


def test_compiled_training_steps_run_the_launcher_on_a_light_node(compiled) -> None:
    from google.protobuf import json_format
    from kfp.pipeline_spec import pipeline_spec_pb2

    one, three = compiled
    json_format.ParseDict(three, pipeline_spec_pb2.PipelineSpec())  # still a valid spec
    assert "kd.custom_job" not in json.dumps(one)  # one replica: the steps as they were
    light = _executors(one)["exec-data-split"]["container"]["resources"]
    for name, executor in _executors(three).items():
        container = executor.get("container", {})
        if name in pipeline.TRAINING_EXECUTORS:
            assert container["command"] == ["python3", "-m", "kd.custom_job"]
            assert container["image"] == IMAGE
            assert container["resources"] == light  # the GPUs are the job's, not the launcher's
        else:
            assert executor == _executors(one)[name]
    assert three["root"] == one["root"]  # the same tasks, parameters and wiring


def test_launcher_creates_the_job_of_the_compiled_step_and_waits_for_it(
    compiled, capsys: pytest.CaptureFixture[str]
) -> None:
    from google.cloud.aiplatform_v1 import AcceleratorType

    one, three = compiled
    step = _executors(one)["exec-distill-student"]["container"]
    with FakeVertex() as fake:
        args = _launcher_args(_executors(three)["exec-distill-student"]["container"], fake)
        assert custom_job.main([*args, "--poll-s", "0"]) == 0
    posts = fake.calls("POST")
    assert [c["path"] for c in posts] == [f"/v1/projects/{PROJECT}/locations/{REGION}/customJobs"]
    assert len(fake.calls("GET")) == 2  # polled until it succeeded
    assert not any("authorization" in c["headers"] for c in fake.requests)  # http: no token
    body = posts[0]["body"]
    assert body["displayName"] == "kd-pipeline distill-student"
    chief, workers = body["jobSpec"]["workerPoolSpecs"]
    for pool, count in ((chief, "1"), (workers, "2")):
        assert pool["replicaCount"] == count
        assert pool["machineSpec"] == {
            "machineType": "a2-highgpu-1g",
            # the REST transport sends enums as their numbers
            "acceleratorType": AcceleratorType.NVIDIA_TESLA_A100.value,
            "acceleratorCount": 1,
        }
        container = pool["containerSpec"]
        assert container["imageUri"] == IMAGE
        assert container["command"] == step["command"]  # the step's own program
        i = step["args"].index("{{$}}")
        assert container["args"][:i] + container["args"][i + 1 :] == (
            step["args"][:i] + step["args"][i + 1 :]
        )
    chief_input = json.loads(chief["containerSpec"]["args"][i])
    worker_input = json.loads(workers["containerSpec"]["args"][i])
    assert chief_input == EXECUTOR_INPUT  # the chief writes the step's outputs
    assert worker_input["inputs"] == EXECUTOR_INPUT["inputs"]
    outs = worker_input["outputs"]
    uris = [a["uri"] for e in outs["artifacts"].values() for a in e["artifacts"]]
    assert all(u.startswith(custom_job.WORKER_SCRATCH) for u in [*uris, outs["outputFile"]])
    assert workers["containerSpec"]["env"] == [
        {"name": "KD_CHIEF_OUTPUT", "value": f"/gcs/{ROOT[5:]}/distill-student/model"}
    ]
    assert "env" not in chief["containerSpec"] or not chief["containerSpec"]["env"]
    assert "JOB_STATE_SUCCEEDED" in capsys.readouterr().out


def test_a_failed_job_fails_the_step_with_its_own_reason(
    compiled, capsys: pytest.CaptureFixture[str]
) -> None:
    _, three = compiled
    with FakeVertex() as fake:
        fake.job_states = ["JOB_STATE_RUNNING", "JOB_STATE_FAILED"]
        fake.job_error = "The replica workerpool1-0 exited with a non-zero status of 137."
        args = _launcher_args(_executors(three)["exec-train-teacher"]["container"], fake)
        assert custom_job.main([*args, "--poll-s", "0"]) == 1
    err = capsys.readouterr().err
    assert "ended JOB_STATE_FAILED: The replica workerpool1-0 exited" in err
    assert "a retry resumes from the last checkpointed epoch" in err


def test_outputs_outside_cloud_storage_are_refused_before_any_call(compiled) -> None:
    _, three = compiled
    spec = custom_job.ReplicaSpec.from_json(
        _executors(three)["exec-train-student-scratch"]["container"]["args"][3]
    )
    local = json.loads(json.dumps(EXECUTOR_INPUT).replace("gs://", "/tmp/"))
    with FakeVertex() as fake:
        with pytest.raises(ArtifactError, match="not in Cloud Storage.*gs:// pipeline root"):
            custom_job.run_custom_job(spec, local, PROJECT, REGION, api_endpoint=fake.url)
    assert fake.requests == []


def test_a_stopped_step_cancels_its_job(compiled, tmp_path: Path) -> None:
    _, three = compiled
    with FakeVertex() as fake:
        fake.job_states = ["JOB_STATE_RUNNING"] * 10_000
        args = _launcher_args(_executors(three)["exec-train-teacher"]["container"], fake)
        proc = subprocess.Popen(
            [sys.executable, "-m", "kd.custom_job", *args, "--poll-s", "0.1"],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.time() + 120
        while len(fake.calls("GET")) < 2 and time.time() < deadline:
            time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=60)[0]
    assert proc.returncode == 128 + signal.SIGTERM, out
    cancels = [c["path"] for c in fake.calls("POST") if c["path"].endswith(":cancel")]
    assert cancels == [f"/v1/projects/{PROJECT}/locations/{REGION}/customJobs/1:cancel"]
    assert "cancelling" in out


def test_transient_poll_errors_are_retried(compiled) -> None:
    _, three = compiled
    with FakeVertex() as fake:
        fake.job_poll_failures = 3
        args = _launcher_args(_executors(three)["exec-train-teacher"]["container"], fake)
        assert custom_job.main([*args, "--poll-s", "0"]) == 0
    assert not [c for c in fake.calls("POST") if c["path"].endswith(":cancel")]


def test_a_job_the_launcher_loses_is_cancelled(
    compiled, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _, three = compiled
    monkeypatch.setattr(custom_job, "POLL_RETRIES", 2)
    with FakeVertex() as fake:
        fake.job_poll_failures = 100
        args = _launcher_args(_executors(three)["exec-train-teacher"]["container"], fake)
        assert custom_job.main([*args, "--poll-s", "0"]) == 1
    assert [c["path"] for c in fake.calls("POST") if c["path"].endswith(":cancel")] == [
        f"/v1/projects/{PROJECT}/locations/{REGION}/customJobs/1:cancel"
    ]
    assert "lost custom job" in capsys.readouterr().err


def test_submit_writes_the_project_and_region_into_the_steps(tmp_path: Path) -> None:
    out = pipeline.compile_pipeline(
        tmp_path / "p.yaml",
        res=pipeline.Resources(target="vertex", gpus=1, replicas=2),
        place=("p1", "europe-west4"),
    )
    args = _executors(yaml.safe_load(out.read_text()))["exec-train-teacher"]["container"]["args"]
    assert args[args.index("--project") + 1] == "p1"
    assert args[args.index("--location") + 1] == "europe-west4"


def test_unfilled_placeholders_fall_back_to_the_tasks_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ph = (pipeline.PROJECT_PLACEHOLDER, pipeline.LOCATION_PLACEHOLDER)
    monkeypatch.setenv("CLOUD_ML_PROJECT_ID", "env-project")
    monkeypatch.setenv("CLOUD_ML_REGION", "asia-east1")
    assert custom_job.resolve_place(*ph) == ("env-project", "asia-east1")
    assert custom_job.resolve_place("p", "us-central1") == ("p", "us-central1")
    monkeypatch.delenv("CLOUD_ML_REGION")
    with pytest.raises(ConfigError, match="needs a project and a location.*Fix: submit"):
        custom_job.resolve_place(*ph)


def test_default_machine_types_follow_the_accelerator() -> None:
    res = pipeline.Resources(target="vertex", gpus=2, accelerator="L4", replicas=2)
    assert res.replica_machine() == "g2-standard-24"
    own = pipeline.Resources(target="vertex", gpus=3, accelerator="L4", replicas=2)
    with pytest.raises(SystemExit, match="no default machine type for 3 x NVIDIA_L4"):
        own.replica_machine()
    chosen = pipeline.Resources(
        target="vertex", gpus=3, accelerator="L4", replicas=2, machine_type="g2-custom-3"
    )
    assert chosen.replica_machine() == "g2-custom-3"


# ----------------------------------------------------------------------------------------------
# The cluster spec each replica reads
# ----------------------------------------------------------------------------------------------


def _tf_config(monkeypatch: pytest.MonkeyPatch, kind: str, index: int, **jobs: Any) -> None:
    cluster = jobs or {"chief": ["h0:2222"], "worker": ["h1:2222", "h2:2222"]}
    task = {"type": kind, "index": index}
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": cluster, "task": task}))


def test_cluster_reads_the_replicas_of_tf_config(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("TF_CONFIG", raising=False)
    assert parallel.cluster() == parallel.Cluster(1, 0)
    _tf_config(monkeypatch, "chief", 0)
    assert parallel.cluster() == parallel.Cluster(3, 0) and parallel.cluster().chief
    _tf_config(monkeypatch, "worker", 1)
    assert parallel.cluster() == parallel.Cluster(3, 2) and not parallel.cluster().chief
    _tf_config(monkeypatch, "worker", 0, worker=["h0:1", "h1:1"])  # no chief: worker 0 is
    assert parallel.cluster().chief


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ("{not json", "TF_CONFIG is not a cluster spec"),
        (
            json.dumps({"cluster": {"chief": ["a"], "ps": ["b"]}, "task": {"type": "chief"}}),
            "only one chief and workers train here",
        ),
        (
            json.dumps({"cluster": {"chief": ["a"]}, "task": {"type": "worker", "index": 3}}),
            "not in its cluster of 1",
        ),
    ],
    ids=["not-json", "parameter-server", "task-outside-cluster"],
)
def test_a_bad_tf_config_is_a_clear_error(
    raw: str, match: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TF_CONFIG", raw)
    with pytest.raises(ConfigError, match=match):
        parallel.cluster()


def test_a_worker_always_resumes_from_the_chiefs_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    chief = tmp_path / "chief" / "model"
    (chief / "checkpoint").mkdir(parents=True)
    (chief / "checkpoint" / "epoch-0003.weights.h5").write_text("3")
    (chief / "checkpoint" / ".epoch-0004.tmp.weights.h5").write_text("half")
    monkeypatch.setenv("KD_CHIEF_OUTPUT", str(chief))
    mine = tmp_path / "worker" / "model" / "checkpoint"
    _tf_config(monkeypatch, "chief", 0)
    parallel.seed_checkpoint(mine)
    assert not mine.exists()  # the chief keeps its own
    _tf_config(monkeypatch, "worker", 0)
    parallel.seed_checkpoint(mine)
    assert sorted(p.name for p in mine.iterdir()) == ["epoch-0003.weights.h5"]  # no temporary
    (mine / "epoch-0001.weights.h5").write_text("1")  # a worker's own, older (a restart)
    parallel.seed_checkpoint(mine)
    assert sorted(p.name for p in mine.iterdir()) == ["epoch-0003.weights.h5"]
    monkeypatch.setenv("KD_CHIEF_OUTPUT", str(tmp_path / "chief-without-one"))
    parallel.seed_checkpoint(mine)
    assert not mine.exists()  # the chief starts afresh: so does the worker


@pytest.mark.parametrize("stage", ["train_teacher", "train_student_scratch", "distill_student"])
def test_each_training_stage_joins_the_cluster_before_anything_else(
    stage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MultiWorkerMirroredStrategy must start before the process's first TensorFlow op: the
    stage (what its component calls) joins first, before it reads a Dataset or a model."""
    import kd.model_folder
    from kd import stages

    calls: list[str] = []

    class Joined(Exception):
        pass

    def join() -> None:
        calls.append("join")
        raise Joined

    monkeypatch.setattr(parallel, "join_cluster", join)
    monkeypatch.setattr(kd.model_folder, "load_model", lambda *a, **k: calls.append("model"))
    monkeypatch.setattr(stages, "_load", lambda *a, **k: calls.append("data"))
    args = [("train", None), ("val", None), None, str(tmp_path / "out")]
    with pytest.raises(Joined):
        if stage == "distill_student":
            stages.distill_student(str(tmp_path / "teacher"), *args)
        else:
            getattr(stages, stage)(*args)
    assert calls == ["join"]


def test_a_replica_refuses_another_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    _tf_config(monkeypatch, "chief", 0)
    monkeypatch.setattr(parallel.keras.backend, "backend", lambda: "jax")
    with pytest.raises(ConfigError, match="KERAS_BACKEND=tensorflow"):
        parallel.join_cluster()


def test_submit_passes_its_project_region_and_service_account_to_the_jobs(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``pipeline.py submit --replicas 2``: the package it submits has them in each step."""
    import submit

    seen: dict[str, Any] = {}

    def fake_submit(args: Any, package: str) -> None:
        seen.update(yaml.safe_load(Path(package).read_text()))

    monkeypatch.setattr(submit, "submit_from_args", fake_submit)
    argv = ["submit", "--target", "vertex", "--project", "p9", "--region", "europe-west4"]
    argv += ["--pipeline-root", "gs://b/root", "--service-account", "sa@p9.iam.gserviceaccount.com"]
    argv += ["--replicas", "2", "--gpus", "1", "--accelerator", "L4"]
    assert pipeline.main(argv) == 0
    container = _executors(seen)["exec-distill-student"]["container"]
    args = container["args"]
    assert args[args.index("--project") + 1] == "p9"
    assert args[args.index("--location") + 1] == "europe-west4"
    spec = custom_job.ReplicaSpec.from_json(args[args.index("--spec") + 1])
    assert spec.service_account == "sa@p9.iam.gserviceaccount.com"
    assert (spec.replicas, spec.machine_type, spec.accelerator_type) == (
        2,
        "g2-standard-8",
        "NVIDIA_L4",
    )
