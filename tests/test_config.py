"""Config validation: every bad value fails with a message naming the field and the fix."""

from __future__ import annotations

import dataclasses

import pytest

from kd.config import (
    GRID_KEYS,
    LOSS_KEYS,
    DistillConfig,
    EvalConfig,
    ExportConfig,
    GateConfig,
    ResourceConfig,
    SplitConfig,
    StudentConfig,
    SweepConfig,
    TeacherConfig,
    TeacherSourceConfig,
    defaults,
    field_docs,
    from_dict,
)
from kd.errors import ConfigError


@pytest.mark.parametrize(
    ("cls", "kwargs", "match"),
    [
        (DistillConfig, {"temperature": 0}, "temperature"),
        (DistillConfig, {"temperature": -1.0}, "temperature"),
        (DistillConfig, {"alpha": 1.5}, "alpha"),
        (DistillConfig, {"alpha": -0.1}, "alpha"),
        (DistillConfig, {"kd_loss": "dk"}, "kd_loss"),
        (DistillConfig, {"dkd_beta": -1.0}, "dkd_beta"),
        (DistillConfig, {"dist_gamma": float("inf")}, "dist_gamma"),
        (DistillConfig, {"kd_loss": "dkd", "dkd_alpha": 0.0, "dkd_beta": 0.0}, "both 0"),
        (DistillConfig, {"kd_loss": "dist", "dist_beta": 0.0, "dist_gamma": 0.0}, "both 0"),
        (DistillConfig, {"kd_loss": "dist", "logit_standardization": True}, "not dist"),
        (DistillConfig, {"logit_standardization": 1}, "logit_standardization"),
        (TeacherConfig, {"epochs": 0}, "epochs"),
        (TeacherConfig, {"batch_size": 0}, "batch_size"),
        (TeacherConfig, {"preset": "vgg99"}, "preset"),
        (TeacherConfig, {"optimizer": "lion"}, "optimizer"),
        (TeacherConfig, {"learning_rate": float("nan")}, "learning_rate"),
        (TeacherConfig, {"label_smoothing": 1.0}, "label_smoothing"),
        (StudentConfig, {"epochs": 2.5}, "epochs"),
        (SplitConfig, {"val_fraction": 0.0}, "val_fraction"),
        (SplitConfig, {"val_fraction": 1.0}, "val_fraction"),
        (SplitConfig, {"source": ""}, "source"),
        (EvalConfig, {"batch_size": -3}, "batch_size"),
        (GateConfig, {"min_accuracy": 2.0}, "min_accuracy"),
        (SweepConfig, {"grid": []}, "grid"),
        (SweepConfig, {"grid": [{"temperature": 4}]}, "grid point"),
        (SweepConfig, {"grid": [{"temperature": 0, "alpha": 0.1}]}, "temperature"),
        (SweepConfig, {"grid": [{"temperature": 4, "alpha": 2}]}, "alpha"),
        (SweepConfig, {"grid": [{"temperature": 4, "alpha": 0.1, "beta": 2}]}, "no others"),
        (ResourceConfig, {"target": "k8s"}, "target"),
        (ResourceConfig, {"gpus": -1}, "gpus"),
        (ResourceConfig, {"retries": -1}, "retries"),
        (ResourceConfig, {"train_memory": ""}, "train_memory"),
    ],
)
def test_invalid_values_fail_clearly(cls, kwargs, match):
    with pytest.raises(ConfigError, match=match) as err:
        cls(**kwargs)
    # The message names the value and what to do.
    assert "must" in str(err.value) or "choose" in str(err.value)


def test_defaults_are_defined_once_and_students_share_them():
    assert defaults(DistillConfig)["learning_rate"] == defaults(StudentConfig)["learning_rate"]
    assert defaults(DistillConfig)["clipnorm"] == 2.0
    assert defaults(DistillConfig)["alpha"] == 0.1 and defaults(DistillConfig)["temperature"] == 5
    assert defaults(SplitConfig)["val_fraction"] == 0.2


def test_from_dict_refuses_unknown_fields():
    with pytest.raises(ConfigError, match="unknown DistillConfig field"):
        from_dict(DistillConfig, {"temprature": 4})
    assert from_dict(DistillConfig, {"temperature": 4}).temperature == 4


def test_the_sweep_grid_default_is_a_fresh_list_of_nine_points():
    grid = defaults(SweepConfig)["grid"]
    assert grid == SweepConfig().grid and grid is not defaults(SweepConfig)["grid"]
    assert len(grid) == 9 and set(GRID_KEYS) == set(grid[0])
    # Every point carries DistillConfig's own loss defaults (the sweep pipeline reads them all).
    loss = {k: v for k, v in defaults(DistillConfig).items() if k in LOSS_KEYS}
    assert all({k: p[k] for k in LOSS_KEYS} == loss for p in grid)


@pytest.mark.parametrize(
    "cls",
    [
        SplitConfig,
        TeacherConfig,
        StudentConfig,
        DistillConfig,
        TeacherSourceConfig,
        EvalConfig,
        GateConfig,
        ExportConfig,
        SweepConfig,
        ResourceConfig,
    ],
)
def test_every_field_is_documented_once_in_an_args_section(cls):
    """The components' parameter descriptions are these docs (components.docs)."""
    docs = field_docs(cls)
    assert set(docs) == {f.name for f in dataclasses.fields(cls)}
    assert all(doc and "\n" not in doc for doc in docs.values())
