"""Tests for submit.py against fake KFP and Vertex AI REST servers on 127.0.0.1.

A tiny two-step pipeline is compiled with the real kfp compiler, then submitted through the
real ``kfp.Client`` and ``google.cloud.aiplatform.PipelineJob`` (REST transport) to the fakes
in ``fake_servers.py``; the tests assert what arrived on the wire and that every failure is a
one-line :class:`submit.SubmitError` that never contains the token.
"""

import argparse
import functools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

_TESTS = Path(__file__).resolve().parent
for _path in (str(_TESTS.parent), str(_TESTS)):
    if _path not in sys.path:
        sys.path.insert(0, _path)

from fake_servers import (  # noqa: E402
    FakeKFPServer,
    FakeVertexServer,
    StaticTokenCredentials,
    closed_port,
)

import submit  # noqa: E402
from submit import SubmitError  # noqa: E402

TOKEN = "s3cr3t-t0ken-DO-NOT-LEAK"
PIPELINE_NAME = "tiny-kd"
PROJECT = "my-project"
REGION = "us-central1"
PIPELINE_ROOT = "gs://kd-bucket/pipeline-root"
SERVICE_ACCOUNT = "runner@my-project.iam.gserviceaccount.com"


# ------------------------------------------------------------------------------------------
# Fixtures
# ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def package(tmp_path_factory: pytest.TempPathFactory) -> str:
    """Compiles a 2-step pipeline with parameters to pipeline.yaml and returns its path."""
    from kfp import compiler, dsl

    @dsl.component(base_image="python:3.11-slim")
    def add(a: int, b: int) -> int:
        return a + b

    @dsl.component(base_image="python:3.11-slim")
    def describe(total: int, prefix: str) -> str:
        return f"{prefix}{total}"

    @dsl.pipeline(name=PIPELINE_NAME, description="two steps and two parameters")
    def tiny(a: int = 1, prefix: str = "total=") -> None:
        step = add(a=a, b=2)
        describe(total=step.output, prefix=prefix)

    path = tmp_path_factory.mktemp("pkg") / "pipeline.yaml"
    compiler.Compiler().compile(tiny, str(path))
    return str(path)


@pytest.fixture
def no_kfp_context(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Hides any ~/.config/kfp/context.json and KFP environment variables."""
    monkeypatch.setenv("HOME", str(tmp_path))
    for name in ("KFP_TOKEN", "KF_PIPELINES_ENDPOINT", "KF_PIPELINES_OVERRIDE_EXPERIMENT_NAME"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def kfp_server(no_kfp_context: None) -> Any:
    """A fake KFP server that requires TOKEN."""
    with FakeKFPServer(required_token=TOKEN) as server:
        yield server


@pytest.fixture
def hermetic_gcp(monkeypatch: pytest.MonkeyPatch) -> None:
    """No Application Default Credentials and no real project-number lookup."""
    import google.auth
    from google.auth.exceptions import DefaultCredentialsError
    from google.cloud.aiplatform.utils import resource_manager_utils

    def no_adc(*args: Any, **kwargs: Any) -> Any:
        raise DefaultCredentialsError("Your default credentials were not found.")

    monkeypatch.setattr(google.auth, "default", no_adc)
    monkeypatch.setattr(resource_manager_utils, "get_project_number", lambda *a, **k: "0")


def _vertex_server(monkeypatch: pytest.MonkeyPatch, **kwargs: Any) -> FakeVertexServer:
    """Starts a FakeVertexServer and points Cloud Storage (the bucket check) at it."""
    from google.cloud.aiplatform.utils import resource_manager_utils

    server = FakeVertexServer(**kwargs).start()
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", server.url)
    monkeypatch.setattr(
        resource_manager_utils, "get_project_number", lambda *a, **k: server.project_number
    )
    return server


@pytest.fixture
def vertex_server(hermetic_gcp: None, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A fake Vertex AI (+ GCS bucket check) server that requires TOKEN."""
    server = _vertex_server(monkeypatch, required_token=TOKEN)
    yield server
    server.stop()


def _vertex_kwargs(server: FakeVertexServer, **overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = dict(
        project=PROJECT,
        region=REGION,
        pipeline_root=PIPELINE_ROOT,
        service_account=SERVICE_ACCOUNT,
        params={"a": 3, "prefix": "sum="},
        display_name="kd-test-run",
        labels={"team": "ml", "stage": "test"},
        api_endpoint=server.url,
        credentials=StaticTokenCredentials(TOKEN),
    )
    kwargs.update(overrides)
    return kwargs


def _assert_clean(error: SubmitError, *fragments: str) -> str:
    """Asserts the error is one line, contains the fragments and does not leak the token."""
    message = str(error)
    assert "\n" not in message
    assert TOKEN not in message
    for fragment in fragments:
        assert fragment in message, message
    return message


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline.py submit")
    submit.add_submit_arguments(parser)
    return parser


# ------------------------------------------------------------------------------------------
# KFP
# ------------------------------------------------------------------------------------------


def test_kfp_submission_sends_compiled_spec_params_run_name_and_experiment(
    package: str, kfp_server: FakeKFPServer
) -> None:
    result = submit.submit_kfp(
        package,
        host=kfp_server.url,
        experiment="kd-exp",
        run_name="kd-run-1",
        params={"a": 7, "prefix": "sum="},
        existing_token=TOKEN,
        timeout_s=5,
    )

    created = kfp_server.last("POST", "/apis/v2beta1/experiments").json
    assert created["display_name"] == "kd-exp"
    body = kfp_server.last("POST", "/apis/v2beta1/runs").json
    assert body["display_name"] == "kd-run-1"
    assert body["experiment_id"] == result["experiment_id"]
    assert kfp_server.experiments[body["experiment_id"]]["display_name"] == "kd-exp"
    spec = body["pipeline_spec"]
    assert spec["pipelineInfo"]["name"] == PIPELINE_NAME
    assert set(spec["components"]) == {"comp-add", "comp-describe"}
    assert set(spec["root"]["dag"]["tasks"]) == {"add", "describe"}
    assert body["runtime_config"]["parameters"] == {"a": 7, "prefix": "sum="}

    assert result["run_id"] in kfp_server.runs
    assert result["run_url"] == f"{kfp_server.url}/#/runs/details/{result['run_id']}"
    assert result["experiment"] == "kd-exp"
    assert all(r.headers["authorization"] == f"Bearer {TOKEN}" for r in kfp_server.requests)


def test_kfp_reuses_existing_experiment_and_overrides_caching(
    package: str, kfp_server: FakeKFPServer
) -> None:
    existing = kfp_server.add_experiment("kd-pipeline")

    result = submit.submit_kfp(
        package, host=kfp_server.url + "/", existing_token=TOKEN, enable_caching=False
    )

    assert not kfp_server.find("POST", "/apis/v2beta1/experiments")
    listed = kfp_server.last("GET", "/apis/v2beta1/experiments")
    assert '"stringValue": "kd-pipeline"' in listed.query["filter"][0]
    body = kfp_server.last("POST", "/apis/v2beta1/runs").json
    assert body["experiment_id"] == existing["experiment_id"] == result["experiment_id"]
    for task in body["pipeline_spec"]["root"]["dag"]["tasks"].values():
        assert not task.get("cachingOptions", {}).get("enableCache", False)


def test_kfp_multi_user_needs_namespace_and_uses_it(package: str, no_kfp_context: None) -> None:
    with FakeKFPServer(multi_user=True) as server:
        with pytest.raises(SubmitError) as excinfo:
            submit.submit_kfp(package, host=server.url)
        _assert_clean(excinfo.value, "multi-user", "--namespace")
        assert not server.find("POST", "/apis/v2beta1/runs")

        submit.submit_kfp(package, host=server.url, namespace="alice")
        assert server.last("POST", "/apis/v2beta1/experiments").json["namespace"] == "alice"
        assert server.last("GET", "/apis/v2beta1/experiments").query["namespace"] == ["alice"]
        assert server.find("POST", "/apis/v2beta1/runs")


def test_submit_from_args_kfp_reads_token_from_env_and_prints_one_line(
    package: str,
    kfp_server: FakeKFPServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    args = _parser().parse_args(
        [
            "--host",
            kfp_server.url,
            "--run-name",
            "from-cli",
            "--param",
            "a=5",
            "--param",
            "prefix=hello",
            "--param",
            'extra={"k": [1, 2]}',
            "--no-cache",
        ]
    )

    result = submit.submit_from_args(args, package)

    body = kfp_server.last("POST", "/apis/v2beta1/runs").json
    assert body["runtime_config"]["parameters"] == {
        "a": 5,
        "prefix": "hello",
        "extra": {"k": [1, 2]},
    }
    assert body["display_name"] == "from-cli"
    out = capsys.readouterr().out
    assert out.count("\n") == 1, out
    assert result["run_id"] in out and result["run_url"] in out
    assert TOKEN not in out
    assert result["target"] == "kfp"


def test_a_sweep_grid_is_submitted_with_every_key_its_loop_reads(
    package: str, kfp_server: FakeKFPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A grid point that leaves out the loss is sent with DistillConfig's defaults filled in:
    the compiled sweep's loop body reads point.kd_loss (and the rest) of every point."""
    from kd.config import LOSS_KEYS, DistillConfig, defaults

    monkeypatch.setenv("KFP_TOKEN", TOKEN)
    grid = '[{"temperature": 4, "alpha": 0.1}, {"temperature": 2, "alpha": 0.5, "kd_loss": "dkd"}]'
    args = _parser().parse_args(["--host", kfp_server.url, "--param", f"grid={grid}"])
    submit.submit_from_args(args, package)
    sent = kfp_server.last("POST", "/apis/v2beta1/runs").json["runtime_config"]["parameters"]
    loss = {k: v for k, v in defaults(DistillConfig).items() if k in LOSS_KEYS}
    assert sent["grid"] == [
        {"temperature": 4, "alpha": 0.1, **loss},
        {"temperature": 2, "alpha": 0.5, **loss, "kd_loss": "dkd"},
    ]


def test_kfp_connection_refused_is_one_clear_line(package: str, no_kfp_context: None) -> None:
    host = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(SubmitError) as excinfo:
        submit.submit_kfp(package, host=host, existing_token=TOKEN, timeout_s=5)
    _assert_clean(excinfo.value, "cannot reach KFP at " + host, "connection refused", "--host")


def test_kfp_unresponsive_server_times_out(package: str, kfp_server: FakeKFPServer) -> None:
    kfp_server.delay_s = 1.0
    with pytest.raises(SubmitError) as excinfo:
        submit.submit_kfp(package, host=kfp_server.url, existing_token=TOKEN, timeout_s=0.2)
    _assert_clean(excinfo.value, "cannot reach KFP", "timed out")


def test_kfp_slow_run_creation_times_out(package: str, kfp_server: FakeKFPServer) -> None:
    kfp_server.slow("POST", "/apis/v2beta1/runs", 1.0)
    with pytest.raises(SubmitError) as excinfo:
        submit.submit_kfp(package, host=kfp_server.url, existing_token=TOKEN, timeout_s=0.3)
    _assert_clean(excinfo.value, "cannot reach KFP", "timed out after 0.3 s")
    assert kfp_server.find("GET", "/apis/v2beta1/healthz")  # the preflight passed


@pytest.mark.parametrize("status", [401, 403])
def test_kfp_rejecting_everything_means_credentials(
    package: str, no_kfp_context: None, status: int
) -> None:
    with FakeKFPServer(reject_status=status) as server:
        with pytest.raises(SubmitError) as excinfo:
            submit.submit_kfp(package, host=server.url, existing_token=TOKEN)
    _assert_clean(excinfo.value, "rejected the credentials", str(status), "--token")


def test_kfp_wrong_token_means_credentials(package: str, kfp_server: FakeKFPServer) -> None:
    with pytest.raises(SubmitError) as excinfo:
        submit.submit_kfp(package, host=kfp_server.url, existing_token="wrong-" + TOKEN)
    _assert_clean(excinfo.value, "rejected the credentials", "401 Unauthorized")


def test_kfp_403_on_run_creation_means_credentials(package: str, kfp_server: FakeKFPServer) -> None:
    kfp_server.fail("POST", "/apis/v2beta1/runs", 403, f"user may not create runs ({TOKEN})")
    with pytest.raises(SubmitError) as excinfo:
        submit.submit_kfp(package, host=kfp_server.url, existing_token=TOKEN)
    _assert_clean(excinfo.value, "rejected the credentials", "403 Forbidden", "may not create")


def test_kfp_server_side_refusal_quotes_the_server(package: str, kfp_server: FakeKFPServer) -> None:
    kfp_server.fail("POST", "/apis/v2beta1/runs", 400, "parameter a: not an integer")
    with pytest.raises(SubmitError) as excinfo:
        submit.submit_kfp(package, host=kfp_server.url, existing_token=TOKEN)
    _assert_clean(excinfo.value, "400 Bad Request", "parameter a: not an integer")


def test_kfp_missing_package(tmp_path: Path, kfp_server: FakeKFPServer) -> None:
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(SubmitError) as excinfo:
        submit.submit_kfp(missing, host=kfp_server.url, existing_token=TOKEN)
    _assert_clean(excinfo.value, missing, "does not exist", "compile")
    assert not kfp_server.requests

    not_a_pipeline = tmp_path / "bad.yaml"
    not_a_pipeline.write_text("hello: world\n")
    with pytest.raises(SubmitError) as excinfo:
        submit.submit_kfp(str(not_a_pipeline), host=kfp_server.url, existing_token=TOKEN)
    _assert_clean(excinfo.value, "cannot submit", "bad.yaml", "recompile")
    assert not kfp_server.find("POST", "/apis/v2beta1/runs")


def test_submit_from_args_kfp_needs_host(package: str, no_kfp_context: None) -> None:
    with pytest.raises(SubmitError) as excinfo:
        submit.submit_from_args(_parser().parse_args([]), package)
    _assert_clean(excinfo.value, "--host")


# ------------------------------------------------------------------------------------------
# Vertex AI
# ------------------------------------------------------------------------------------------


def test_vertex_submission_sends_spec_runtime_config_sa_and_labels(
    package: str, vertex_server: FakeVertexServer, capsys: pytest.CaptureFixture[str]
) -> None:
    result = submit.submit_vertex(package, enable_caching=False, **_vertex_kwargs(vertex_server))

    create = vertex_server.last("POST", rf"/v1/projects/{PROJECT}/locations/{REGION}/pipelineJobs")
    body = create.json
    assert body["displayName"] == "kd-test-run"
    assert body["pipelineSpec"]["pipelineInfo"]["name"] == PIPELINE_NAME
    assert set(body["pipelineSpec"]["components"]) == {"comp-add", "comp-describe"}
    for task in body["pipelineSpec"]["root"]["dag"]["tasks"].values():
        assert task["cachingOptions"] == {"enableCache": False}
    assert body["runtimeConfig"]["parameterValues"] == {"a": 3, "prefix": "sum="}
    assert body["runtimeConfig"]["gcsOutputDirectory"] == PIPELINE_ROOT
    assert body["serviceAccount"] == SERVICE_ACCOUNT
    assert body["labels"] == {"team": "ml", "stage": "test"}
    job_id = create.query["pipelineJobId"][0]
    assert job_id.startswith(PIPELINE_NAME + "-")
    assert create.headers["authorization"] == f"Bearer {TOKEN}"
    # The library checked the pipeline root bucket (through STORAGE_EMULATOR_HOST) first.
    assert vertex_server.find("GET", "/storage/v1/b/kd-bucket")

    assert result["job_name"] == f"projects/{PROJECT}/locations/{REGION}/pipelineJobs/{job_id}"
    assert result["job_id"] == job_id
    assert result["state"] == "PIPELINE_STATE_PENDING"
    assert result["dashboard_url"].endswith(f"/runs/{job_id}?project={PROJECT}")
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    assert "warning" not in captured.out.lower()


def test_vertex_endpoint_override_does_not_leak_into_global_config(
    package: str, vertex_server: FakeVertexServer
) -> None:
    from google.cloud.aiplatform import initializer

    before = (initializer.global_config._api_endpoint, initializer.global_config._api_transport)
    submit.submit_vertex(package, **_vertex_kwargs(vertex_server))
    after = (initializer.global_config._api_endpoint, initializer.global_config._api_transport)
    assert after == before


def test_submit_from_args_vertex_maps_options_and_prints_one_line(
    package: str,
    vertex_server: FakeVertexServer,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    real = submit.submit_vertex
    monkeypatch.setattr(
        submit,
        "submit_vertex",
        functools.partial(
            real, api_endpoint=vertex_server.url, credentials=StaticTokenCredentials(TOKEN)
        ),
    )
    args = _parser().parse_args(
        [
            "--target=vertex",
            f"--project={PROJECT}",
            f"--region={REGION}",
            f"--pipeline-root={PIPELINE_ROOT}",
            f"--service-account={SERVICE_ACCOUNT}",
            "--display-name=cli-job",
            "--param=a=11",
            "--param=prefix=x",
            "--label=team=ml",
        ]
    )

    result = submit.submit_from_args(args, package)

    body = vertex_server.last("POST", r"/v1/.*/pipelineJobs").json
    assert body["displayName"] == "cli-job"
    assert body["runtimeConfig"]["parameterValues"] == {"a": 11, "prefix": "x"}
    assert body["labels"] == {"team": "ml"}
    assert body["serviceAccount"] == SERVICE_ACCOUNT
    out = capsys.readouterr().out
    assert out.count("\n") == 1, out
    assert result["job_name"] in out and result["dashboard_url"] in out
    assert result["target"] == "vertex"


@pytest.mark.parametrize(
    ("given", "missing"),
    [
        ([], ["--project", "--region", "--pipeline-root"]),
        ([f"--project={PROJECT}", f"--region={REGION}"], ["--pipeline-root"]),
        ([f"--project={PROJECT}", f"--pipeline-root={PIPELINE_ROOT}"], ["--region"]),
    ],
)
def test_submit_from_args_vertex_names_missing_flags(
    package: str, given: list[str], missing: list[str]
) -> None:
    args = _parser().parse_args(["--target", "vertex", *given])
    with pytest.raises(SubmitError) as excinfo:
        submit.submit_from_args(args, package)
    message = _assert_clean(excinfo.value, *missing)
    for flag in {"--project", "--region", "--pipeline-root"} - set(missing):
        assert f"needs {flag}" not in message and f", {flag}" not in message


def test_vertex_without_credentials_is_one_clear_line(
    package: str, vertex_server: FakeVertexServer
) -> None:
    with pytest.raises(SubmitError) as excinfo:
        submit.submit_vertex(package, **_vertex_kwargs(vertex_server, credentials=None))
    _assert_clean(
        excinfo.value,
        "no Google Cloud credentials found",
        "gcloud auth application-default login",
        "GOOGLE_APPLICATION_CREDENTIALS",
    )
    assert not vertex_server.requests


@pytest.mark.parametrize(
    ("status", "reason", "fix"),
    [
        (401, "401 Unauthorized", "gcloud auth application-default login"),
        (403, "403 Forbidden", f"roles/aiplatform.user on project {PROJECT}"),
    ],
)
def test_vertex_rejecting_everything_means_credentials(
    package: str,
    hermetic_gcp: None,
    monkeypatch: pytest.MonkeyPatch,
    status: int,
    reason: str,
    fix: str,
) -> None:
    server = _vertex_server(monkeypatch, reject_status=status)
    try:
        with pytest.raises(SubmitError) as excinfo:
            submit.submit_vertex(package, **_vertex_kwargs(server))
    finally:
        server.stop()
    _assert_clean(excinfo.value, "Vertex AI at", "rejected the credentials", reason, fix)


def test_vertex_connection_refused_is_one_clear_line(
    package: str, vertex_server: FakeVertexServer
) -> None:
    endpoint = f"http://127.0.0.1:{closed_port()}"
    with pytest.raises(SubmitError) as excinfo:
        submit.submit_vertex(package, **_vertex_kwargs(vertex_server, api_endpoint=endpoint))
    _assert_clean(excinfo.value, f"cannot reach Vertex AI at {endpoint}", "connection refused")


def test_vertex_server_side_refusal_quotes_the_server(
    package: str, vertex_server: FakeVertexServer
) -> None:
    vertex_server.fail("POST", r"/v1/.*/pipelineJobs", 400, "parameter a must be an integer")
    with pytest.raises(SubmitError) as excinfo:
        submit.submit_vertex(package, **_vertex_kwargs(vertex_server))
    message = _assert_clean(excinfo.value, "400 Bad Request", "parameter a must be an integer")
    assert "http://" not in message.split("(", 1)[1]  # the request URL is not repeated


def test_vertex_rejects_non_gcs_pipeline_root_and_missing_package(
    package: str, tmp_path: Path, vertex_server: FakeVertexServer
) -> None:
    with pytest.raises(SubmitError) as excinfo:
        submit.submit_vertex(package, **_vertex_kwargs(vertex_server, pipeline_root="/tmp/x"))
    _assert_clean(excinfo.value, "--pipeline-root", "gs://")
    missing = str(tmp_path / "missing.yaml")
    with pytest.raises(SubmitError) as excinfo:
        submit.submit_vertex(missing, **_vertex_kwargs(vertex_server))
    _assert_clean(excinfo.value, missing, "does not exist")
    assert not vertex_server.requests


# ------------------------------------------------------------------------------------------
# CLI options and module hygiene
# ------------------------------------------------------------------------------------------


def test_every_option_help_names_its_default() -> None:
    parser = _parser()
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    expected = {
        "target", "host", "namespace", "token", "experiment", "run_name", "project", "region",
        "pipeline_root", "service_account", "display_name", "no_cache", "param", "label",
    }  # fmt: skip
    assert {a.dest for a in options} == expected
    for action in options:
        assert "default" in (action.help or ""), action.dest


def test_param_values_are_json_when_possible() -> None:
    args = _parser().parse_args(
        ["--param", "lr=1e-3", "--param", "tag=001", "--param", "ok=true", "--param", "s=a=b"]
    )
    assert {k: submit._param_value(v) for k, v in args.param} == {
        "lr": 0.001,
        "tag": "001",
        "ok": True,
        "s": "a=b",
    }
    with pytest.raises(SystemExit):
        _parser().parse_args(["--param", "no-equals-sign"])


def test_import_is_light() -> None:
    code = (
        "import sys, submit; "
        "heavy = [m for m in ('kfp', 'google.cloud.aiplatform', 'google.auth', 'requests') "
        "if m in sys.modules]; "
        "assert not heavy, heavy"
    )
    env = {**os.environ, "PYTHONPATH": str(_TESTS.parent), "KFP_TOKEN": TOKEN}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=str(_TESTS.parent))
