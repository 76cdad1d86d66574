"""Every layer agrees with the configs: pipeline signatures, components and the mapping."""

import argparse
import dataclasses
import inspect

import pytest
from kfp.dsl.types.type_utils import is_parameter_type

import parameters
import pipeline
import submit
from components.check_teacher import check_teacher
from components.data_split import data_split
from components.distill_student import distill_student
from components.evaluate import evaluate
from components.export_model import export_model
from components.register_model import register_model
from components.train_student_scratch import train_student_scratch
from components.train_teacher import train_teacher
from kd.config import (
    DistillConfig,
    EvalConfig,
    ExportConfig,
    GateConfig,
    RegistryConfig,
    ResourceConfig,
    ScratchConfig,
    SplitConfig,
    StudentConfig,
    SweepConfig,
    TeacherConfig,
    TeacherSourceConfig,
    TrainConfig,
    field_docs,
)
from local_runner.__main__ import build_parser

TRAIN_FIELDS = [f.name for f in dataclasses.fields(TrainConfig)]


@pytest.mark.parametrize("which", ["main", "sweep"])
def test_pipeline_parameters_carry_every_training_field_with_the_configs_default(which):
    params = parameters.pipeline_parameters(which)
    for name in TRAIN_FIELDS:
        assert params[f"teacher_{name}"] == getattr(TeacherConfig(), name), name
        assert params[f"student_{name}"] == getattr(StudentConfig(), name), name
    assert params["teacher_model"] == TeacherSourceConfig().model
    assert params["teacher_views"] == DistillConfig().teacher_views
    assert params["source"] == SplitConfig().source


def test_main_pipeline_defaults_equal_the_gate_and_distill_configs():
    params = parameters.pipeline_parameters("main")
    for f in dataclasses.fields(GateConfig):
        assert params[f.name] == getattr(GateConfig(), f.name), f.name
    assert params["temperature"] == DistillConfig().temperature
    assert params["alpha"] == DistillConfig().alpha
    assert params["export_check_images"] == ExportConfig().check_images
    assert params["calibration_images"] == ExportConfig().calibration_images
    assert params["scratch_learning_rate"] == ScratchConfig().scratch_learning_rate


def test_the_sweep_grid_default_is_the_sweep_configs():
    assert parameters.pipeline_parameters("sweep")["grid"] == SweepConfig().grid


def _fields(cls, *names):
    """``{parameter: (cls, field)}`` for parameters named as their fields (default: all)."""
    return {n: (cls, n) for n in names or [f.name for f in dataclasses.fields(cls)]}


# Each component's parameters (its non-artifact inputs) and the config field each one is.
COMPONENT_FIELDS = [
    (train_teacher, _fields(TeacherConfig)),
    (train_student_scratch, {**_fields(StudentConfig), **_fields(ScratchConfig)}),
    (distill_student, _fields(DistillConfig)),
    (
        data_split,
        {
            **_fields(SplitConfig, "source", "val_fraction", "train_per_class", "test_per_class"),
            "split_seed": (SplitConfig, "seed"),
        },
    ),
    (evaluate, {**_fields(EvalConfig, "batch_size", "latency_runs"), **_fields(GateConfig)}),
    (export_model, _fields(ExportConfig)),
    (
        register_model,
        {
            f"registry_{f.name}": (RegistryConfig, f.name)
            for f in dataclasses.fields(RegistryConfig)
        },
    ),
    (
        check_teacher,
        {
            "teacher_uri": (TeacherSourceConfig, "model"),
            "student_preset": (StudentConfig, "preset"),
        },
    ),
]


@pytest.mark.parametrize(
    "component, fields", COMPONENT_FIELDS, ids=[c.name for c, _ in COMPONENT_FIELDS]
)
def test_component_descriptions_are_the_config_field_docs(component, fields):
    """What the KFP / Vertex AI UI shows for each parameter is its config field's doc."""
    inputs = component.component_spec.inputs
    params = {n for n, spec in inputs.items() if is_parameter_type(spec.type)}
    assert params == set(fields)
    for name, (cls, field) in fields.items():
        assert inputs[name].description == field_docs(cls)[field], name
    # The artifact inputs keep the component's own docs.
    assert all(inputs[n].description for n in set(inputs) - params)


RESOURCE_OPTIONS = {"target", "accelerator", "gpus", "train_cpu", "train_memory", "retries"}
RESOURCE_OPTIONS |= {"replicas", "machine_type"}


@pytest.mark.parametrize("for_submit", [False, True], ids=["compile", "submit"])
def test_pipeline_cli_defaults_are_the_resource_configs(for_submit):
    """``pipeline.py compile`` and ``submit`` (the same target default) with no options."""
    parser = argparse.ArgumentParser()
    if for_submit:
        submit.add_submit_arguments(parser)
    pipeline._add_compile_options(parser, for_submit=for_submit)
    res = pipeline._resources(parser.parse_args([]))
    assert dataclasses.asdict(res) == dataclasses.asdict(ResourceConfig())
    actions = {a.dest: a for a in parser._actions if a.dest in RESOURCE_OPTIONS}
    assert set(actions) == RESOURCE_OPTIONS
    for dest in RESOURCE_OPTIONS - {"accelerator", "machine_type"}:  # their help names theirs
        assert "%(default)s" in actions[dest].help, dest


def test_local_runner_retries_default_is_the_resource_configs():
    args = build_parser().parse_args(["run"])
    assert args.retries == ResourceConfig().retries
    assert args.preset is None  # None: the pipeline's default, TrainConfig.preset


@pytest.mark.parametrize(
    "component, cls",
    [(train_teacher, TeacherConfig), (train_student_scratch, StudentConfig)],
)
def test_training_components_take_every_field(component, cls):
    names = set(inspect.signature(component.python_func).parameters)
    assert {f.name for f in dataclasses.fields(cls)} <= names


def test_the_distill_component_takes_every_field():
    names = set(inspect.signature(distill_student.python_func).parameters)
    assert {f.name for f in dataclasses.fields(DistillConfig)} <= names


def test_the_mapping_carries_each_parameter_to_its_stage():
    """Changing any one parameter changes exactly the config field it names."""
    base = parameters.stage_configs(parameters.resolve({}))
    changes = {
        "teacher_epochs": ("teacher", "epochs", 7),
        "student_epochs": ("student", "epochs", 7),
        "student_learning_rate": ("distill", "learning_rate", 0.01),
        "temperature": ("distill", "temperature", 3.0),
        "alpha": ("distill", "alpha", 0.5),
        "teacher_views": ("distill", "teacher_views", 2),
        "min_kd_gain": ("gate", "min_kd_gain", 2.0),
        "refuse_collapsed": ("gate", "refuse_collapsed", False),
        "calibration_images": ("export", "calibration_images", 17),
        "split_seed": ("split", "seed", 5),
        "student_devices": ("student", "devices", 2),
        "teacher_devices": ("teacher", "devices", 2),
        "teacher_feature_layer": ("distill", "teacher_feature_layer", "b2_pool"),
        "registry_display_name": ("registry", "display_name", "my-student"),
        "registry_machine_type": ("registry", "machine_type", "n1-standard-8"),
        # The scratch student's own rate: the distilled student keeps student_learning_rate.
        "scratch_learning_rate": ("student", "learning_rate", 0.02),
    }
    for param, (stage, field, value) in changes.items():
        got = parameters.stage_configs(parameters.resolve({param: value}))
        # student_* settings apply to both students, scratch and distilled.
        stages = {"student", "distill"} if param.startswith("student_") else {stage}
        for s in stages:
            assert getattr(got[s], field) == value, (param, s)
        others = {"split", "teacher", "student", "distill", "gate", "export", "registry"}
        for other in others - stages:
            assert got[other] == base[other], (param, other)


def test_teacher_mixup_views_reaches_the_distillation_only():
    base = parameters.stage_configs(parameters.resolve({"teacher_views": 2}))
    got = parameters.stage_configs(
        parameters.resolve({"teacher_views": 2, "teacher_mixup_views": 6})
    )
    assert got["distill"].teacher_mixup_views == 6
    assert dataclasses.replace(got["distill"], teacher_mixup_views=0) == base["distill"]
    assert {k for k in got if got[k] != base[k]} == {"distill"}
    sweep = parameters.resolve({"teacher_views": 2, "teacher_mixup_views": 6}, which="sweep")
    assert sweep["teacher_mixup_views"] == 6
    with pytest.raises(parameters.ParameterError, match="set teacher_views >= 1"):
        parameters.resolve({"teacher_mixup_views": 6}, which="sweep")


def test_with_the_baselines_own_rate_student_learning_rate_moves_the_distilled_student_only():
    """The demo's case: scratch_learning_rate set, so the shared rate is the distilled one's."""
    base = parameters.stage_configs(parameters.resolve({"scratch_learning_rate": 0.035}))
    got = parameters.stage_configs(
        parameters.resolve({"scratch_learning_rate": 0.035, "student_learning_rate": 0.07})
    )
    assert base["student"].learning_rate == got["student"].learning_rate == 0.035
    assert got["distill"].learning_rate == 0.07
    assert got["student"] == base["student"]


@pytest.mark.parametrize(
    "grid, names",
    [
        ([], ["grid=[]", "non-empty list"]),
        ([{"temperature": 4}], ["{'temperature': 4}", "keys temperature and alpha"]),
        (
            [{"temperature": 4, "alpha": 0.1}, {"temperature": 0, "alpha": 0.1}],
            ["grid point {'temperature': 0, 'alpha': 0.1}", "temperature=0"],
        ),
    ],
    ids=["empty", "missing-key", "bad-temperature"],
)
def test_a_bad_sweep_grid_is_refused_naming_the_point_and_the_fix(grid, names):
    with pytest.raises(parameters.ParameterError) as exc:
        parameters.resolve({"grid": grid}, "sweep")
    for text in [*names, "Fix: e.g. --param grid="]:
        assert text in str(exc.value)


def test_the_local_runner_runs_the_pipelines_pipeline_py_defines():
    (action,) = [a for a in build_parser()._subparsers._group_actions if a.dest == "command"]
    run = action.choices["run"]
    (pipeline_option,) = [a for a in run._actions if a.dest == "pipeline"]
    assert tuple(pipeline_option.choices) == pipeline.PIPELINES


def test_unknown_names_suggest_the_closest_known_one():
    with pytest.raises(parameters.ParameterError, match="did you mean 'temperature'"):
        parameters.resolve({"tempreature": 4})


@pytest.mark.parametrize("target", ["vertex", "kfp"])
def test_a_local_teacher_is_refused_for_remote_targets(target):
    with pytest.raises(parameters.ParameterError, match="teacher_model"):
        parameters.resolve({"teacher_model": "shipped"}, target=target)
    parameters.resolve({"teacher_model": "gs://b/t.keras"}, target=target)
    parameters.resolve({"teacher_model": "shipped"}, target="local")


def test_config_args_refuses_an_undocumented_parameter_and_a_stray_rename():
    from components.docs import config_args

    def split(source: str, split_seed: int):
        """Split."""

    with pytest.raises(TypeError, match="no doc for \\['split_seed'\\]"):
        config_args(SplitConfig)(split)
    with pytest.raises(TypeError, match="for no parameter \\['seed_of_split'\\]"):
        config_args(SplitConfig, rename={"split_seed": "seed", "seed_of_split": "seed"})(split)
    documented = config_args(SplitConfig, rename={"split_seed": "seed"})(split)
    assert f"split_seed: {field_docs(SplitConfig)['seed']}" in documented.__doc__


def test_each_sweep_grid_point_gets_the_loss_defaults_it_leaves_out():
    """The sweep's loop body reads every GRID_KEYS key of each point: resolve fills in
    DistillConfig's defaults and keeps what the point sets."""
    from kd.config import LOSS_KEYS, DistillConfig, defaults

    grid = [{"temperature": 4, "alpha": 0.1}, {"temperature": 2, "alpha": 0.5, "kd_loss": "dist"}]
    params = parameters.resolve({"grid": grid}, "sweep")
    loss = {k: v for k, v in defaults(DistillConfig).items() if k in LOSS_KEYS}
    assert params["grid"] == [
        {"temperature": 4, "alpha": 0.1, **loss},
        {"temperature": 2, "alpha": 0.5, **loss, "kd_loss": "dist"},
    ]
    assert grid[0] == {"temperature": 4, "alpha": 0.1}  # the caller's list is not changed


def test_the_global_batch_check_takes_each_steps_own_device_count():
    """``--gpus 3`` with steps pinned to one device each, or a brought teacher, is fine; a
    batch that does not split over what a step trains on is refused."""
    params = parameters.resolve({"teacher_devices": 1, "student_devices": 1})
    parameters.check_global_batch(params, 3)  # each step: 1 device
    brought = parameters.resolve({"teacher_model": "shipped", "student_batch_size": 126})
    parameters.check_global_batch(brought, 3)  # no teacher trains
    with pytest.raises(parameters.ParameterError, match="invalid teacher_batch_size=128.*3 GPUs"):
        parameters.check_global_batch(parameters.resolve({}), 3)
    pinned = parameters.resolve({"student_devices": 2, "student_batch_size": 126})
    parameters.check_global_batch(pinned | {"teacher_devices": 4}, 4)  # 126 / 2
