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
3. polls the job until it ends (retrying transient errors), and fails with the job's own
   error if it does not succeed; cancels it if the step is stopped (SIGTERM, as a cancelled
   run stops it) or the launcher fails while the job runs.

The job runs as ``ReplicaSpec.service_account`` (``pipeline.py submit --service-account``),
or without one as Vertex AI's Custom Code Service Agent, as google-cloud-pipeline-components'
custom jobs do; the project and location are written in by ``pipeline.py submit``, else
filled in by Vertex AI (:func:`resolve_place`).

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
#: Failed polls in a row before the launcher gives the job up (and cancels it).
POLL_RETRIES = 10


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
        # A replica that restarts restarts them all: they resume together from the chief's
        # checkpoint, instead of the others waiting on its collectives.
        "scheduling": {"restartJobOnWorkerRestart": True},
        "workerPoolSpecs": [
            pool(1, executor_input, []),
            pool(
                spec.replicas - 1,
                worker_executor_input(executor_input),
                [{"name": CHIEF_OUTPUT_ENV, "value": chief_path}],
            ),
        ],
    }
    if spec.service_account:
        job_spec["serviceAccount"] = spec.service_account
    return {"displayName": spec.display_name[:128], "jobSpec": job_spec}


class _Stopped(Exception):
    """SIGTERM reached the launcher (a cancelled run stops its steps so)."""


def _first_line(exc: BaseException) -> str:
    return (str(exc).splitlines() or [""])[0][:300]


def resolve_place(project: str, location: str) -> tuple[str, str]:
    """The project and location to create the job in: the launcher's arguments (filled in by
    ``pipeline.py submit``, or by Vertex AI Pipelines' placeholders), else the ones Vertex AI
    sets in every task's environment (``CLOUD_ML_PROJECT_ID``, ``CLOUD_ML_REGION``)."""
    import os

    def given(value: str) -> str:
        return "" if not value or value.startswith("{{$") else value

    project = given(project) or os.environ.get("CLOUD_ML_PROJECT_ID", "")
    location = given(location) or os.environ.get("CLOUD_ML_REGION", "")
    if not project or not location:
        raise ConfigError(
            f"a custom job needs a project and a location (got {project!r}, {location!r}). "
            "Fix: submit with pipeline.py submit --target vertex --project P --region R, "
            "which writes both into the step"
        )
    return project, location


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
    :class:`ArtifactError` with the job's own error if it does not succeed. Transient errors
    of a poll (HTTP 429 / 5xx, a timeout, a lost connection) are retried, up to
    :data:`POLL_RETRIES` in a row; if the launcher stops or fails while the job runs, the job
    is cancelled, so no replica is left running (and billed) without its step."""
    from google.api_core import exceptions as gexc
    from google.cloud import aiplatform_v1

    from kd.registry import vertex_client

    project, location = resolve_place(project, location)
    endpoint = api_endpoint or f"https://{location}-aiplatform.googleapis.com"
    client = vertex_client("JobServiceClient", endpoint)
    body = aiplatform_v1.CustomJob.from_json(json.dumps(custom_job(spec, executor_input)))
    transient = (
        gexc.TooManyRequests,
        gexc.InternalServerError,
        gexc.BadGateway,
        gexc.ServiceUnavailable,
        gexc.GatewayTimeout,
        gexc.DeadlineExceeded,
        ConnectionError,
        TimeoutError,
    )

    def stop(signum: int, frame: Any) -> None:
        raise _Stopped

    previous = signal.signal(signal.SIGTERM, stop)  # before the job exists: none is orphaned
    name = ""
    try:
        try:
            job = client.create_custom_job(
                parent=f"projects/{project}/locations/{location}", custom_job=body
            )
        except _Stopped:
            raise
        except Exception as exc:
            raise ArtifactError(
                f"Vertex AI did not create the custom job ({type(exc).__name__}: "
                f"{_first_line(exc)}). Fix: give the run's service account "
                f"roles/aiplatform.user on {project} (and iam.serviceAccounts.actAs on the "
                f"job's service account), and check the machine type {spec.machine_type} and "
                f"accelerator {spec.accelerator_type or 'none'} exist in {location}"
            ) from exc
        name = job.name
        n = spec.accelerator_count
        gpus = f" with {n} x {spec.accelerator_type}" if n else ""
        log(f"custom job {name}: {spec.replicas} replicas of {spec.machine_type}{gpus}")
        state, failures = "", 0
        while True:
            try:
                job = client.get_custom_job(name=name)
                failures = 0
            except transient as exc:
                failures += 1
                if failures > POLL_RETRIES:
                    raise ArtifactError(
                        f"lost custom job {name}: {POLL_RETRIES + 1} polls in a row failed "
                        f"({type(exc).__name__}: {_first_line(exc)}); it was cancelled. Fix: "
                        "retry the step (it resumes from the last checkpointed epoch)"
                    ) from exc
                time.sleep(poll_s)
                continue
            if job.state.name != state:
                state = job.state.name
                log(f"custom job {name}: {state}")
            if state in DONE:
                break
            time.sleep(poll_s)
    except BaseException as exc:  # stopped, lost, or anything else while the job runs
        if name:
            _cancel(client, name, log)
        if isinstance(exc, _Stopped):
            raise SystemExit(128 + signal.SIGTERM) from None
        raise
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


def _cancel(client: Any, name: str, log: Any) -> None:
    log(f"stopping: cancelling {name}")
    try:
        client.cancel_custom_job(name=name)
    except Exception as exc:  # the original error is the one to report
        log(
            f"could not cancel {name} ({type(exc).__name__}: {_first_line(exc)}): cancel it "
            "in the Vertex AI console (Training > Custom jobs)"
        )


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
