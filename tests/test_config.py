"""Config validation: every bad value fails with a message naming the field and the fix."""

from __future__ import annotations

import pytest

from kd.config import (
    DistillConfig,
    EvalConfig,
    GateConfig,
    SplitConfig,
    StudentConfig,
    TeacherConfig,
    defaults,
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
