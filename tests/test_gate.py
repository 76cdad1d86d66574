"""The quality gate: decided on validation results, refusing collapsed models."""

import pytest

from kd.config import GateConfig
from kd.stages import gate_decision


def _val(distilled: float, scratch: float, teacher: float = 0.9, collapsed: str = "") -> dict:
    return {
        name: {"accuracy": acc, "collapse": {"collapsed": name == collapsed}}
        for name, acc in (
            ("teacher", teacher),
            ("student_distilled", distilled),
            ("student_scratch", scratch),
        )
    }


def test_the_defaults_mean_something():
    cfg = GateConfig()
    assert cfg.min_kd_gain > 0 and cfg.min_accuracy > 0.1  # better than scratch and chance


def test_passes_when_every_condition_holds():
    ok, reason, detail = gate_decision(_val(0.62, 0.55), GateConfig(1.0, 0.3))
    assert ok and reason.startswith("gate passed on validation")
    assert detail["val_kd_gain_points"] == pytest.approx(7.0)
    assert detail["decided_on"] == "validation" and detail["deciding"] == "all conditions passed"


@pytest.mark.parametrize(
    "val, cfg, deciding",
    [
        (_val(0.56, 0.555), GateConfig(1.0, 0.3), "validation KD gain 0.5 points < required 1.0"),
        (_val(0.25, 0.1), GateConfig(1.0, 0.3), "distilled validation accuracy 0.25 < required"),
        (_val(0.7, 0.5, collapsed="teacher"), GateConfig(1.0, 0.3), "collapsed on validation"),
        (_val(0.7, 0.5, collapsed="student_scratch"), GateConfig(-100, 0), "student_scratch"),
    ],
    ids=["gain", "accuracy", "collapsed-teacher", "collapsed-scratch"],
)
def test_fails_naming_the_condition_that_decided(val, cfg, deciding):
    ok, reason, detail = gate_decision(val, cfg)
    assert not ok and reason.startswith("gate failed")
    assert deciding in detail["deciding"] and deciding in reason


def test_collapsed_models_pass_only_when_allowed():
    val = _val(0.7, 0.5, collapsed="student_scratch")
    assert not gate_decision(val, GateConfig(1.0, 0.3))[0]
    ok, reason, _ = gate_decision(val, GateConfig(1.0, 0.3, refuse_collapsed=False))
    assert ok and "collapsed, allowed" in reason


def test_the_gain_is_distilled_minus_scratch():
    _, _, detail = gate_decision(_val(0.40, 0.52), GateConfig(-100, 0))
    assert detail["val_kd_gain_points"] == pytest.approx(-12.0)
