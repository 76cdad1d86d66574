"""Tests of kd.evaluate on hand-made predictions with known answers and on a tiny Keras model."""

from __future__ import annotations

import math

import numpy as np
import pytest

from kd.config import CLASS_NAMES, EvalConfig
from kd.errors import ArtifactError, DataError
from kd.evaluate import (
    aggregate_runs,
    classification_metrics,
    collapse_check,
    compare_models,
    evaluate_model,
    expected_calibration_error,
    log_softmax,
    measure_speed,
    model_footprint,
    overfitting_analysis,
    predict_logits,
)

ABC = ("a", "b", "c")


def _hand_ce(logits: list[list[float]], y: list[int]) -> float:
    """Cross-entropy by the textbook formula -log(exp(z_y) / sum_j exp(z_j)), averaged."""
    total = 0.0
    for z, t in zip(logits, y, strict=True):
        total += -math.log(math.exp(z[t]) / sum(math.exp(v) for v in z))
    return total / len(y)


# --------------------------------------------------------------------------------------------
# classification_metrics
# --------------------------------------------------------------------------------------------


def test_metrics_known_answers() -> None:
    # predictions: [0, 1, 1, 0]; labels: [0, 0, 1, 2]
    logits = [[2.0, 1.0, 0.0], [0.5, 1.5, -1.0], [0.0, 3.0, 1.0], [1.0, 0.2, 0.9]]
    y = [0, 0, 1, 2]
    m = classification_metrics(np.array(y), np.array(logits), class_names=ABC, ece_bins=5)
    assert m["accuracy"] == pytest.approx(0.5)
    assert m["per_class_accuracy"] == pytest.approx([0.5, 1.0, 0.0])
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [1, 0, 0]]
    assert m["loss"] == pytest.approx(_hand_ce(logits, y), rel=1e-9)
    assert m["predicted_class_counts"] == [2, 2, 0]
    # precision: class a 1/2, b 1/2, c 0 (never predicted); recall = per-class accuracy
    assert m["precision"] == pytest.approx([0.5, 0.5, 0.0])
    assert m["recall"] == pytest.approx([0.5, 1.0, 0.0])
    f1_b = 2 * 0.5 * 1.0 / 1.5
    assert m["f1"] == pytest.approx([0.5, f1_b, 0.0])
    assert m["macro_f1"] == pytest.approx((0.5 + f1_b) / 3)
    assert m["class_names"] == list(ABC)
    assert m["num_examples"] == 4
    assert len(m["reliability"]) == 5
    assert sum(b["count"] for b in m["reliability"]) == 4


def test_labels_as_column_vector_and_cifar_names() -> None:
    logits = np.eye(10, dtype=np.float32) * 5
    m = classification_metrics(np.arange(10).reshape(-1, 1), logits)
    assert m["accuracy"] == 1.0
    assert m["class_names"] == list(CLASS_NAMES)
    assert m["confusion_matrix"] == np.eye(10, dtype=int).tolist()


def test_loss_numerically_stable_for_huge_logits() -> None:
    logits = np.array([[1000.0, -1000.0, 0.0], [-1000.0, 1000.0, 0.0]])
    m = classification_metrics([1, 1], logits, class_names=ABC)
    # first image: log p(y=1) = -2000 (up to exp(-1000) terms); second: ~0
    assert m["loss"] == pytest.approx(1000.0, rel=1e-12)
    assert np.allclose(np.exp(log_softmax(logits)).sum(axis=1), 1.0)


def test_ece_tiny_case_by_hand() -> None:
    # 2 bins: (0, .5] holds conf .3, .4 (acc 1/2), (.5, 1] holds .9, .8 (acc 1/2)
    # ECE = 2/4 * |0.5 - 0.35| + 2/4 * |0.5 - 0.85| = 0.075 + 0.175 = 0.25
    ece, rel = expected_calibration_error(
        np.array([0.9, 0.8, 0.3, 0.4]), np.array([1, 0, 0, 1]), n_bins=2
    )
    assert ece == pytest.approx(0.25)
    assert rel[0]["count"] == 2 and rel[1]["count"] == 2
    assert rel[0]["confidence"] == pytest.approx(0.35)
    assert rel[1]["accuracy"] == pytest.approx(0.5)


def test_ece_from_logits_matches_hand_value() -> None:
    # softmax(log p) = p, so the max probabilities are exactly 0.9, 0.8, 0.3 ... (bins of 0.1)
    probs = np.array([[0.9, 0.05, 0.05], [0.8, 0.1, 0.1], [0.4, 0.3, 0.3], [0.6, 0.2, 0.2]])
    y = [0, 1, 0, 0]  # correct: yes, no, yes, yes
    m = classification_metrics(y, np.log(probs), class_names=ABC, ece_bins=10)
    # bins: .9 -> (0.8,0.9] acc 1; .8 -> (0.7,0.8] acc 0; .4 -> (.3,.4] acc 1; .6 -> (.5,.6] acc 1
    hand = (abs(1 - 0.9) + abs(0 - 0.8) + abs(1 - 0.4) + abs(1 - 0.6)) / 4
    assert m["ece"] == pytest.approx(hand)
    assert m["mean_confidence"] == pytest.approx(np.mean([0.9, 0.8, 0.4, 0.6]))
    empty = [b for b in m["reliability"] if b["count"] == 0]
    assert all(b["accuracy"] is None for b in empty)


def test_perfectly_calibrated_has_zero_ece() -> None:
    conf = np.full(10, 0.7)
    correct = np.array([1] * 7 + [0] * 3)
    ece, _ = expected_calibration_error(conf, correct, n_bins=15)
    assert ece == pytest.approx(0.0, abs=1e-12)


def test_metrics_reject_bad_input() -> None:
    with pytest.raises(DataError, match="labels"):
        classification_metrics([0, 1], np.zeros((3, 3)), class_names=ABC)
    with pytest.raises(DataError, match="0..2"):
        classification_metrics([0, 5], np.zeros((2, 3)), class_names=ABC)
    with pytest.raises(ArtifactError, match="non-finite"):
        classification_metrics([0, 1], np.array([[np.nan, 0, 0], [0, 1, 0]]), class_names=ABC)


# --------------------------------------------------------------------------------------------
# collapse_check
# --------------------------------------------------------------------------------------------


def test_collapse_fires_on_notebook_style_collapse() -> None:
    rng = np.random.default_rng(0)
    # never airplane (0); 80 % on cat (3), dog (5), frog (6); the rest spread over 1,2,4,7,8,9
    n = 10_000
    main = rng.choice([3, 5, 6], size=8000)
    rest = rng.choice([1, 2, 4, 7, 8, 9], size=n - 8000)
    c = collapse_check(np.concatenate([main, rest]))
    assert c["collapsed"] is True
    assert c["top3_share"] == pytest.approx(0.8, abs=0.01)
    assert c["never_predicted"] == ["airplane"]
    assert "airplane" in c["reason"] and "3 classes" in c["reason"]


def test_collapse_quiet_on_healthy_model() -> None:
    rng = np.random.default_rng(1)
    y = rng.integers(0, 10, size=10_000)
    wrong = rng.random(10_000) > 0.7  # ~70 % accuracy, errors spread uniformly
    pred = np.where(wrong, rng.integers(0, 10, size=10_000), y)
    c = collapse_check(pred)
    assert c["collapsed"] is False
    assert c["reason"] == ""
    assert c["never_predicted"] == []
    assert 0.28 < c["top3_share"] < 0.35


def test_collapse_missing_class_rule_and_small_sets() -> None:
    # 9 classes uniform, class 0 never: top-3 share only ~0.33, but a class is missing
    pred = np.repeat(np.arange(1, 10), 100)
    c = collapse_check(pred)
    assert c["collapsed"] is True and "never predicted: airplane" in c["reason"]
    # on 27 images a missing class is chance: only the concentration rule applies
    c_small = collapse_check(np.repeat(np.arange(1, 10), 3))
    assert c_small["collapsed"] is False
    assert c_small["never_predicted"] == ["airplane"]
    # the threshold is honoured
    assert collapse_check(pred, threshold=0.3)["collapsed"] is True


def test_collapse_flag_in_metrics_uses_threshold() -> None:
    y = np.arange(1000) % 10
    logits = np.zeros((1000, 10))
    logits[:, 3] = 1.0  # always "cat"
    m = classification_metrics(y, logits, collapse_threshold=0.6)
    assert m["collapse"]["collapsed"] is True
    assert m["collapse"]["top3_share"] == 1.0
    assert m["accuracy"] == pytest.approx(0.1)


# --------------------------------------------------------------------------------------------
# comparisons and aggregation
# --------------------------------------------------------------------------------------------


def _result(acc: float, params: int, pred: list[int]) -> dict:
    return {"accuracy": acc, "footprint": {"params": params}, "pred": pred}


def test_compare_models_known_answers() -> None:
    results = {
        "teacher": _result(0.90, 1_000_000, [0, 1, 2, 3, 4]),
        "student_distilled": _result(0.80, 100_000, [0, 1, 2, 3, 0]),
        "student_scratch": _result(0.75, 100_000, [0, 2, 2, 0, 0]),
    }
    c = compare_models(results)
    assert c["kd_gain_points"] == pytest.approx(5.0)
    assert c["relative_error_reduction"] == pytest.approx((0.25 - 0.20) / 0.25)
    assert c["compression_ratio"] == pytest.approx(10.0)
    assert c["compression_ratios"]["student_scratch"] == pytest.approx(10.0)
    assert c["accuracy_gap_to_teacher_points"] == pytest.approx(
        {"student_distilled": 10.0, "student_scratch": 15.0}
    )
    assert c["agreement_with_teacher"] == pytest.approx(
        {"student_distilled": 0.8, "student_scratch": 0.4}
    )


def test_paired_gain_interval_known_answer_and_limits() -> None:
    from kd.evaluate import paired_gain_interval

    y = [0] * 10
    a = [0] * 6 + [1] * 4  # right on images 0-5
    b = [0, 0, 1, 1, 1, 1, 0, 0, 1, 1]  # right on 0, 1, 6, 7
    # d = +1 on images 2-5, -1 on 6-7, 0 elsewhere: mean 0.2, sd (ddof 1) sqrt(5.6 / 9)
    iv = paired_gain_interval(y, a, b)
    se = 100 * (5.6 / 9) ** 0.5 / 10**0.5
    assert iv["gain_points"] == pytest.approx(20.0)
    assert iv["low_points"] == pytest.approx(20.0 - 1.96 * se)
    assert iv["high_points"] == pytest.approx(20.0 + 1.96 * se)
    assert (iv["n"], iv["only_a"], iv["only_b"]) == (10, 4, 2)
    assert iv["mcnemar_p"] == pytest.approx(1 - 20 / 64)  # P(X != 3), X ~ Bin(6, 1/2)
    assert iv["resolved"] is False
    same = paired_gain_interval(y, a, a)  # identical predictions: no gain, nothing to test
    assert same["gain_points"] == same["low_points"] == same["high_points"] == 0.0
    assert same["mcnemar_p"] == 1.0 and same["resolved"] is False
    wide = paired_gain_interval([0] * 400, [0] * 300 + [1] * 100, [0] * 200 + [1] * 200)
    assert wide["resolved"] is True and wide["low_points"] > 0
    # 7 images only a gets right, 1 only b, of 2,000: the normal interval excludes 0, but
    # McNemar's exact p = 0.07, so the gain is not called resolved.
    few = paired_gain_interval([0] * 2000, [0] * 7 + [1] * 1993, [1] * 7 + [0] + [1] * 1992)
    assert few["low_points"] > 0 and few["mcnemar_p"] == pytest.approx(0.0703125)
    assert few["resolved"] is False
    c = compare_models(
        {
            "student_distilled": _result(0.6, 5, a),
            "student_scratch": _result(0.4, 5, b),
        },
        labels=y,
    )
    assert c["kd_gain_interval"] == iv
    with pytest.raises(DataError, match="same test images"):
        paired_gain_interval(y, a, b[:5])


def test_compare_models_missing_model_and_mismatch() -> None:
    c = compare_models({"teacher": _result(0.9, 10, [0]), "student_scratch": _result(0.7, 5, [0])})
    assert c["kd_gain_points"] is None and c["compression_ratio"] is None
    assert c["accuracy_gap_to_teacher_points"]["student_scratch"] == pytest.approx(20.0)
    with pytest.raises(ArtifactError, match="same test images"):
        compare_models(
            {"teacher": _result(0.9, 10, [0, 1]), "student_scratch": _result(0.7, 5, [0])}
        )


def test_overfitting_analysis() -> None:
    h = {
        "epoch": [1, 2, 3],
        "accuracy": [0.5, 0.7, 0.9],
        "val_accuracy": [0.45, 0.65, 0.6],
        "loss": [1.0, 0.8, 0.3],
    }
    o = overfitting_analysis(h)
    assert o["best_epoch"] == 2
    assert o["best_val_accuracy"] == pytest.approx(0.65)
    assert o["gap_at_best_points"] == pytest.approx(5.0)
    assert o["final_gap_points"] == pytest.approx(30.0)
    assert o["epochs_after_best"] == 1
    assert o["epochs_run"] == 3
    # resumed run: epochs numbered from 11
    assert overfitting_analysis({**h, "epoch": [11, 12, 13]})["best_epoch"] == 12


def test_overfitting_missing_keys() -> None:
    o = overfitting_analysis({"loss": [1.0, 0.5]})
    assert o["best_epoch"] is None and o["final_gap_points"] is None
    assert "val_accuracy" in o["note"]
    o = overfitting_analysis({"val_accuracy": [0.2, 0.4, 0.3]})
    assert o["best_epoch"] == 2 and o["gap_at_best_points"] is None
    assert overfitting_analysis({})["epochs_run"] == 0


def test_aggregate_runs_mean_std() -> None:
    def run(t: float, d: float, s: float) -> dict:
        return {
            "teacher": {"accuracy": t},
            "student_distilled": {"accuracy": d},
            "student_scratch": {"accuracy": s},
        }

    agg = aggregate_runs(
        [run(0.90, 0.80, 0.75), run(0.92, 0.82, 0.76), {"results": run(0.91, 0.81, 0.77)}]
    )
    assert agg["n_runs"] == 3
    assert agg["models"]["teacher"]["accuracy_mean"] == pytest.approx(0.91)
    assert agg["models"]["teacher"]["accuracy_std"] == pytest.approx(0.01)  # ddof=1
    assert agg["kd_gain_points"]["values"] == pytest.approx([5.0, 6.0, 4.0])
    assert agg["kd_gain_points"]["mean"] == pytest.approx(5.0)
    assert agg["kd_gain_points"]["std"] == pytest.approx(1.0)
    assert agg["kd_gain_exceeds_spread"] is True

    noisy = aggregate_runs([run(0.9, 0.81, 0.80), run(0.9, 0.79, 0.80), run(0.9, 0.83, 0.80)])
    assert noisy["kd_gain_points"]["mean"] == pytest.approx(1.0)
    assert noisy["kd_gain_points"]["std"] == pytest.approx(2.0)
    assert noisy["kd_gain_exceeds_spread"] is False

    one = aggregate_runs([run(0.9, 0.85, 0.80)])
    assert one["models"]["student_distilled"]["accuracy_std"] == 0.0
    assert one["kd_gain_exceeds_spread"] is False
    assert "one run" in one["note"]


# --------------------------------------------------------------------------------------------
# A real (tiny) Keras model
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_model():
    import keras

    keras.utils.set_random_seed(0)
    return keras.Sequential(
        [
            keras.Input((32, 32, 3)),
            keras.layers.Rescaling(1 / 255),
            keras.layers.Flatten(),
            keras.layers.Dense(10),
        ]
    )


@pytest.fixture(scope="module")
def images() -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(64, 32, 32, 3), dtype=np.uint8)
    y = rng.integers(0, 10, size=64)
    return x, y


def test_predict_logits_matches_predict(tiny_model, images) -> None:
    x, _ = images
    streamed = predict_logits(tiny_model, x, batch_size=7)
    full = tiny_model.predict(x.astype(np.float32), verbose=0)
    assert streamed.shape == (64, 10) and streamed.dtype == np.float32
    np.testing.assert_allclose(streamed, full, rtol=1e-5, atol=1e-5)


def test_predict_logits_streams_batches() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.shapes: list[tuple[int, ...]] = []

        def predict_on_batch(self, batch: np.ndarray) -> np.ndarray:
            self.shapes.append(batch.shape)
            assert batch.dtype == np.float32
            return np.tile(batch[:, 0, 0, :1], (1, 10))

    x = np.arange(10, dtype=np.uint8).reshape(10, 1, 1, 1) * np.ones((1, 2, 2, 3), np.uint8)
    rec = Recorder()
    out = predict_logits(rec, x, batch_size=4)
    assert [s[0] for s in rec.shapes] == [4, 4, 2]
    np.testing.assert_array_equal(out[:, 0], np.arange(10))
    with pytest.raises(DataError):
        predict_logits(rec, x[:0])
    with pytest.raises(DataError):
        predict_logits(rec, x[0])


def test_evaluate_model_on_tiny_keras_model(tiny_model, images, tmp_path) -> None:
    x, y = images
    path = tmp_path / "tiny.keras"
    tiny_model.save(path)
    cfg = EvalConfig(batch_size=16, latency_runs=5, throughput_batch=16)
    r = evaluate_model(tiny_model, x, y, name="student_scratch", cfg=cfg, model_path=path)
    for key in (
        "name",
        "accuracy",
        "loss",
        "per_class_accuracy",
        "precision",
        "recall",
        "f1",
        "macro_f1",
        "confusion_matrix",
        "ece",
        "reliability",
        "predicted_class_counts",
        "collapse",
        "footprint",
        "speed",
        "pred",
    ):
        assert key in r, key
    assert r["name"] == "student_scratch"
    assert r["footprint"]["params"] == 32 * 32 * 3 * 10 + 10
    assert r["footprint"]["trainable_params"] == 30730
    assert r["footprint"]["size_bytes"] == path.stat().st_size > 0
    assert len(r["pred"]) == 64 and all(isinstance(p, int) for p in r["pred"])
    assert sum(map(sum, r["confusion_matrix"])) == 64
    logits = tiny_model.predict(x.astype(np.float32), verbose=0)
    assert r["accuracy"] == pytest.approx(float(np.mean(logits.argmax(1) == y)))
    s = r["speed"]
    assert 0 < s["latency_p50_ms"] <= s["latency_p95_ms"]
    assert s["throughput_ips"] > 0 and s["latency_runs"] == 5
    assert {"node", "processor", "cpu_count", "keras_backend", "gpu"} <= set(s["machine"])

    no_speed = evaluate_model(tiny_model, x, y, name="t", cfg=cfg, measure=False)
    assert no_speed["speed"] is None and no_speed["footprint"]["size_bytes"] is None


def test_footprint_of_folder_and_speed_with_small_x(tiny_model, images, tmp_path) -> None:
    folder = tmp_path / "saved"
    folder.mkdir()
    (folder / "a.bin").write_bytes(b"x" * 100)
    (folder / "sub").mkdir()
    (folder / "sub" / "b.bin").write_bytes(b"y" * 23)
    assert model_footprint(tiny_model, folder)["size_bytes"] == 123
    assert model_footprint(tiny_model, tmp_path / "missing")["size_bytes"] is None
    # throughput batch larger than x: images are tiled
    s = measure_speed(tiny_model, images[0][:3], EvalConfig(latency_runs=2, throughput_batch=8))
    assert s["throughput_batch"] == 8 and s["throughput_ips"] > 0
