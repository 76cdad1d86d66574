"""The sweep's selection: by validation accuracy, never test; the heatmap report."""

import json
from pathlib import Path

import numpy as np
import pytest

from kd.errors import ArtifactError
from kd.sweep import choose, grid_points, read_candidates, select_best


def _fake_student(root: Path, t: float, a: float, val: float) -> str:
    d = root / f"t{t}-a{a}"
    d.mkdir(parents=True)
    info = {"best_val_accuracy": val, "config": {"temperature": t, "alpha": a}}
    (d / "info.json").write_text(json.dumps(info))
    return str(d)


def test_grid_points():
    assert grid_points([2, 4], [0.1]) == [
        {"temperature": 2.0, "alpha": 0.1},
        {"temperature": 4.0, "alpha": 0.1},
    ]


def test_choice_is_by_validation_accuracy(tmp_path):
    dirs = [
        _fake_student(tmp_path, 2, 0.1, 0.50),
        _fake_student(tmp_path, 4, 0.5, 0.61),
        _fake_student(tmp_path, 8, 0.9, 0.61),
    ]
    chosen = choose(read_candidates(dirs))
    assert (chosen["temperature"], chosen["alpha"]) == (4.0, 0.5)  # tie: lower T wins


def test_not_a_distilled_student_is_refused(tmp_path):
    d = tmp_path / "x"
    d.mkdir()
    (d / "info.json").write_text(json.dumps({"best_val_accuracy": 0.5, "config": {}}))
    with pytest.raises(ArtifactError, match="not a distilled student"):
        read_candidates([str(d)])
    with pytest.raises(ArtifactError, match="no students"):
        read_candidates([])


def test_select_best_copies_the_chosen_model_and_reports(tmp_path):
    from kd.config import StudentConfig
    from kd.data import content_sha256, save_dataset
    from kd.train import train_student_scratch

    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (60, 32, 32, 3), dtype=np.uint8)
    y = np.arange(60) % 10
    res = train_student_scratch(
        (x, y),
        (x, y),
        StudentConfig(epochs=1, batch_size=30, divergence_check_epoch=0),
        tmp_path / "m",
    )
    dirs = []
    for t, a, val in ((2.0, 0.1, 0.3), (5.0, 0.5, 0.7)):
        d = tmp_path / f"s{t}"
        d.mkdir()
        (d / "model.keras").write_bytes(res.model_path.read_bytes())
        (d / "info.json").write_text(
            json.dumps({"best_val_accuracy": val, "config": {"temperature": t, "alpha": a}})
        )
        dirs.append(str(d))
    test = tmp_path / "test.npz"
    save_dataset(test, x, y)
    out = select_best(
        dirs, (str(test), content_sha256(x, y)), str(tmp_path / "best"), str(tmp_path / "report")
    )
    assert out["chosen"]["temperature"] == 5.0
    from kd.evaluate import predict_logits
    from kd.model_folder import load_model

    chosen = load_model(tmp_path / "best")
    assert out["test_accuracy"] == pytest.approx(
        float(np.mean(predict_logits(chosen, x).argmax(1) == y))
    )
    assert (tmp_path / "best" / "model.keras").exists()
    html = (tmp_path / "report" / "sweep.html").read_text()
    assert "data:image/png;base64" in html and "not used to choose" in html
    assert (tmp_path / "report" / "heatmap.png").stat().st_size > 1000
