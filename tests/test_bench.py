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
    pytest.importorskip("tensorflow")  # the trace's protobuf classes
    from bench.trace_summary import host_calls, read_space, summarize_dir

    traces = tmp_path / "traces"

    def trace_of(run):
        return next((traces / run).rglob("*.xplane.pb"))

    r = _step_time(
        tmp_path, "jax", "--repeats", "1", "--unroll", "--stages", "scratch", "host",
        "--trace", str(traces), "--trace-steps", "3", "--val-images", "16",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((tmp_path / "s.json").read_text())
    assert result["scan"] == {"steps_per_call": 2, "unrolled": True}
    assert set(result["stages"]) == {"scratch", "host"}
    for stage in result["stages"].values():
        assert (
            min(stage["fit_ms_per_step"], stage["jit_ms_per_step"], stage["scan_ms_per_step"]) > 0
        )
        assert stage["input_and_keras_loop_ms"] == pytest.approx(
            stage["fit_ms_per_step"] - stage["jit_ms_per_step"]
        )
    # The stand-in's whole epochs through kd.train.fit: 4 steps of 8 images, validation on 16.
    epoch = result["stages"]["host"]["epoch"]
    assert epoch["train_images"] == 32 and epoch["validation_images"] == 16
    assert epoch["fit_epoch_s"] > 0
    assert epoch["epoch_minus_steps_s"] == pytest.approx(
        epoch["fit_epoch_s"] - 4 * result["stages"]["host"]["fit_ms_per_step"] / 1000
    )
    assert "epoch" not in result["stages"]["scratch"]
    # The per-epoch checkpoint holds the weights and the SGD momentum: 2 x 4 bytes a parameter.
    assert all(stage["checkpoint"]["save_ms"] > 0 for stage in result["stages"].values())
    assert result["stages"]["scratch"]["checkpoint"]["bytes"] > 2 * 4 * 545_098
    assert result["stages"]["host"]["checkpoint"]["bytes"] < 100_000
    # The stand-in leaves the device next to nothing: its steps are far cheaper.
    assert (
        result["stages"]["host"]["jit_ms_per_step"] < result["stages"]["scratch"]["jit_ms_per_step"]
    )
    # One fit epoch and one jitted loop of 3 steps traced per stage; on the CPU there is no
    # device plane, and the host's calls of the compiled step are in the trace.
    runs = summarize_dir(traces)
    assert set(runs) == {"scratch-fit", "scratch-jit", "host-fit", "host-jit"}
    for name, run in runs.items():
        assert run["steps"] == 3 and run["device"] is None and run["wall_ms_per_step"] > 0
        assert run["untraced_ms_per_step"] > 0
        assert run["host_top"], name
        calls = host_calls(read_space(trace_of(name)))
        step = "PjitFunction(train_step)" if name.endswith("fit") else "PjitFunction(one_step)"
        assert calls[step][1] == 3, (name, sorted(calls)[:20])  # one per step, not nested twice
        assert not any("step_time.py" in n or "profiler.py" in n for n in calls)
    # fit's batches come from kd.train.BatchSequence; the jitted loop has none.
    assert any(n.endswith(" __getitem__") for n in host_calls(read_space(trace_of("host-fit"))))
    assert not any(n.endswith(" __getitem__") for n in host_calls(read_space(trace_of("host-jit"))))


def _gpu_space():
    """An XSpace shaped like a GPU trace: two stream lines, a line derived from them, and the
    host's Python frames."""
    xplane_pb2 = pytest.importorskip("tensorflow.tsl.profiler.protobuf.xplane_pb2")
    space = xplane_pb2.XSpace()
    gpu = space.planes.add(id=1, name="/device:GPU:0")
    names = {1: "loop_add_fusion", 2: "cutlass_gemm", 3: "MemcpyH2D", 4: "jit_train_step(7)"}
    for i, n in names.items():
        gpu.event_metadata[i].id = i
        gpu.event_metadata[i].name = n
    us = 1_000_000  # picoseconds

    def add(line, meta, start_us, dur_us):
        line.events.add(metadata_id=meta, offset_ps=start_us * us, duration_ps=dur_us * us)

    compute = gpu.lines.add(id=7, name="Stream #7(Compute)", timestamp_ns=1000)
    add(compute, 1, 0, 10)  # [0, 10) us
    add(compute, 2, 40, 20)  # [40, 60)
    add(compute, 1, 100, 8)  # [100, 108)
    copies = gpu.lines.add(id=8, name="Stream #8(MemcpyH2D)", timestamp_ns=1000)
    add(copies, 3, 5, 10)  # [5, 15): overlaps the first kernel
    add(copies, 3, 70, 4)  # [70, 74)
    derived = gpu.lines.add(id=9, name="XLA Modules", timestamp_ns=1000)
    add(derived, 4, 0, 110)  # a whole step: must not be counted again
    host = space.planes.add(id=2, name="/host:CPU")
    frames = {1: "$train.py:271 __getitem__", 2: "PjitFunction(train_step)", 3: "$step_time.py:9 x"}
    for i, n in frames.items():
        host.event_metadata[i].id = i
        host.event_metadata[i].name = n
    py = host.lines.add(id=1, name="python", timestamp_ns=1000)
    for k in range(2):
        add(py, 1, 200 * k, 30)
        add(py, 2, 200 * k + 40, 50)
        add(py, 2, 200 * k + 45, 40)  # JAX's inner event of the same call: counted once
    add(py, 3, 0, 400)
    helper = host.lines.add(id=2, name="python", timestamp_ns=1000)
    add(helper, 1, 10, 300)  # another thread: its own name
    return space


def test_trace_summary_counts_device_time_once_and_splits_kernels_from_copies():
    from bench.trace_summary import summarize

    r = summarize(_gpu_space(), steps=2, wall_s=400e-6)
    assert r["device"] == "/device:GPU:0"
    # Union of [0,15) [40,60) [70,74) [100,108) = 47 us over 2 steps; the derived line and the
    # overlap of copy and kernel are counted once.
    assert r["device_busy_ms_per_step"] == pytest.approx(0.0235)
    assert r["wall_ms_per_step"] == pytest.approx(0.2)
    assert r["device_busy_fraction"] == pytest.approx(47 / 400)
    assert r["kernels_per_step"] == 1.5 and r["copies_per_step"] == 1.0
    assert r["mean_kernel_us"] == pytest.approx(38 / 3)
    assert r["copy_ms_per_step"] == pytest.approx(0.007)
    assert r["top_kernels"][0] == {
        "name": "cutlass_gemm",
        "ms_per_step": pytest.approx(0.01),
        "launches_per_step": 0.5,
    }
    host = {h["name"]: (h["ms_per_step"], h["calls_per_step"]) for h in r["host_top"]}
    assert host == {
        "PjitFunction(train_step)": (pytest.approx(0.05), 1.0),
        "$train.py:271 __getitem__": (pytest.approx(0.03), 1.0),
        "$train.py:271 __getitem__ [thread 1]": (pytest.approx(0.15), 0.5),
    }  # the bench's own frame left out
    with pytest.raises(ValueError, match="steps >= 1"):
        summarize(_gpu_space(), steps=0, wall_s=1.0)


def test_step_time_refuses_another_backend_before_building_anything(tmp_path):
    r = _step_time(tmp_path, "tensorflow")
    assert r.returncode == 2
    assert "KERAS_BACKEND=jax" in r.stderr
    assert not (tmp_path / "s.json").exists()


def test_gpu_speed_host_batches_switches_the_library_to_host_gathered_batches(monkeypatch):
    pytest.importorskip("jax")
    from bench.gpu_speed import use_host_batches
    from kd import train as kt

    monkeypatch.setattr(kt, "BatchSequence", kt.BatchSequence)  # restored after the test
    # Device batches need JAX: pose as it (only the check reads the backend's name here).
    monkeypatch.setattr(kt.keras.backend, "backend", lambda: "jax")
    x, y = np.zeros((8, 32, 32, 3), np.uint8), np.arange(8) % 10
    assert kt.BatchSequence(x, y, 4, seed=0, shuffle=False, augment=False, on_device=True)._device
    use_host_batches()
    seq = kt.BatchSequence(x, y, 4, seed=0, shuffle=False, augment=False, on_device=True)
    assert seq._device is None
    assert isinstance(seq.batch(0, 0)[0]["image"], np.ndarray)


@pytest.mark.slow
def test_cpu_speed_times_each_stage_under_the_runners_task_names():
    """The direct run's stage times must line up with the task names the local runner records
    for the Docker run, or the per-stage container overhead would silently drop stages."""
    from bench.cpu_speed import PIPELINES, direct_run, per_stage
    from local_runner.run import STAGES

    profile, overrides = PIPELINES["tiny"]
    wall, stages = direct_run(profile, overrides)
    assert set(stages) == set(STAGES)
    assert all(t > 0 for t in stages.values()) and sum(stages.values()) <= wall
    docker = {task: t + 1.5 for task, t in stages.items()}
    rows = per_stage(stages, docker)
    assert set(rows) == set(STAGES)
    assert all(r["container_overhead_s"] == pytest.approx(1.5, abs=0.01) for r in rows.values())


@pytest.mark.slow
def test_demo_kd_runs_the_demos_settings_and_scores_the_test_set_it_is_given(tmp_path, monkeypatch):
    """bench.demo_kd: the demo profile's stages with the shipped teacher, scored on the test
    images passed (here 20 random ones), with the summary the RESULTS table is read from."""
    import json

    from bench import demo_kd
    from kd import stages

    configs = {}  # the config each student's stage is handed
    for stage in ("train_student_scratch", "distill_student"):
        real = getattr(stages, stage)

        def spy(*args, _real=real, _stage=stage):
            configs[_stage] = args[-2]  # (..., cfg, out_dir)
            return _real(*args)

        monkeypatch.setattr(stages, stage, spy)

    _write_source(tmp_path / "data", np.random.default_rng(2))
    out = tmp_path / "demo.json"
    demo_kd.main(
        ["--test-data", str(tmp_path / "data"), "--seeds", "0", "--out", str(out)]
        + ["--param", "student_epochs=1", "--param", "train_per_class=20"]
    )
    summary = json.loads(out.read_text())
    (run,) = summary["runs"]
    assert summary["test_images"] == 10 and summary["scored_on"] == "official test set"
    assert run["params"]["student_epochs"] == 1 and run["train_images"] == 160
    from local_runner.run import PROFILES  # the baseline trains at its own rate, recorded

    own = PROFILES["demo"]["scratch_learning_rate"]
    assert run["params"]["scratch_learning_rate"] == own
    assert {stage: cfg.learning_rate for stage, cfg in configs.items()} == {
        "train_student_scratch": own,
        "distill_student": run["params"]["student_learning_rate"],
    }
    assert own != run["params"]["student_learning_rate"]
    # The distilled student learns from the demo's cached views, the mixed ones included.
    demo = PROFILES["demo"]
    cached = (
        configs["distill_student"].teacher_views,
        configs["distill_student"].teacher_mixup_views,
    )
    assert cached == (demo["teacher_views"], demo["teacher_mixup_views"])
    assert run["params"]["teacher_mixup_views"] == demo["teacher_mixup_views"] > 0
    from kd.teacher import shipped_teacher_path

    shipped = json.loads(shipped_teacher_path().with_suffix(".json").read_text())
    assert run["teacher"]["architecture"] == shipped["architecture"]  # the shipped teacher
    acc = run["accuracy"]
    assert run["kd_gain_points"] == pytest.approx(
        100 * (acc["student_distilled"] - acc["student_scratch"])
    )
    # 10 images, 1 per class: every accuracy is a whole number of tenths.
    assert all(abs(10 * a - round(10 * a)) < 1e-9 for a in acc.values())
    assert run["gate_on_validation"].startswith("gate ")
