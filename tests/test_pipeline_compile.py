"""Compile tests: read the YAML the compiler writes, for each target."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import pipeline
from components.image import IMAGE
from kd.config import (
    GRID_KEYS,
    DistillConfig,
    ScratchConfig,
    StudentConfig,
    SweepConfig,
    TeacherConfig,
    field_docs,
)

STAGES = {"data-split", "train-teacher", "train-student-scratch", "distill-student", "evaluate"}
TRAINING = {"train-teacher", "train-student-scratch", "distill-student"}


def _compile(tmp_path: Path, **kwargs) -> dict:
    out = pipeline.compile_pipeline(tmp_path / "p.yaml", **kwargs)
    return yaml.safe_load(out.read_text())


def _tasks(spec: dict) -> dict:
    return spec["root"]["dag"]["tasks"]


def _all_tasks(spec: dict) -> dict:
    """Every task of the pipeline, at the root or inside a condition or loop."""
    tasks = dict(_tasks(spec))
    for comp in spec["components"].values():
        tasks.update(comp.get("dag", {}).get("tasks", {}))
    return tasks


def _branch(spec: dict, task: str) -> tuple[str, str]:
    """The condition task holding ``task`` and its trigger condition."""
    for cond in _all_tasks(spec).values():
        comp = spec["components"].get(cond["componentRef"]["name"], {})
        if task in comp.get("dag", {}).get("tasks", {}):
            return cond["taskInfo"]["name"], cond.get("triggerPolicy", {}).get("condition", "")
    raise AssertionError(f"{task} is in no branch")


def _executor(spec: dict, task: str) -> dict:
    comp = _all_tasks(spec)[task]["componentRef"]["name"]
    exec_label = spec["components"][comp]["executorLabel"]
    return spec["deploymentSpec"]["executors"][exec_label]["container"]


def test_five_stages_and_the_gate(tmp_path):
    spec = _compile(tmp_path)
    tasks = _tasks(spec)
    assert STAGES <= set(_all_tasks(spec))
    gate = [t for t in tasks.values() if "evaluate-Output" in str(t.get("triggerPolicy"))]
    assert len(gate) == 1
    inner = spec["components"][gate[0]["componentRef"]["name"]]["dag"]["tasks"]
    assert "export-model" in inner


def test_scratch_student_does_not_depend_on_the_teacher(tmp_path):
    tasks = _tasks(_compile(tmp_path))
    assert tasks["train-student-scratch"].get("dependentTasks") == ["data-split"]
    # The teacher reaches the distillation and the evaluation through the dsl.OneOf of the
    # two teacher branches.
    assert "condition-branches-1" in tasks["distill-student"]["dependentTasks"]
    assert set(tasks["evaluate"]["dependentTasks"]) >= {
        "condition-branches-1",
        "distill-student",
        "train-student-scratch",
    }


def test_only_the_scratch_student_takes_scratch_learning_rate(tmp_path):
    """Both students take the shared ``student_learning_rate``; ``scratch_learning_rate``
    reaches the scratch student's step, not the distillation's."""
    tasks = _tasks(_compile(tmp_path))

    def source(task: str, name: str) -> str | None:
        value = tasks[task]["inputs"]["parameters"].get(name)
        return value and value["componentInputParameter"]

    assert source("train-student-scratch", "scratch_learning_rate") == "scratch_learning_rate"
    assert source("distill-student", "scratch_learning_rate") is None
    for task in ("train-student-scratch", "distill-student"):
        assert source(task, "learning_rate") == "student_learning_rate"


@pytest.mark.parametrize("which", ["main", "sweep"])
def test_only_the_distillations_take_teacher_mixup_views(tmp_path, which):
    """The mixed views are the teacher's cache: every distillation (each branch of the sweep)
    takes the parameter, defaulting to the config's, and no other step does."""
    from kd.config import DistillConfig

    spec = _compile(tmp_path, which=which)
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["teacher_mixup_views"]["defaultValue"] == DistillConfig().teacher_mixup_views
    takers = {
        name: task["inputs"]["parameters"]["teacher_mixup_views"]["componentInputParameter"]
        for name, task in _all_tasks(spec).items()
        if "teacher_mixup_views" in task.get("inputs", {}).get("parameters", {})
    }
    assert set(takers) == {"distill-student"}
    assert takers["distill-student"].endswith("teacher_mixup_views")


@pytest.mark.parametrize("target", ["vertex", "kfp"])
@pytest.mark.parametrize("which", ["main", "sweep"])
def test_a_teacher_uri_imports_the_teacher_instead_of_training_it(tmp_path, target, which):
    spec = _compile(tmp_path, res=pipeline.Resources(target=target), which=which)
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert params["teacher_model"]["defaultValue"] == ""
    tasks = _all_tasks(spec)
    # dsl.importer takes the URI from the teacher_model parameter ...
    imp = spec["deploymentSpec"]["executors"]["exec-importer"]["importer"]
    assert imp["typeSchema"]["schemaTitle"] == "system.Model"
    assert tasks["importer"]["inputs"]["parameters"]["uri"]["componentInputParameter"] == (
        "pipelinechannel--teacher_model"
    )
    # ... and the import and the check run only when it is set, the training only when not.
    byo, byo_when = _branch(spec, "importer")
    assert _branch(spec, "check-teacher")[0] == byo
    assert "teacher_model" in byo_when and "!=" in byo_when
    trained, trained_when = _branch(spec, "train-teacher")
    assert trained != byo and trained_when.startswith("!(") and "teacher_model" in trained_when
    check = tasks["check-teacher"]["inputs"]
    assert check["artifacts"]["teacher"]["taskOutputArtifact"]["producerTask"] == "importer"
    assert "validation" in check["artifacts"]


def test_artifact_types(tmp_path):
    spec = _compile(tmp_path)
    comps = spec["components"]

    def outputs(name):
        return {
            k: v["artifactType"]["schemaTitle"]
            for k, v in comps[name]["outputDefinitions"]["artifacts"].items()
        }

    assert set(outputs("comp-data-split").values()) == {"system.Dataset"}
    assert outputs("comp-train-teacher") == {"model": "system.Model", "metrics": "system.Metrics"}
    assert outputs("comp-check-teacher") == {"model": "system.Model"}
    ev = outputs("comp-evaluate")
    assert ev["report"] == "system.HTML" and ev["summary"] == "system.Markdown"
    assert ev["metrics"] == "system.Metrics"
    assert ev["teacher_confusion"] == "system.ClassificationMetrics"
    assert "SlicedClassificationMetrics" not in str(spec)
    assert outputs("comp-export-model") == {
        "blessed": "system.Model",
        "edge": "system.Model",
        "edge_metrics": "system.Metrics",
    }


def test_vertex_accelerator_retry_cache_and_image(tmp_path):
    res = pipeline.Resources(target="vertex", accelerator="L4", gpus=2)
    spec = _compile(tmp_path, res=res)
    for task in TRAINING:
        resources = _executor(spec, task)["resources"]
        assert resources["accelerator"]["resourceType"] == "NVIDIA_L4"
        assert resources["accelerator"]["resourceCount"] == "2"
        assert resources["resourceCpuLimit"] == "8" and resources["resourceMemoryLimit"] == "32G"
        assert _all_tasks(spec)[task]["retryPolicy"]["maxRetryCount"] == 2
    assert "accelerator" not in _executor(spec, "data-split").get("resources", {})
    assert all(
        t["cachingOptions"].get("enableCache")
        for t in _all_tasks(spec).values()
        if "cachingOptions" in t
    )
    assert _executor(spec, "evaluate")["image"] == IMAGE


def test_kfp_accelerator_is_a_kubernetes_gpu_resource(tmp_path):
    spec = _compile(tmp_path, res=pipeline.Resources(target="kfp", gpus=1))
    acc = _executor(spec, "train-teacher")["resources"]["accelerator"]
    assert acc["resourceType"] == "nvidia.com/gpu" and acc["resourceCount"] == "1"


def test_image_override_and_no_cache(tmp_path):
    spec = _compile(tmp_path, image="us-docker.pkg.dev/p/r/kd-pipeline:1", enable_caching=False)
    assert _executor(spec, "train-teacher")["image"] == "us-docker.pkg.dev/p/r/kd-pipeline:1"
    assert "enableCache: true" not in yaml.safe_dump(spec)


def test_unknown_vertex_accelerator_is_refused():
    with pytest.raises(SystemExit, match="unknown --accelerator"):
        pipeline.Resources(target="vertex", accelerator="TPU9", gpus=1).accelerator_type()


def test_parameter_defaults_come_from_the_configs(tmp_path):
    from kd.config import DistillConfig, GateConfig, TeacherConfig

    params = _compile(tmp_path)["root"]["inputDefinitions"]["parameters"]
    assert params["temperature"]["defaultValue"] == DistillConfig().temperature
    assert params["alpha"]["defaultValue"] == DistillConfig().alpha
    assert params["teacher_views"]["defaultValue"] == DistillConfig().teacher_views
    assert params["teacher_epochs"]["defaultValue"] == TeacherConfig().epochs
    assert params["source"]["defaultValue"] == "sample"
    assert params["min_kd_gain"]["defaultValue"] == GateConfig().min_kd_gain
    assert params["min_accuracy"]["defaultValue"] == GateConfig().min_accuracy


def test_compile_cli_imports_no_tensorflow(tmp_path):
    code = (
        "import sys, pipeline; pipeline.main(['compile', '--output', sys.argv[1]]); "
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, 'heavy'"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "p.yaml")],
        capture_output=True,
        text=True,
        cwd=Path(pipeline.__file__).parent,
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "p.yaml").exists()


def test_sweep_fans_out_over_the_grid_and_collects(tmp_path):
    for target, kind in (("vertex", "NVIDIA_H100_80GB"), ("kfp", "nvidia.com/gpu")):
        res = pipeline.Resources(target=target, accelerator="H100", gpus=1)
        spec = _compile(tmp_path, res=res, which="sweep")
        tasks = _tasks(spec)
        loop = next(t for t in tasks.values() if "parameterIterator" in t)
        assert loop["parameterIterator"]["items"]["inputParameter"] == "pipelinechannel--grid"
        body = spec["components"][loop["componentRef"]["name"]]["dag"]["tasks"]
        assert "distill-student" in body
        # Fan-in: the selection step takes the loop's collected models.
        students = tasks["select-best-student"]["inputs"]["artifacts"]["students"]
        assert students["taskOutputArtifact"]["producerTask"] == loop["taskInfo"][
            "name"
        ] or students["taskOutputArtifact"]["producerTask"].startswith("for-loop")
        assert _executor(spec, "train-teacher")["resources"]["accelerator"]["resourceType"] == kind
        comp = body["distill-student"]["componentRef"]["name"]
        label = spec["components"][comp]["executorLabel"]
        res_spec = spec["deploymentSpec"]["executors"][label]["container"]["resources"]
        assert res_spec["accelerator"]["resourceType"] == kind
        grid = spec["root"]["inputDefinitions"]["parameters"]["grid"]["defaultValue"]
        assert len(grid) == 9 and set(GRID_KEYS) == set(grid[0])
        assert grid == SweepConfig().grid
        # Each branch takes its loss, as its T and alpha, from its grid point.
        branch_params = body["distill-student"]["inputs"]["parameters"]
        for key in GRID_KEYS:
            assert f'["{key}"]' in branch_params[key]["parameterExpressionSelector"], key


def test_training_parameter_descriptions_are_the_config_field_docs(tmp_path):
    """The compiled YAML carries each training parameter's doc from kd.config (the UI's)."""
    comps = _compile(tmp_path)["components"]
    for comp, classes in (
        ("comp-train-teacher", [TeacherConfig]),
        ("comp-train-student-scratch", [StudentConfig, ScratchConfig]),
        ("comp-distill-student", [DistillConfig]),
    ):
        params = comps[comp]["inputDefinitions"]["parameters"]
        docs = {k: v for cls in classes for k, v in field_docs(cls).items()}
        assert {name: p.get("description") for name, p in params.items()} == docs
        artifacts = comps[comp]["inputDefinitions"]["artifacts"]
        assert all(a.get("description") for a in artifacts.values()), comp


@pytest.mark.parametrize("target", ["vertex", "kfp"])
def test_model_registry_step_runs_after_the_gate_only_when_asked(tmp_path, target):
    from kd.config import RegistryConfig, defaults

    spec = _compile(tmp_path, res=pipeline.Resources(target=target))
    name, condition = _branch(spec, "register-model")
    assert name == "model-registry" and "registry_upload" in condition
    key = next(k for k, t in _all_tasks(spec).items() if t["taskInfo"]["name"] == name)
    outer, gate = _branch(spec, key)
    assert outer == "quality-gate" and "evaluate-Output" in gate
    arts = _all_tasks(spec)["register-model"]["inputs"]["artifacts"]
    assert arts["blessed"] == {"componentInputArtifact": "pipelinechannel--export-model-blessed"}
    assert arts["metrics"] == {"componentInputArtifact": "pipelinechannel--evaluate-metrics"}
    # ... which the branch takes from the export and the evaluation
    into = _all_tasks(spec)[key]["inputs"]["artifacts"]
    assert into["pipelinechannel--export-model-blessed"]["taskOutputArtifact"] == {
        "outputArtifactKey": "blessed",
        "producerTask": "export-model",
    }
    params = spec["root"]["inputDefinitions"]["parameters"]
    for field, value in defaults(RegistryConfig).items():
        assert params[f"registry_{field}"].get("defaultValue", value) == value, field
    assert params["registry_upload"]["defaultValue"] is False
