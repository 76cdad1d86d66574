"""The Vertex AI Model Registry: register the blessed student, optionally deploy it.

Over the Vertex AI v1 API clients of ``google-cloud-aiplatform`` (``aiplatform_v1``'s
``ModelServiceClient`` and ``EndpointServiceClient``), REST transport: the calls are
``models.upload`` (a long-running operation, polled until done), then optionally
``endpoints.deployModel`` (another). Not ``google-cloud-pipeline-components``'
``ModelUploadOp`` / ``ModelDeployOp``: its releases that support KFP 2 require
``google-cloud-aiplatform<2`` and this project pins 2.x (pip refuses the pair). Not the
high-level ``aiplatform.Model.upload`` either: it makes further calls (the uploaded model is
read back, an endpoint object is built) that this step does not need, and the v1 clients make
exactly the two calls a reviewer or a test can check.

Credentials are Application Default Credentials (on Vertex AI: the run's service account).
To an ``http://`` endpoint (a local test server) none is sent: a token must not travel in the
clear. Nothing here prints or records a credential.
"""

from __future__ import annotations

import re
from typing import Any

from kd.config import RegistryConfig
from kd.errors import ArtifactError

#: Seconds to wait for each long-running operation (a deployment can take ~15-30 minutes).
OPERATION_TIMEOUT_S = 3600


def api_endpoint(cfg: RegistryConfig) -> str:
    """The API endpoint: ``cfg.api_endpoint`` or the region's own."""
    return cfg.api_endpoint or f"https://{cfg.location}-aiplatform.googleapis.com"


def _client(kind: str, cfg: RegistryConfig) -> Any:
    return vertex_client(kind, api_endpoint(cfg))


def vertex_client(kind: str, endpoint: str) -> Any:
    """The ``aiplatform_v1`` client ``kind`` (e.g. ``"JobServiceClient"``) over REST to
    ``endpoint``; no credential to an ``http://`` endpoint."""
    from google.api_core.client_options import ClientOptions
    from google.cloud import aiplatform_v1

    credentials = None
    if endpoint.startswith("http://"):
        from google.auth.credentials import AnonymousCredentials

        credentials = AnonymousCredentials()
    cls = getattr(aiplatform_v1, kind)
    return cls(
        credentials=credentials,
        transport="rest",
        client_options=ClientOptions(api_endpoint=endpoint),
    )


def label_value(value: Any) -> str:
    """A Vertex AI label value: lower case letters, digits, ``_`` and ``-``, at most 63
    characters (``0.5812`` -> ``0-5812``)."""
    return re.sub(r"[^a-z0-9_-]", "-", str(value).lower())[:63]


def model_labels(metadata: dict[str, Any], metrics: dict[str, Any]) -> dict[str, str]:
    """Labels of the registered version: where it came from and how it scored (test
    accuracies in %, the KD gain in points), the teacher's architecture and sha256 prefix."""
    labels = {"kd-pipeline": "blessed"}
    for key, name in (
        ("student_distilled_accuracy", "test-accuracy"),
        ("student_scratch_accuracy", "scratch-test-accuracy"),
        ("teacher_accuracy", "teacher-test-accuracy"),
    ):
        if isinstance(metrics.get(key), int | float):
            labels[name] = label_value(f"{100 * metrics[key]:.2f}")
    if isinstance(metrics.get("kd_gain_points"), int | float):
        labels["kd-gain-points"] = label_value(f"{metrics['kd_gain_points']:.2f}")
    if metadata.get("teacher_architecture"):
        labels["teacher-architecture"] = label_value(metadata["teacher_architecture"])
    if metadata.get("teacher_sha256"):
        labels["teacher-sha256"] = label_value(str(metadata["teacher_sha256"])[:16])
    if metadata.get("kd_loss"):
        labels["kd-loss"] = label_value(metadata["kd_loss"])
    return labels


def model_description(metadata: dict[str, Any], metrics: dict[str, Any]) -> str:
    """The version's description: the student, its teacher (URI, sha256) and the scores."""
    parts = [f"Distilled {metadata.get('preset', '?')} student (kd-pipeline)"]
    if metadata.get("teacher_uri") or metadata.get("teacher_sha256"):
        parts.append(
            f"teacher {metadata.get('teacher_architecture', '?')} from "
            f"{metadata.get('teacher_uri', '?')} (sha256 {metadata.get('teacher_sha256', '?')})"
        )
    scores = [
        f"{name} {100 * metrics[key]:.2f} %"
        for key, name in (
            ("student_distilled_accuracy", "distilled"),
            ("student_scratch_accuracy", "scratch"),
            ("teacher_accuracy", "teacher"),
        )
        if isinstance(metrics.get(key), int | float)
    ]
    if scores:
        parts.append("test accuracy: " + ", ".join(scores))
    if isinstance(metrics.get("kd_gain_points"), int | float):
        parts.append(f"KD gain {metrics['kd_gain_points']:+.2f} points")
    return "; ".join(parts)


def upload_model(
    cfg: RegistryConfig,
    artifact_uri: str,
    metadata: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
    timeout_s: float = OPERATION_TIMEOUT_S,
) -> dict[str, Any]:
    """Register the SavedModel at ``artifact_uri`` (``saved_model.pb`` at its root: the blessed
    artifact) with ``cfg.serving_image``, as a new version of ``cfg.parent_model`` when set,
    with ``cfg.version_aliases``, labels and a description from the student's ``metadata``
    and the evaluation's ``metrics``; then deploy it to ``cfg.deploy_endpoint`` when set.

    Returns:
        ``{"model": "projects/.../models/ID", "model_version_id", "version_aliases",
        "labels", "api_endpoint"}`` and, after a deployment, ``"endpoint"`` and
        ``"deployed_model_id"``.

    Raises:
        ArtifactError: the artifact is not in Cloud Storage, or Vertex AI refused a call (the
            message has its reason and the fix).
    """
    from google.cloud import aiplatform_v1

    if not artifact_uri.startswith("gs://"):
        raise ArtifactError(
            f"cannot register {artifact_uri} in the Vertex AI Model Registry: the model's "
            "files must be in Cloud Storage. Fix: run on Vertex AI (pipeline.py submit "
            "--target vertex) with a gs:// pipeline root"
        )
    metadata, metrics = metadata or {}, metrics or {}
    labels = model_labels(metadata, metrics)
    model = aiplatform_v1.Model(
        display_name=cfg.display_name,
        description=model_description(metadata, metrics),
        artifact_uri=artifact_uri.rstrip("/"),
        container_spec=aiplatform_v1.ModelContainerSpec(image_uri=cfg.serving_image),
        labels=labels,
        version_aliases=cfg.aliases(),
    )
    request = aiplatform_v1.UploadModelRequest(
        parent=f"projects/{cfg.project}/locations/{cfg.location}",
        model=model,
        parent_model=cfg.parent_model,
    )
    result: dict[str, Any] = {"api_endpoint": api_endpoint(cfg), "labels": labels}
    try:
        response = _client("ModelServiceClient", cfg).upload_model(request=request)
        uploaded = response.result(timeout=timeout_s)
    except Exception as exc:
        raise _vertex_error(exc, "upload the model", cfg) from exc
    result.update(
        model=uploaded.model,
        model_version_id=uploaded.model_version_id,
        version_aliases=cfg.aliases(),
    )
    if cfg.deploy_endpoint:
        result.update(deploy_model(cfg, uploaded.model, uploaded.model_version_id, timeout_s))
    return result


def deploy_model(
    cfg: RegistryConfig, model: str, version_id: str, timeout_s: float = OPERATION_TIMEOUT_S
) -> dict[str, Any]:
    """Deploy ``model`` version ``version_id`` to ``cfg.deploy_endpoint`` on dedicated
    resources (machine type, accelerator, min/max replicas) with 100 % of the traffic.

    Models already deployed there stay deployed with 0 % of the traffic (Vertex AI keeps
    them, and bills their replicas) until undeployed: the pipeline does not undeploy what it
    did not deploy. README says how to undeploy the old ones."""
    from google.cloud import aiplatform_v1

    spec = aiplatform_v1.MachineSpec(machine_type=cfg.machine_type)
    if cfg.accelerator_type:
        spec.accelerator_type = cfg.accelerator_type  # type: ignore[assignment]  # by name
        spec.accelerator_count = cfg.accelerator_count
    deployed = aiplatform_v1.DeployedModel(
        model=f"{model}@{version_id}" if version_id else model,
        display_name=cfg.display_name,
        dedicated_resources=aiplatform_v1.DedicatedResources(
            machine_spec=spec,
            min_replica_count=cfg.min_replicas,
            max_replica_count=cfg.max_replicas,
        ),
    )
    try:
        response = _client("EndpointServiceClient", cfg).deploy_model(
            endpoint=cfg.deploy_endpoint, deployed_model=deployed, traffic_split={"0": 100}
        )
        done = response.result(timeout=timeout_s)
    except Exception as exc:
        raise _vertex_error(exc, f"deploy to {cfg.deploy_endpoint}", cfg) from exc
    return {"endpoint": cfg.deploy_endpoint, "deployed_model_id": done.deployed_model.id}


def _vertex_error(exc: BaseException, what: str, cfg: RegistryConfig) -> ArtifactError:
    from google.api_core import exceptions as gexc

    reason = str(getattr(exc, "message", "") or exc).splitlines()[0][:300]
    # REST answers Forbidden / Unauthorized (403 / 401), gRPC PermissionDenied / Unauthenticated
    if isinstance(
        exc, gexc.Forbidden | gexc.Unauthorized | gexc.PermissionDenied | gexc.Unauthenticated
    ):
        fix = f"give the run's service account roles/aiplatform.user on project {cfg.project}"
    elif type(exc).__name__ == "DefaultCredentialsError":
        fix = "run on Vertex AI (its service account), or gcloud auth application-default login"
    elif isinstance(exc, gexc.NotFound):
        fix = "check registry_project, registry_location, registry_parent_model and "
        fix += "registry_deploy_endpoint"
    else:
        fix = f"check the registry_* parameters and that {api_endpoint(cfg)} is reachable"
    return ArtifactError(f"Vertex AI could not {what} ({type(exc).__name__}: {reason}). Fix: {fix}")
