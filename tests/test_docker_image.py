"""The component image, built offline with docker/build.sh --offline and run without network.

Needs a running Docker engine (``docker/install_engine.sh``). Without one these tests are
skipped with a loud reason, except under ``CI=true`` where a missing engine is a failure. The
first run builds the image (a few minutes cold; reused while its inputs are unchanged).
"""

# No `from __future__ import annotations`: KFP reads the component's annotations at runtime.
import json
import os
import re
import runpy
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
from kfp import dsl, local

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # local_runner/ is not an installed package
    sys.path.insert(0, str(REPO))

IMAGE = runpy.run_path(str(REPO / "components" / "image.py"))["IMAGE"]
ENGINE_MISSING = "Docker engine not running: run docker/install_engine.sh"
FAKE_SECRET = "kd-fake-credential-3f9c2a7e"


def _pins() -> dict[str, str]:
    pins = {}
    for line in (REPO / "requirements.txt").read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9_.\-\[\]]+)==([^\s;#]+)", line.strip())
        if m:
            pins[m.group(1).lower()] = m.group(2)
    return pins


def _engine_problem() -> str | None:
    """None when `docker info` answers, else why not."""
    if shutil.which("docker") is None:
        return "the docker CLI is not installed"
    try:
        r = subprocess.run(["docker", "info"], capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        return "`docker info` timed out"
    if r.returncode != 0:
        return (r.stderr.strip().splitlines() or ["`docker info` failed"])[-1]
    return None


def require_engine(problem: str | None) -> None:
    """Skip loudly without an engine; under CI=true fail instead."""
    if problem is None:
        return
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"{ENGINE_MISSING} ({problem}); CI=true requires the Docker tests to run")
    warnings.warn(f"{ENGINE_MISSING} ({problem}): the Docker image tests are SKIPPED", stacklevel=2)
    pytest.skip(ENGINE_MISSING)


def test_missing_engine_skips_locally_and_fails_on_ci(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CI", raising=False)
    with pytest.warns(UserWarning, match="SKIPPED"), pytest.raises(pytest.skip.Exception) as e:
        require_engine("Cannot connect to the Docker daemon")
    assert str(e.value.msg) == ENGINE_MISSING
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI=true requires"):
        require_engine("Cannot connect to the Docker daemon")
    require_engine(None)  # an engine: nothing happens


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(args), capture_output=True, text=True, timeout=timeout)


def _in_image(script: str, *docker_args: str) -> str:
    r = _run("docker", "run", "--rm", "--network", "none", *docker_args, IMAGE, "sh", "-c", script)
    assert r.returncode == 0, (
        f"in {IMAGE}: {script}\nstdout: {r.stdout[-3000:]}\nstderr: {r.stderr[-3000:]}"
    )
    return r.stdout


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The image, built (or found up to date) by docker/build.sh --offline, with a fake
    credential in the build's environment."""
    require_engine(_engine_problem())
    creds = tmp_path_factory.mktemp("creds") / "application_default_credentials.json"
    creds.write_text(json.dumps({"type": "service_account", "private_key": FAKE_SECRET}))
    env = dict(os.environ, GOOGLE_APPLICATION_CREDENTIALS=str(creds), KD_FAKE_TOKEN=FAKE_SECRET)
    start = time.monotonic()
    r = subprocess.run(
        ["bash", str(REPO / "docker" / "build.sh"), "--offline"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert r.returncode == 0, (
        f"docker/build.sh --offline failed:\n{r.stdout[-4000:]}\n{r.stderr[-4000:]}"
    )
    print(f"docker/build.sh --offline: {time.monotonic() - start:.0f}s\n{r.stdout[-500:]}")
    return IMAGE


@pytest.mark.docker
def test_imports_and_pinned_versions_without_network(image: str) -> None:
    out = _in_image(
        'python -c "import json, kd, kfp, tensorflow, keras, components.image;'
        " import kd.runs;"
        " print(json.dumps({'kfp': kfp.__version__, 'tf': tensorflow.__version__,"
        " 'keras': keras.__version__, 'image': components.image.IMAGE}))\""
    )
    versions = json.loads(out.strip().splitlines()[-1])
    pins = _pins()
    assert versions["kfp"] == pins["kfp"]
    assert versions["tf"] == pins["tensorflow-cpu"]
    assert versions["keras"] == pins["keras"]
    assert versions["image"] == IMAGE


@pytest.mark.docker
def test_user_python_env_and_pip_check(image: str) -> None:
    out = _in_image(
        'id -u; python --version; python3 --version; command -v python; echo "HOME=$HOME";'
        ' touch "$HOME/probe" && echo home-writable; echo "PYTHONPATH=$PYTHONPATH";'
        " echo KERAS_BACKEND=$KERAS_BACKEND MPLBACKEND=$MPLBACKEND; pip check"
    )
    lines = out.splitlines()
    assert lines[0] != "0", "the image must not run as root"
    assert lines[0] == "1000"
    assert lines[1].startswith("Python 3.11.") and lines[2].startswith("Python 3.11.")
    assert lines[3] == "/opt/venv/bin/python"
    assert "HOME=/home/kd" in out and "home-writable" in out and "PYTHONPATH=/app" in out
    assert "KERAS_BACKEND=tensorflow MPLBACKEND=Agg" in out
    assert "No broken requirements found." in out


@pytest.mark.docker
def test_sample_data_ships_and_any_uid_has_a_home(image: str) -> None:
    out = _in_image(
        'python -c "import importlib.resources as r;'
        " print(sorted(p.name for p in r.files('kd.sample_data').iterdir()"
        " if p.name.endswith('.npz')))\";"
        ' touch "$HOME/other-uid" && echo ok',
        "--user",
        "4242:4242",
    )
    assert "cifar10_sample.npz" in out and out.strip().endswith("ok")


@pytest.mark.docker
def test_no_credentials_in_the_image(image: str) -> None:
    info = json.loads(_run("docker", "image", "inspect", image).stdout)[0]
    config = json.dumps(info["Config"])
    history = _run("docker", "history", "--no-trunc", "--format", "{{.CreatedBy}}", image).stdout
    for text in (config, history):
        assert FAKE_SECRET not in text
        assert "GOOGLE_APPLICATION_CREDENTIALS" not in text
    assert info["Config"]["Labels"].get("kd.inputs-hash")
    found = _in_image(
        f"grep -rIl -e {FAKE_SECRET} /app /home /root /etc /tmp /opt/venv/bin 2>/dev/null;"
        " grep -rIl -e private_key -e refresh_token /app /home 2>/dev/null; true"
    )
    assert found.strip() == ""
    listing = _in_image(
        "find / -xdev -name application_default_credentials.json 2>/dev/null; ls -A /app"
    ).split()
    assert "application_default_credentials.json" not in " ".join(listing)
    assert not {".git", ".venv", "tests", ".wheelhouse", "runs"} & set(listing)


@pytest.mark.docker
def test_rebuild_is_skipped_when_inputs_are_unchanged(image: str) -> None:
    """The image the fixture built is kept: build.sh says so, starts no docker build, and the
    tag still names the same image. (Editing one of the image's inputs while this module runs,
    docker/build.sh's sources_hash: kd/, components/, local_runner/, the Dockerfile, the
    requirements, pyproject.toml, README.md, pipeline.py, submit.py, parameters.py, or the
    base image, fails this test, rightly: the image would be stale.)"""
    before = _run("docker", "image", "inspect", "-f", "{{.Id}}", image).stdout.strip()
    r = subprocess.run(
        ["bash", str(REPO / "docker" / "build.sh"), "--offline"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=1200,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "is up to date" in r.stdout, r.stdout[-3000:]
    assert "Step 1/" not in r.stdout and "building " not in r.stdout, r.stdout[-3000:]
    after = _run("docker", "image", "inspect", "-f", "{{.Id}}", image).stdout.strip()
    assert before and after == before


@pytest.mark.docker
def test_an_image_built_offline_is_reused_when_asked_for_online(image: str) -> None:
    """What ``local_runner run`` (--build auto) asks: keep an up-to-date image however it was
    built; an online build (no registry here) is never started for it."""
    r = _run("bash", str(REPO / "docker" / "build.sh"), "--reuse-existing")
    assert r.returncode == 0, r.stderr[-3000:]
    assert "is up to date (sources hash" in r.stdout, r.stdout[-2000:]
    assert "building" not in r.stdout
    labels = json.loads(_run("docker", "image", "inspect", image).stdout)[0]["Config"]["Labels"]
    assert labels.get("kd.source-hash") and labels.get("kd.inputs-hash")


@dsl.component(base_image=IMAGE, install_kfp_package=False)
def image_probe(rows: int, data: dsl.Output[dsl.Dataset], metrics: dsl.Output[dsl.Metrics]):
    import os

    import kd

    with open(data.path, "w") as f:
        f.write(f"kd {kd.__version__} uid {os.getuid()}\n" * rows)
    data.metadata["rows"] = rows
    metrics.log_metric("rows", float(rows))


@dsl.pipeline(name="image-probe")
def _probe_pipeline(rows: int = 3):
    image_probe(rows=rows)


@pytest.mark.docker
def test_kfp_local_docker_runner_runs_a_component_in_the_image(image: str, tmp_path: Path) -> None:
    from kd import runs as ins

    root = tmp_path / "pipeline_root"
    root.mkdir()
    # The host's uid:gid keeps the mounted pipeline root writable (the image's own user is 1000).
    local.init(
        runner=local.DockerRunner(network_mode="none", user=f"{os.getuid()}:{os.getgid()}"),
        pipeline_root=str(root),
        raise_on_error=True,
    )
    try:
        _probe_pipeline(rows=2)
    finally:
        local.config.LocalExecutionConfig.instance = None
    (run,) = ins.list_runs(root)
    assert run["status"] == "SUCCEEDED" and run["pipeline_name"] == "image-probe"
    d = ins.describe_run(root, run["run_id"])
    data = next(a for a in d["artifacts"] if a["name"] == "data")
    assert data["metadata"] == {"rows": 2} and data["size_bytes"] > 0
    assert Path(data["path"]).read_text().startswith("kd 0.1.0 uid")
    assert d["metrics"]["rows"][0]["values"] == {"rows": 2.0}
