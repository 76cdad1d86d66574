"""kd.runs against real layouts: a kfp.local run and a gs:// root in the emulator.

The local layout comes from actually running a small pipeline with kfp.local's SubprocessRunner
(about a second); the gs:// layout is that run (and a Vertex-AI-shaped one) uploaded to the
GCS emulator with the URIs rewritten the way KFP / Vertex AI write them.
"""

# No `from __future__ import annotations`: KFP reads the components' annotations at runtime.
import datetime as dt
import json
import os
import shutil
import sys
from pathlib import Path

import pytest
from kfp import compiler, dsl, local

_REPO = str(Path(__file__).resolve().parents[1])
if _REPO not in sys.path:  # local_runner/ is not an installed package
    sys.path.insert(0, _REPO)

from kd import runs as ins  # noqa: E402

# ---------------------------------------------------------------------------------------------
# A toy pipeline with every artifact type the real pipeline writes.


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def make_data(rows: int, dataset: dsl.Output[dsl.Dataset]):
    with open(dataset.path, "w") as f:
        f.write("x\n" * rows)
    dataset.metadata["rows"] = rows


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def train(
    dataset: dsl.Input[dsl.Dataset],
    model: dsl.Output[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
) -> float:
    import os

    os.makedirs(model.path)
    with open(os.path.join(model.path, "weights.bin"), "wb") as f:
        f.write(b"\0" * 1000)
    with open(os.path.join(model.path, "config.json"), "w") as f:
        f.write("{}")
    model.metadata["framework"] = "keras"
    metrics.log_metric("accuracy", 0.75)
    metrics.log_metric("loss", 0.5)
    return 0.75


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def evaluate(
    model: dsl.Input[dsl.Model],
    metrics: dsl.Output[dsl.Metrics],
    confusion: dsl.Output[dsl.ClassificationMetrics],
    report: dsl.Output[dsl.HTML],
    summary: dsl.Output[dsl.Markdown],
):
    metrics.log_metric("accuracy", 0.8)
    metrics.log_metric("ece", 0.05)
    confusion.log_confusion_matrix(["cat", "dog"], [[3, 1], [1, 5]])
    with open(report.path, "w") as f:
        f.write("<!DOCTYPE html><html><body>report</body></html>")
    with open(summary.path, "w") as f:
        f.write("# summary\n")


@dsl.component(base_image="python:3.11", install_kfp_package=False)
def crash(partial: dsl.Output[dsl.Dataset]):
    with open(partial.path, "w") as f:
        f.write("half")
    raise RuntimeError("crash on purpose")


@dsl.pipeline(name="toy-kd")
def toy_pipeline(rows: int = 4, fail: bool = False):
    data = make_data(rows=rows)
    trained = train(dataset=data.outputs["dataset"])
    evaluate(model=trained.outputs["model"])
    with dsl.If(fail == True):  # noqa: E712 (a KFP condition, not a Python comparison)
        crash().after(trained)


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Two kfp.local runs in one pipeline root: an older successful one, a newer failed one."""
    base = tmp_path_factory.mktemp("inspect")
    root = base / "root"
    spec = base / "toy.yaml"
    compiler.Compiler().compile(toy_pipeline, str(spec))
    local.init(
        runner=local.SubprocessRunner(use_venv=False),
        pipeline_root=str(root),
        raise_on_error=False,
    )
    try:
        toy_pipeline()
        toy_pipeline(fail=True)
    finally:
        local.config.LocalExecutionConfig.instance = None
    runs = sorted(p.name for p in root.iterdir())
    assert len(runs) == 2, runs
    return {"root": root, "spec": spec, "ok": runs[0], "failed": runs[1]}


# ---------------------------------------------------------------------------------------------
# Local layout.


def test_local_layout_is_what_the_module_documents(toy: dict) -> None:
    run_dir = toy["root"] / toy["ok"]
    assert ins._LOCAL_RUN_RE.match(toy["ok"])
    assert sorted(p.name for p in run_dir.iterdir()) == ["evaluate", "make-data", "train"]
    eo = json.loads((run_dir / "train" / "executor_output.json").read_text())
    assert eo["artifacts"]["metrics"]["artifacts"][0]["metadata"] == {"accuracy": 0.75, "loss": 0.5}
    assert eo["parameterValues"] == {"Output": 0.75}
    assert not (run_dir / "train" / "metrics").exists()  # Metrics live only in the metadata
    failed = toy["root"] / toy["failed"]
    assert (failed / "crash" / "partial").is_file()
    assert not (failed / "crash" / "executor_output.json").exists()


def test_list_runs_newest_first_with_status(toy: dict) -> None:
    runs = ins.list_runs(toy["root"])
    assert [r["run_id"] for r in runs] == [toy["failed"], toy["ok"]]
    created = [dt.datetime.fromisoformat(r["created"]) for r in runs]
    assert created[0] > created[1]
    assert [r["status"] for r in runs] == ["INCOMPLETE", "SUCCEEDED"]
    assert all(r["pipeline_name"] == "toy-kd" and r["layout"] == "local" for r in runs)
    assert [r["tasks"] for r in runs] == [4, 3]
    json.dumps(runs)  # JSON-friendly
    text = ins.format_runs(runs)
    assert toy["ok"] in text and "SUCCEEDED" in text and "INCOMPLETE" in text


def test_describe_local_run_guesses_types_sizes_metadata_metrics(toy: dict) -> None:
    run_dir = toy["root"] / toy["ok"]
    d = ins.describe_run(toy["root"], toy["ok"])
    json.dumps(d)
    assert d["status"] == "SUCCEEDED" and d["status_source"] == "derived"
    assert [t["name"] for t in d["tasks"]] == ["make-data", "train", "evaluate"]  # run order
    for t in d["tasks"]:
        assert t["status"] == "SUCCEEDED"
        assert t["duration_s"] is not None and t["duration_s"] >= 0
    assert d["tasks"][1]["parameters"] == {"Output": 0.75}

    arts = {f"{a['task']}/{a['name']}": a for a in d["artifacts"]}
    assert {k: a["type"] for k, a in arts.items()} == {
        "make-data/dataset": "system.Dataset",
        "train/model": "system.Model",
        "train/metrics": "system.Metrics",
        "evaluate/metrics": "system.Metrics",
        "evaluate/confusion": "system.ClassificationMetrics",
        "evaluate/report": "system.HTML",
        "evaluate/summary": "system.Markdown",
    }
    assert all(a["type_source"] == "guessed" for a in arts.values())
    ds = arts["make-data/dataset"]
    assert ds["size_bytes"] == os.path.getsize(run_dir / "make-data" / "dataset") == 8
    assert ds["metadata"] == {"rows": 4} and ds["exists"] and not ds["is_dir"]
    model = arts["train/model"]
    assert model["is_dir"] and model["files"] == 2 and model["size_bytes"] == 1002
    assert model["metadata"] == {"framework": "keras"}
    assert arts["train/metrics"]["exists"] is False and arts["train/metrics"]["size_bytes"] == 0

    assert d["metrics"]["columns"] == ["accuracy", "loss", "ece"]
    rows = {r["task"]: r["values"] for r in d["metrics"]["rows"]}
    assert rows == {
        "train": {"accuracy": 0.75, "loss": 0.5},
        "evaluate": {"accuracy": 0.8, "ece": 0.05},
    }
    (cm,) = d["classification"]
    assert cm["labels"] == ["cat", "dog"] and cm["matrix"] == [[3, 1], [1, 5]]
    assert cm["accuracy"] == pytest.approx(0.8)
    assert d["report"] == str(run_dir / "evaluate" / "report")
    assert Path(d["report"]).read_text().startswith("<!DOCTYPE html>")
    assert d["markdown"] == [str(run_dir / "evaluate" / "summary")]
    assert any("guessed" in n for n in d["notes"])

    text = ins.format_run(d)
    for needle in ("train/model", "system.Model", "accuracy", "ece", "Report", d["report"]):
        assert needle in text


def test_describe_with_pipeline_spec_and_failed_run(toy: dict) -> None:
    d = ins.describe_run(toy["root"], "latest", pipeline_spec=toy["spec"])
    assert d["run_id"] == toy["failed"]
    assert d["status"] == "INCOMPLETE"
    statuses = {t["name"]: t["status"] for t in d["tasks"]}
    assert statuses == {
        "make-data": "SUCCEEDED",
        "train": "SUCCEEDED",
        "evaluate": "SUCCEEDED",
        "crash": "INCOMPLETE",
    }
    assert all(a["type_source"] == "pipeline_spec" for a in d["artifacts"])
    partial = next(a for a in d["artifacts"] if a["task"] == "crash")
    assert (partial["name"], partial["type"], partial["size_bytes"]) == (
        "partial",
        "system.Dataset",
        4,
    )
    assert any("INCOMPLETE" in n for n in d["notes"])


def test_spec_lists_tasks_that_never_ran(toy: dict, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(toy["root"] / toy["ok"], root / toy["ok"])
    shutil.rmtree(root / toy["ok"] / "evaluate")
    d = ins.describe_run(root, toy["ok"], pipeline_spec=toy["spec"])
    statuses = {t["name"]: t["status"] for t in d["tasks"]}
    # evaluate is top-level: its absence makes the run incomplete; crash is conditional
    assert statuses["evaluate"] == "NOT_RUN" and statuses["crash"] == "NOT_RUN"
    assert d["status"] == "INCOMPLETE"


def test_moved_pipeline_root_resolves_artifacts_in_place(toy: dict, tmp_path: Path) -> None:
    moved = tmp_path / "moved"
    shutil.copytree(toy["root"], moved)
    d = ins.describe_run(moved, toy["ok"])
    model = next(a for a in d["artifacts"] if a["name"] == "model")
    assert model["uri"] == str(moved / toy["ok"] / "train" / "model")
    assert model["size_bytes"] == 1002
    assert d["report"] == str(moved / toy["ok"] / "evaluate" / "report")


def test_record_run_overrides_derived_status_and_types(toy: dict, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(toy["root"], root)
    started = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    ins.record_run(
        root / toy["failed"],
        "failed",
        pipeline_spec=toy["spec"],
        error="Task 'crash' failed: RuntimeError: crash on purpose",
        started=started,
        finished=started + dt.timedelta(seconds=90),
        # as local_runner/run.py records them from kfp.local's log lines
        tasks={
            "make-data": {
                "status": "SUCCESS",
                "start": started,
                "end": started + dt.timedelta(seconds=2),
            },
            "crash": {"status": "FAILURE", "start": started + dt.timedelta(seconds=80)},
        },
    )
    runs = ins.list_runs(root)
    assert (runs[0]["status"], runs[0]["status_source"]) == ("FAILED", "record")
    d = ins.describe_run(root, toy["failed"])
    assert d["status"] == "FAILED" and d["error"].startswith("Task 'crash' failed")
    assert d["duration_s"] == 90.0
    tasks = {t["name"]: t for t in d["tasks"]}
    assert tasks["crash"]["status"] == "FAILED" and tasks["make-data"]["status"] == "SUCCEEDED"
    assert tasks["crash"]["status_source"] == "record"
    assert tasks["make-data"]["duration_s"] == 2.0
    assert dt.datetime.fromisoformat(tasks["make-data"]["start"]) == started
    assert all(a["type_source"] == "pipeline_spec" for a in d["artifacts"])
    assert "kd_run.json" not in {t["name"] for t in d["tasks"]}


def test_run_selection_and_errors(toy: dict, tmp_path: Path) -> None:
    assert ins.describe_run(toy["root"], toy["ok"][:-3])["run_id"] == toy["ok"]  # unique prefix
    with pytest.raises(ins.RunNotFoundError) as e:
        ins.describe_run(toy["root"], "no-such-run")
    assert e.value.known == [toy["failed"], toy["ok"]]
    assert toy["ok"] in str(e.value) and toy["failed"] in str(e.value)
    with pytest.raises(ins.RunNotFoundError, match="ambiguous"):
        ins.describe_run(toy["root"], "toy-kd-")

    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("not a run")
    with pytest.raises(ins.NotAPipelineRootError, match="no runs found.*executor_output.json"):
        ins.list_runs(empty)
    with pytest.raises(ins.NotAPipelineRootError, match="does not exist"):
        ins.list_runs(tmp_path / "missing")
    with pytest.raises(ins.NotAPipelineRootError, match="single run folder: pass its parent"):
        ins.list_runs(toy["root"] / toy["ok"])


def test_cli_json_and_errors(toy: dict, capsys: pytest.CaptureFixture[str]) -> None:
    from local_runner.__main__ import main

    root = ["--pipeline-root", str(toy["root"])]
    assert main(["inspect", *root, "--json"]) == 0
    assert [r["run_id"] for r in json.loads(capsys.readouterr().out)] == [toy["failed"], toy["ok"]]
    assert main(["inspect", toy["ok"], *root]) == 0
    assert "Metrics" in capsys.readouterr().out
    assert main(["inspect", "nope", *root]) == 2
    assert "Known runs" in capsys.readouterr().err


def test_inspect_survives_a_closed_pipe(toy: dict) -> None:
    """``inspect ... | head``: the reader is gone before inspect writes; no traceback."""
    import subprocess

    cmd = [sys.executable, "-m", "local_runner", "inspect", toy["ok"], "--json"]
    proc = subprocess.Popen(
        [*cmd, "--pipeline-root", str(toy["root"])],
        cwd=Path(__file__).resolve().parents[1],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()  # as `head` does once it has its lines
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141, err  # 128 + SIGPIPE, as a Unix tool would end
    assert "Traceback" not in err and "BrokenPipe" not in err, err


def test_reports_get_a_browser_copy_named_html(toy: dict, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(toy["root"], root)
    run = ins.describe_run(root, toy["ok"], pipeline_spec=toy["spec"])
    bare = root / toy["ok"] / [p for p in os.listdir(root / toy["ok"]) if "evaluate" in p][0]
    assert run["report"] == str(bare / "report")  # KFP's own file name, no extension
    made = ins.add_browser_copies(run)
    assert made == [bare / "report.html"]
    assert (bare / "report.html").read_bytes() == (bare / "report").read_bytes()
    # inspect (and the runner's last lines) now point a browser at the .html copy
    assert ins.describe_run(root, toy["ok"])["report"] == str(bare / "report.html")
    assert ins.add_browser_copies(run) == []  # once is enough


def test_inspect_prints_the_tensorboard_line_of_the_training_curves(
    toy: dict, tmp_path: Path
) -> None:
    """A Model artifact holding tensorboard/ (what the training stages write) is listed, and
    the text view prints the tensorboard command; a run without one prints none."""
    from kd.model_folder import write_tensorboard

    root = tmp_path / "root"
    shutil.copytree(toy["root"], root)
    assert "tensorboard" not in ins.format_run(ins.describe_run(root, toy["ok"]))
    run_dir = root / toy["ok"]
    model = next(p for p in run_dir.glob("train*/model") if p.is_dir())
    write_tensorboard({"epoch": [1, 2], "loss": [0.9, 0.5]}, model / "tensorboard")
    run = ins.describe_run(root, toy["ok"])
    assert run["tensorboard"] == {model.parent.name: str(model / "tensorboard")}
    text = ins.format_run(run)
    assert f"tensorboard --logdir_spec {model.parent.name}:{model / 'tensorboard'}" in text


# ---------------------------------------------------------------------------------------------
# gs:// layout (KFP / Vertex AI), against the GCS emulator.


def _upload_run(client, local_run: Path, bucket: str, prefix: str) -> None:
    """Upload a kfp.local run as KFP / Vertex AI lays it out: ``<task>_<id>`` folders and
    gs:// URIs in executor_output.json."""
    b = client.bucket(bucket)
    for i, task_dir in enumerate(sorted(p for p in local_run.iterdir() if p.is_dir())):
        gs_task = f"{prefix}/{task_dir.name}_{1000 + i}"
        for f in sorted(p for p in task_dir.rglob("*") if p.is_file()):
            rel = f.relative_to(task_dir).as_posix()
            data = f.read_bytes()
            if rel == "executor_output.json":
                data = data.replace(str(task_dir).encode(), f"gs://{bucket}/{gs_task}".encode())
            b.blob(f"{gs_task}/{rel}").upload_from_string(data)


def test_gcs_root_lists_and_describes_runs(toy: dict, gcs_emulator) -> None:
    client = gcs_emulator
    # KFP layout: ROOT/<pipeline-name>/<run-id>/..., older run first
    _upload_run(client, toy["root"] / toy["ok"], "kd-test", "pr/toy-kd/run-older")
    # Vertex AI layout: ROOT/<project-number>/<pipeline>-<YYYYmmddHHMMSS>/...
    _upload_run(
        client, toy["root"] / toy["failed"], "kd-test", "pr/123456789/toy-kd-20261128150830"
    )
    client.bucket("kd-test").blob("pr/README").upload_from_string("not a run")

    runs = ins.list_runs("gs://kd-test/pr")
    assert [r["run_id"] for r in runs] == ["toy-kd-20261128150830", "run-older"]
    assert [r["status"] for r in runs] == ["INCOMPLETE", "SUCCEEDED"]
    assert [r["pipeline_name"] for r in runs] == ["toy-kd", "toy-kd"]
    assert runs[1]["uri"] == "gs://kd-test/pr/toy-kd/run-older"
    assert all(r["layout"] == "gcs" for r in runs)

    d = ins.describe_run("gs://kd-test/pr/", "run-older", pipeline_spec=toy["spec"])
    json.dumps(d)
    assert d["status"] == "SUCCEEDED"
    statuses = {t["name"]: t["status"] for t in d["tasks"]}
    assert statuses == {
        "make-data": "SUCCEEDED",
        "train": "SUCCEEDED",
        "evaluate": "SUCCEEDED",
        "crash": "NOT_RUN",  # in the spec (under a condition), never ran
    }
    assert {t["folder"] for t in d["tasks"] if t["folder"]} == {
        "evaluate_1000",
        "make-data_1001",
        "train_1002",
    }
    arts = {f"{a['task']}/{a['name']}": a for a in d["artifacts"]}
    model = arts["train/model"]
    assert model["uri"] == "gs://kd-test/pr/toy-kd/run-older/train_1002/model"
    assert (model["type"], model["size_bytes"], model["files"]) == ("system.Model", 1002, 2)
    assert arts["make-data/dataset"]["metadata"] == {"rows": 4}
    assert arts["make-data/dataset"]["size_bytes"] == 8
    assert sorted(d["metrics"]["columns"]) == ["accuracy", "ece", "loss"]
    rows = {r["task"]: r["values"] for r in d["metrics"]["rows"]}
    assert rows == {
        "train": {"accuracy": 0.75, "loss": 0.5},
        "evaluate": {"accuracy": 0.8, "ece": 0.05},
    }
    assert d["report"] == "gs://kd-test/pr/toy-kd/run-older/evaluate_1000/report"
    assert d["classification"][0]["accuracy"] == pytest.approx(0.8)

    # without a spec the types are guessed, reading the HTML's first bytes from the bucket
    guessed = ins.describe_run("gs://kd-test/pr", "run-older")
    types = {f"{a['task']}/{a['name']}": a["type"] for a in guessed["artifacts"]}
    assert types["evaluate/report"] == "system.HTML" and types["train/metrics"] == "system.Metrics"

    failed = ins.describe_run("gs://kd-test/pr", "latest")
    crash = next(t for t in failed["tasks"] if t["name"] == "crash")
    assert crash["folder"] == "crash_1000" and crash["status"] == "INCOMPLETE"
    assert crash["artifacts"][0]["size_bytes"] == 4


def test_gcs_errors(gcs_emulator) -> None:
    gcs_emulator.bucket("kd-test").blob("pr/x.txt").upload_from_string("x")
    with pytest.raises(ins.NotAPipelineRootError, match="no runs found under gs://kd-test/pr"):
        ins.list_runs("gs://kd-test/pr")
    with pytest.raises(ins.NotAPipelineRootError, match="cannot list gs://no-such-bucket"):
        ins.list_runs("gs://no-such-bucket/root")
    gcs_emulator.bucket("kd-test").blob("pr/1/run-a/t_1/executor_output.json").upload_from_string(
        "{}"
    )
    with pytest.raises(ins.RunNotFoundError, match="Known runs.*run-a"):
        ins.describe_run("gs://kd-test/pr", "run-b")


# ---------------------------------------------------------------------------------------------
# The task names, defined once in kd.runs, against the compiled pipelines
# ---------------------------------------------------------------------------------------------


def _leaf_tasks(spec: dict) -> dict[str, dict]:
    """Every task that runs a component (not a condition or loop), at any depth."""
    dags = [spec["root"]["dag"]] + [c["dag"] for c in spec["components"].values() if "dag" in c]
    return {
        name: task
        for dag in dags
        for name, task in dag["tasks"].items()
        if "executorLabel" in spec["components"][task["componentRef"]["name"]]
    }


@pytest.fixture(scope="module")
def compiled(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict]:
    import yaml

    import pipeline

    out = tmp_path_factory.mktemp("compiled")
    return {
        which: yaml.safe_load(
            pipeline.compile_pipeline(out / f"{which}.yaml", which=which).read_text()
        )
        for which in ("main", "sweep")
    }


def test_the_compiled_pipelines_have_exactly_the_task_names_kd_runs_defines(compiled) -> None:
    names = {n for spec in compiled.values() for n in _leaf_tasks(spec)}
    assert names == set(ins.TASKS)
    main = set(_leaf_tasks(compiled["main"]))
    from local_runner.run import IMPORT_STAGES, REMOTE_STAGES, STAGES

    # the runner's progress counts these; the registry step runs on Vertex AI only
    assert set(STAGES) | set(IMPORT_STAGES) | set(REMOTE_STAGES) == main


def test_exactly_the_training_tasks_have_a_retry_policy(compiled) -> None:
    """The local runner lets kfp.local retry these (it stops early only at the others)."""
    for spec in compiled.values():
        retried = {n for n, t in _leaf_tasks(spec).items() if t.get("retryPolicy")}
        assert retried == set(ins.RETRIED_TASKS) & set(_leaf_tasks(spec))
