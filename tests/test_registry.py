"""The Model Registry step (components/register_model.py over kd.registry), against a local
server that speaks the Vertex AI REST calls (tests/vertex_fake.py): what is sent, in order."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest
from kfp import dsl

sys.path.insert(0, str(Path(__file__).resolve().parent))
from vertex_fake import FakeVertex  # noqa: E402

from components.register_model import register_model  # noqa: E402
from kd.config import RegistryConfig, defaults  # noqa: E402
from kd.errors import ArtifactError, ConfigError  # noqa: E402

PROJECT, REGION = "my-project", "us-central1"
IMAGE = "us-docker.pkg.dev/vertex-ai/prediction/tf2-cpu.2-15:latest"
BLESSED_URI = "gs://my-bucket/root/kd-cifar10/run-1/export-model_7/blessed"
TEACHER_SHA = "0123456789abcdef" * 4
STUDENT_META = {
    "preset": "seed",
    "blessed": True,
    "teacher_uri": "gs://my-bucket/teachers/fast_teacher.keras",
    "teacher_sha256": TEACHER_SHA,
    "teacher_architecture": "fast_teacher_flip_tta",
    "kd_loss": "hinton",
}
SCORES = {
    "teacher_accuracy": 0.9141,
    "student_distilled_accuracy": 0.5812,
    "student_scratch_accuracy": 0.5607,
    "kd_gain_points": 2.05,
    "gate_passed": 1,
}


def _run(fake: FakeVertex, tmp_path: Path, uri: str = BLESSED_URI, **params: Any) -> Any:
    """The component's own function, with the pipeline's registry_* parameters."""
    values = {f"registry_{k}": v for k, v in defaults(RegistryConfig).items()}
    values.update(
        registry_upload=True,
        registry_serving_image=IMAGE,
        registry_project=PROJECT,
        registry_location=REGION,
        registry_api_endpoint=fake.url,
    )
    values.update(params)
    blessed = dsl.Model(name="blessed", uri=uri, metadata=dict(STUDENT_META))
    metrics = dsl.Metrics(name="metrics", uri=str(tmp_path / "metrics"), metadata=dict(SCORES))
    out = dsl.Artifact(name="vertex_model", uri=str(tmp_path / "vertex_model"), metadata={})
    register_model.python_func(blessed=blessed, metrics=metrics, vertex_model=out, **values)
    return out


def test_upload_as_a_new_version_and_deploy(tmp_path: Path) -> None:
    parent = f"projects/{PROJECT}/locations/{REGION}/models/55"
    endpoint = f"projects/{PROJECT}/locations/{REGION}/endpoints/9"
    with FakeVertex() as fake:
        out = _run(
            fake,
            tmp_path,
            registry_parent_model=parent,
            registry_version_aliases="blessed,candidate",
            registry_deploy_endpoint=endpoint,
            registry_machine_type="n1-standard-8",
            registry_accelerator_type="NVIDIA_TESLA_T4",
            registry_accelerator_count=1,
            registry_min_replicas=1,
            registry_max_replicas=3,
        )
    calls = [(r["method"], r["path"]) for r in fake.requests]
    assert calls == [
        ("POST", f"/v1/projects/{PROJECT}/locations/{REGION}/models:upload"),
        ("GET", f"/ui/{parent}/operations/1"),  # the upload's long-running operation
        ("POST", f"/v1/{endpoint}:deployModel"),
        ("GET", f"/ui/{endpoint}/operations/2"),
    ]
    upload = fake.requests[0]["body"]
    assert upload["parentModel"] == parent
    model = upload["model"]
    assert model["artifactUri"] == BLESSED_URI  # saved_model.pb at the artifact's root
    assert model["containerSpec"] == {"imageUri": IMAGE}
    assert model["versionAliases"] == ["blessed", "candidate"]
    assert model["displayName"] == "kd-student"
    assert model["labels"] == {
        "kd-pipeline": "blessed",
        "test-accuracy": "58-12",
        "scratch-test-accuracy": "56-07",
        "teacher-test-accuracy": "91-41",
        "kd-gain-points": "2-05",
        "teacher-architecture": "fast_teacher_flip_tta",
        "teacher-sha256": TEACHER_SHA[:16],
        "kd-loss": "hinton",
    }
    for text in (TEACHER_SHA, STUDENT_META["teacher_uri"], "distilled 58.12 %", "+2.05 points"):
        assert text in model["description"]
    deploy = fake.requests[2]["body"]
    assert deploy["trafficSplit"] == {"0": 100}
    dm = deploy["deployedModel"]
    assert dm["model"] == f"{parent}@2"  # the version just uploaded
    res = dm["dedicatedResources"]
    assert res["minReplicaCount"] == 1 and res["maxReplicaCount"] == 3
    assert res["machineSpec"]["machineType"] == "n1-standard-8"
    assert res["machineSpec"]["acceleratorCount"] == 1
    assert res["machineSpec"]["acceleratorType"] in ("NVIDIA_TESLA_T4", 5)  # name or enum int
    # no credential goes to a plain-http endpoint
    assert all("authorization" not in r["headers"] for r in fake.requests)
    assert out.metadata == {
        "resourceName": parent,
        "version_id": "2",
        "version_aliases": "blessed,candidate",
        "endpoint": endpoint,
        "deployed_model_id": "77",
    }
    assert out.uri == f"{fake.url}/v1/{parent}"


def test_upload_of_a_new_model_without_deployment(tmp_path: Path) -> None:
    with FakeVertex() as fake:
        out = _run(fake, tmp_path)
    assert [r["method"] for r in fake.requests] == ["POST", "GET"]
    body = fake.requests[0]["body"]
    assert "parentModel" not in body and body["model"]["versionAliases"] == ["blessed"]
    assert out.metadata["resourceName"] == f"projects/{PROJECT}/locations/{REGION}/models/4242"
    assert out.metadata["version_id"] == "1" and "endpoint" not in out.metadata


def test_a_refused_upload_names_the_reason_and_the_fix(tmp_path: Path) -> None:
    with FakeVertex() as fake:
        fake.fail_with = (403, "PERMISSION_DENIED")
        with pytest.raises(ArtifactError) as err:
            _run(fake, tmp_path)
    msg = str(err.value)
    assert "Vertex AI could not upload the model" in msg and "denied" in msg
    assert f"roles/aiplatform.user on project {PROJECT}" in msg
    assert len(fake.requests) == 1


def test_a_model_outside_cloud_storage_is_refused_before_any_call(tmp_path: Path) -> None:
    with FakeVertex() as fake:
        with pytest.raises(ArtifactError, match="must be in Cloud Storage. Fix: run on Vertex"):
            _run(fake, tmp_path, uri=str(tmp_path / "blessed"))
    assert fake.requests == []


def test_bad_registry_parameters_are_refused_before_any_call(tmp_path: Path) -> None:
    with FakeVertex() as fake:
        with pytest.raises(ConfigError, match="invalid registry_serving_image=''"):
            _run(fake, tmp_path, registry_serving_image="")
        with pytest.raises(ConfigError, match="invalid registry_parent_model='models/5'"):
            _run(fake, tmp_path, registry_parent_model="models/5")
    assert fake.requests == []


def test_submit_to_vertex_registers_in_the_runs_own_project_and_region(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``pipeline.py submit --target vertex`` fills registry_project / registry_location from
    --project / --region when they are not given (the job's parameters carry them)."""
    import pipeline
    import submit

    sent: dict[str, Any] = {}

    def fake_submit_vertex(package: str, **kwargs: Any) -> dict[str, Any]:
        sent.update(kwargs)
        return {"job_name": "j", "state": "PENDING", "dashboard_url": "u"}

    monkeypatch.setattr(submit, "submit_vertex", fake_submit_vertex)
    args = ["submit", "--target", "vertex", "--project", PROJECT, "--region", REGION]
    args += ["--pipeline-root", "gs://b/root", "--param", "registry_upload=true"]
    assert pipeline.main([*args, "--param", f"registry_serving_image={IMAGE}"]) == 0
    assert sent["params"]["registry_project"] == PROJECT
    assert sent["params"]["registry_location"] == REGION
    sent.clear()
    other = ["--param", "registry_project=registry-project"]
    assert pipeline.main([*args, "--param", f"registry_serving_image={IMAGE}", *other]) == 0
    assert sent["params"]["registry_project"] == "registry-project"
