"""Run one pipeline step as a Vertex AI custom job of several replicas (``pipeline.py
compile --target vertex --replicas R``).

``google-cloud-pipeline-components``' ``create_custom_training_job_from_component`` would do
this, but its releases that support KFP 2 require ``google-cloud-aiplatform<2`` and this
project pins 2.x (pip refuses the pair), so the equivalent is written here: the compiled step
runs :func:`main` (``python -m kd.custom_job``) on a light node, which

1. reads the step's executor input (KFP's ``{{$}}``: its parameters, and the ``gs://`` URIs
   of its input and output artifacts),
2. creates a custom job (``aiplatform_v1`` ``JobServiceClient.create_custom_job``, REST)
   whose worker pool 0 is the chief (one replica) and pool 1 the other R - 1, each on
   ``machine_type`` with ``accelerator_count`` GPUs, each running the step's own container
   command with its executor input: the chief's unchanged, so it writes the step's outputs
   (through Vertex AI's ``/gcs/`` mount); the workers' with every output moved to a local
   scratch folder (:func:`worker_executor_input`) and ``KD_CHIEF_OUTPUT`` naming the chief's
   ``model`` output, so that a retried job resumes them from the chief's checkpoint
   (:func:`kd.parallel.seed_checkpoint`),
3. polls the job until it ends, and fails with the job's own error if it does not succeed;
   cancels it if the step is stopped (SIGTERM).

On every replica Vertex AI sets ``TF_CONFIG``; the training stage reads it
(:func:`kd.parallel.join_cluster`) and trains over all the replicas' devices together with
``tf.distribute.MultiWorkerMirroredStrategy``. A retry of the step (the pipeline's retry
policy) creates a new job, which resumes from the last checkpointed epoch.
"""

from __future__ import annotations

import argparse
import copy
import json
import signal
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from kd.errors import ArtifactError, ConfigError

#: On a non-chief replica: the chief's output folder of the step (read by kd.parallel).
CHIEF_OUTPUT_ENV = "KD_CHIEF_OUTPUT"

#: Where the step's executor input goes in ``ReplicaSpec.args`` (KFP's ``{{$}}`` is replaced
#: by this marker at compile time: inside the launcher's own arguments KFP would fill it in).
EXECUTOR_INPUT = "KD_EXECUTOR_INPUT"
#: The non-chief replicas' outputs (a local folder of their VM, thrown away with it).
WORKER_SCRATCH = "/tmp/kd-replica-outputs"
#: The output artifact whose folder holds a training step's checkpoint.
MODEL_OUTPUT = "model"
DONE = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"}
POLL_S = 30.0


@dataclass(frozen=True)
class ReplicaSpec:
    """What the compiler fixes of one multi-replica step.

    Args:
        replicas: machines the step trains on (R >= 2): the chief and R - 1 workers.
        machine_type: each replica's Compute Engine machine type (``a2-highgpu-1g``).
        accelerator_type: each replica's GPU type, a Vertex AI name (``NVIDIA_TESLA_A100``);
            empty: no GPU.
        accelerator_count: GPUs per replica.
        image: the container image of every replica (the step's own).
        command: the step's container command.
        args: the step's container arguments, :data:`EXECUTOR_INPUT` where its executor input
            goes.
        service_account: the service account the job runs as (empty: Vertex AI's default).
    """

    replicas: int
    machine_type: str
    image: str
    command: list[str]
    args: list[str]
    accelerator_type: str = ""
    accelerator_count: int = 0
    service_account: str = ""
    display_name: str = field(default="kd-pipeline-step")

    def __post_init__(self) -> None:
        if not isinstance(self.replicas, int) or self.replicas < 2:
            raise ConfigError(f"invalid replicas={self.replicas!r}: a custom job step needs >= 2")
        if not self.machine_type:
            raise ConfigError("a multi-replica step needs a machine_type (e.g. n1-standard-8)")
        if EXECUTOR_INPUT not in self.args:
            raise ConfigError(f"the step's args have no {EXECUTOR_INPUT} marker: {self.args}")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> ReplicaSpec:
        return cls(**json.loads(text))


def local_path(uri: str) -> str:
    """Where a custom job's container sees ``uri``: ``gs://B/P`` is ``/gcs/B/P`` (Vertex AI's
    Cloud Storage mount, as KFP's executor maps it)."""
    return "/gcs/" + uri[len("gs://") :] if uri.startswith("gs://") else uri


def worker_executor_input(executor_input: dict[str, Any]) -> dict[str, Any]:
    """``executor_input`` with every output (artifact URIs, parameter files, the executor's
    output file) moved under :data:`WORKER_SCRATCH`: a worker computes what the chief does,
    and must not overwrite the chief's outputs."""
    out = copy.deepcopy(executor_input)
    outputs = out.setdefault("outputs", {})
    for name, entry in outputs.get("artifacts", {}).items():
        for i, artifact in enumerate(entry.get("artifacts", [])):
            artifact["uri"] = f"{WORKER_SCRATCH}/artifacts/{name}/{i}"
    for name, entry in outputs.get("parameters", {}).items():
        entry["outputFile"] = f"{WORKER_SCRATCH}/parameters/{name}"
    outputs["outputFile"] = f"{WORKER_SCRATCH}/executor_output.json"
    return out


def chief_model_path(executor_input: dict[str, Any]) -> str:
    """The chief's local path of the step's ``model`` output (its checkpoint's folder)."""
    try:
        uri = executor_input["outputs"]["artifacts"][MODEL_OUTPUT]["artifacts"][0]["uri"]
    except (KeyError, IndexError, TypeError) as exc:
        raise ConfigError(
            f"the step has no {MODEL_OUTPUT!r} output artifact: only training steps (train "
            "teacher, train student from scratch, distill student) run on several replicas"
        ) from exc
    if not uri.startswith("gs://"):
        raise ArtifactError(
            f"the step's output {uri} is not in Cloud Storage: the replicas of a custom job "
            "write through Vertex AI's /gcs/ mount. Fix: run on Vertex AI with a gs:// "
            "pipeline root"
        )
    return local_path(uri)


def custom_job(spec: ReplicaSpec, executor_input: dict[str, Any]) -> dict[str, Any]:
    """The ``CustomJob`` resource (REST JSON) of the step: see the module docstring."""
    chief_path = chief_model_path(executor_input)

    def pool(count: int, inputs: dict[str, Any], env: list[dict[str, str]]) -> dict[str, Any]:
        machine: dict[str, Any] = {"machineType": spec.machine_type}
        if spec.accelerator_type and spec.accelerator_count:
            machine |= {
                "acceleratorType": spec.accelerator_type,
                "acceleratorCount": spec.accelerator_count,
            }
        text = json.dumps(inputs)
        return {
            "machineSpec": machine,
            "replicaCount": str(count),
            "containerSpec": {
                "imageUri": spec.image,
                "command": list(spec.command),
                "args": [text if a == EXECUTOR_INPUT else a for a in spec.args],
                "env": env,
            },
        }

    job_spec: dict[str, Any] = {
        "workerPoolSpecs": [
            pool(1, executor_input, []),
            pool(
                spec.replicas - 1,
                worker_executor_input(executor_input),
                [{"name": CHIEF_OUTPUT_ENV, "value": chief_path}],
            ),
        ]
    }
    if spec.service_account:
        job_spec["serviceAccount"] = spec.service_account
    return {"displayName": spec.display_name[:128], "jobSpec": job_spec}


def run_custom_job(
    spec: ReplicaSpec,
    executor_input: dict[str, Any],
    project: str,
    location: str,
    *,
    api_endpoint: str = "",
    poll_s: float = POLL_S,
    log: Any = print,
) -> str:
    """Create the step's custom job, wait for it, and return its name; raise
    :class:`ArtifactError` with the job's own error if it does not succeed."""
    from google.cloud import aiplatform_v1

    from kd.registry import vertex_client

    if not project or not location:
        raise ConfigError(
            f"a custom job needs a project and a location (got {project!r}, {location!r}). "
            "Fix: run the step on Vertex AI Pipelines, which fills both in"
        )
    endpoint = api_endpoint or f"https://{location}-aiplatform.googleapis.com"
    client = vertex_client("JobServiceClient", endpoint)
    body = aiplatform_v1.CustomJob.from_json(json.dumps(custom_job(spec, executor_input)))
    try:
        job = client.create_custom_job(
            parent=f"projects/{project}/locations/{location}", custom_job=body
        )
    except Exception as exc:
        raise ArtifactError(
            f"Vertex AI did not create the custom job ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:300]}). Fix: give the run's service account "
            f"roles/aiplatform.user on {project}, and check the machine type "
            f"{spec.machine_type} and accelerator {spec.accelerator_type or 'none'} exist in "
            f"{location}"
        ) from exc
    name = job.name
    n = spec.accelerator_count
    gpus = f" with {n} x {spec.accelerator_type}" if n else ""
    log(f"custom job {name}: {spec.replicas} replicas of {spec.machine_type}{gpus}")

    def cancel(signum: int, frame: Any) -> None:
        log(f"stopped: cancelling {name}")
        client.cancel_custom_job(name=name)
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, cancel)
    try:
        state = ""
        while True:
            job = client.get_custom_job(name=name)
            if job.state.name != state:
                state = job.state.name
                log(f"custom job {name}: {state}")
            if state in DONE:
                break
            time.sleep(poll_s)
    finally:
        signal.signal(signal.SIGTERM, previous)
    if state != "JOB_STATE_SUCCEEDED":
        reason = job.error.message or "no reason given"
        raise ArtifactError(
            f"custom job {name} ended {state}: {reason}. Fix: read its replicas' logs in "
            "the Vertex AI console (Training > Custom jobs); a retry resumes from the last "
            "checkpointed epoch"
        )
    return name


def main(argv: list[str] | None = None) -> int:
    """``python -m kd.custom_job --executor-input JSON --spec JSON --project P --location L``
    (what a compiled multi-replica step runs)."""
    ap = argparse.ArgumentParser(prog="python -m kd.custom_job", description=__doc__)
    ap.add_argument("--executor-input", required=True, help="the step's executor input (JSON)")
    ap.add_argument("--spec", required=True, help="the ReplicaSpec (JSON), from the compiler")
    ap.add_argument("--project", required=True)
    ap.add_argument("--location", required=True)
    ap.add_argument("--api-endpoint", default="", help="default: the location's own")
    ap.add_argument("--poll-s", type=float, default=POLL_S, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    try:
        run_custom_job(
            ReplicaSpec.from_json(args.spec),
            json.loads(args.executor_input),
            args.project,
            args.location,
            api_endpoint=args.api_endpoint,
            poll_s=args.poll_s,
        )
    except (ConfigError, ArtifactError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
