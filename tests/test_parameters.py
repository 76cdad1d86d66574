"""Every layer agrees with the configs: pipeline signatures, components and the mapping."""

import dataclasses
import inspect

import pytest

import parameters
from components.distill_student import distill_student
from components.train_student_scratch import train_student_scratch
from components.train_teacher import train_teacher
from kd.config import (
    DistillConfig,
    GateConfig,
    SplitConfig,
    StudentConfig,
    TeacherConfig,
    TeacherSourceConfig,
    TrainConfig,
)

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
    }
    for param, (stage, field, value) in changes.items():
        got = parameters.stage_configs(parameters.resolve({param: value}))
        # student_* settings apply to both students, scratch and distilled.
        stages = {"student", "distill"} if param.startswith("student_") else {stage}
        for s in stages:
            assert getattr(got[s], field) == value, (param, s)
        for other in {"split", "teacher", "student", "distill", "gate", "export"} - stages:
            assert got[other] == base[other], (param, other)


def test_unknown_names_suggest_the_closest_known_one():
    with pytest.raises(parameters.ParameterError, match="did you mean 'temperature'"):
        parameters.resolve({"tempreature": 4})


@pytest.mark.parametrize("target", ["vertex", "kfp"])
def test_a_local_teacher_is_refused_for_remote_targets(target):
    with pytest.raises(parameters.ParameterError, match="teacher_model"):
        parameters.resolve({"teacher_model": "shipped"}, target=target)
    parameters.resolve({"teacher_model": "gs://b/t.keras"}, target=target)
    parameters.resolve({"teacher_model": "shipped"}, target="local")
