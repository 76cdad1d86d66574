"""Benchmark helpers: the lossless data transfer to the GPU machine and the FLOP count."""

from __future__ import annotations

import numpy as np
import pytest

from bench.device_data import pack, unpack
from bench.gpu_speed import forward_flops
from bench.plan_epochs import STAGES


def _write_source(folder, rng):
    folder.mkdir()
    for name, n in (("train", 30), ("test", 10)):
        x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        np.savez_compressed(folder / f"{name}.npz", x=x, y=(np.arange(n) % 10).astype(np.uint8))


def test_pack_unpack_round_trip_is_exact(tmp_path):
    _write_source(tmp_path / "src", np.random.default_rng(0))
    pack(tmp_path / "src", tmp_path / "parts", parts=2)
    parts = sorted((tmp_path / "parts").glob("part-*.npz"))
    assert len(parts) == 2
    unpack(parts, tmp_path / "out")
    for name in ("train", "test"):
        with (
            np.load(tmp_path / "src" / f"{name}.npz") as a,
            np.load(tmp_path / "out" / f"{name}.npz") as b,
        ):
            np.testing.assert_array_equal(a["x"], b["x"])
            np.testing.assert_array_equal(a["y"], b["y"])


def test_unpack_refuses_a_missing_part_or_other_pixels(tmp_path):
    _write_source(tmp_path / "src", np.random.default_rng(1))
    pack(tmp_path / "src", tmp_path / "parts", parts=2)
    parts = sorted((tmp_path / "parts").glob("part-*.npz"))
    with pytest.raises(SystemExit, match="missing"):
        unpack(parts[:1], tmp_path / "out")
    assert not (tmp_path / "out" / "train.npz").exists()
    # Another image set under the same recorded hashes: the check must catch it.
    with np.load(parts[1]) as d:
        arrays = dict(d)
    arrays["test_sha_x"] = np.array("0" * 64)
    np.savez(parts[1], **arrays)
    with pytest.raises(SystemExit, match="does not match"):
        unpack(parts, tmp_path / "out2")
    assert not (tmp_path / "out2" / "test.npz").exists()


def test_forward_flops_of_the_seed_student_by_hand():
    from kd.models import build_model

    expected = (
        2 * 32 * 32 * 3 * 3 * 3 * 32  # conv1, 32x32 output
        + 2 * 16 * 16 * 3 * 3 * 32 * 64  # conv2 after a 2x2 pool
        + 2 * 8 * 8 * 64 * 128  # dense 128 on the flattened 8x8x64
        + 2 * 128 * 10  # logits
    )
    assert forward_flops(build_model("seed", "student")) == expected


def test_plan_fills_the_time_left_and_never_overruns():
    from bench.plan_epochs import fill_epochs, run_seconds

    def speed(first, steady):
        return {s: {"first_epoch_s": first, "steady_epoch_s": steady} for s in STAGES}

    speeds = {"seed": speed(2.0, 1.0), "resnet": speed(4.0, 2.0)}
    # seed: 2 runs x 3 x (2 + 9 x 1) = 66 s; resnet: 2 runs x 3 x (4 + (E-1) x 2) s.
    epochs = fill_epochs(speeds, {"seed": 10}, "resnet", 150.0, seeds=2, overhead_s=0.0)
    assert epochs == 6  # exactly 150 s; 7 epochs would take 162 s
    total = 2 * (run_seconds(speeds["seed"], 10, 0.0) + run_seconds(speeds["resnet"], 6, 0.0))
    assert total == 150.0
    assert fill_epochs(speeds, {"seed": 10}, "resnet", 89.0, seeds=2, overhead_s=0.0) == 0
    # The overhead per run counts for every run.
    assert fill_epochs(speeds, {"seed": 10}, "resnet", 150.0, seeds=2, overhead_s=5.0) == 4
    # One run of the filled preset: 150 - 66 = 84 s = 3 x (4 + (E-1) x 2) -> E = 13.
    epochs = fill_epochs(
        speeds, {"seed": 10}, "resnet", 150.0, seeds=2, overhead_s=0.0, fill_seeds=1
    )
    assert epochs == 13
    # Runs known to overlap (wall = 0.5 x the sum of lone runs) get twice the time.
    assert (
        fill_epochs(speeds, {"seed": 10}, "resnet", 75.0, seeds=2, overhead_s=0.0, sharing=0.5) == 6
    )


def _step_time(tmp_path, backend, *extra):
    import os
    import subprocess
    import sys
    from pathlib import Path

    env = {**os.environ, "KERAS_BACKEND": backend, "JAX_PLATFORMS": "cpu"}
    args = ["--stages", "scratch", "--batch-size", "8", "--steps", "4", "--scan", "2"]
    return subprocess.run(
        [sys.executable, "-m", "bench.step_time", *args, *extra, "--out", str(tmp_path / "s.json")],
        cwd=Path(__file__).resolve().parents[1],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


@pytest.mark.slow
def test_step_time_splits_a_training_step_on_jax(tmp_path):
    """The scan is checked against single steps inside the bench (it exits non-zero on a
    mismatch); the split adds up."""
    import json

    pytest.importorskip("jax")
    r = _step_time(tmp_path, "jax", "--repeats", "1", "--unroll")
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((tmp_path / "s.json").read_text())
    assert result["scan"] == {"steps_per_call": 2, "unrolled": True}
    stage = result["stages"]["scratch"]
    assert min(stage["fit_ms_per_step"], stage["jit_ms_per_step"], stage["scan_ms_per_step"]) > 0
    assert stage["input_and_keras_loop_ms"] == pytest.approx(
        stage["fit_ms_per_step"] - stage["jit_ms_per_step"]
    )


def test_step_time_refuses_another_backend_before_building_anything(tmp_path):
    r = _step_time(tmp_path, "tensorflow")
    assert r.returncode == 2
    assert "KERAS_BACKEND=jax" in r.stderr
    assert not (tmp_path / "s.json").exists()
