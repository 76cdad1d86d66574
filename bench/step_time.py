"""Where a training step's time goes, on JAX: Keras's loop, the dispatch, the device.

    KERAS_BACKEND=jax python -m bench.step_time [--preset seed] [--batch-size 256] \
        [--steps 150] [--scan 8] [--mixed-precision] [--stages teacher scratch distill host] \
        [--trace DIR [--trace-steps 20]] --out FILE.json

For each stage it builds the training model exactly as ``kd.train`` does (the ``CropFlip``
front end, the optimizer and schedule, the distiller with its frozen teacher) and times one
step three ways, each in ms per step (median of ``--repeats`` timings):

- ``fit``: ``keras.Model.fit`` over a :class:`kd.train.BatchSequence` of ``--steps`` batches
  (picking each batch, which on a GPU is gathered on the device from the resident data,
  and drawing its augmentation; the transfers; Keras's per-step loop; no validation, no
  checkpoint), its second epoch;
- ``jit``: the compiled ``train_step`` called ``--steps`` times in a Python loop on one batch
  already on the device (the dispatch of each step, no input pipeline, no Keras loop);
- ``scan``: ``--scan`` steps per compiled call (``jax.lax.scan`` over a stack of that batch),
  which leaves one dispatch per ``--scan`` steps: close to the device's own time per step.
  ``--unroll`` unrolls the loop in the compiled program (longer compilation; XLA's CPU
  backend runs the rolled loop of a train step about 14x slower than single steps, measured
  on the development machine, so there only the unrolled figure means anything).

Stage ``host`` is a stand-in whose model reads four pixels into one small dense layer: the
device has next to nothing to do, so its ``fit`` time per step is the host's own (the batch,
its transfer, Keras's loop, the dispatch), to set against the real stages' steps. For it the
bench also times whole epochs through ``kd.train.fit`` (validation on ``--val-images``
images, the checkpoint, the history: what a stage does each epoch) and reports
``epoch_minus_steps_s``, the epoch's time beyond its training steps at the ``fit`` rate: the
per-epoch and validation costs of the library's loop, set against the part of the GPU
stages' epochs that shrinks with neither batch nor model (docs/RESULTS.md, section 2).

Each stage also times its per-epoch checkpoint (``checkpoint``: ``kd.train.EpochCheckpoint``'s
save of the model's and the optimizer's state, as ``fit`` writes one after every epoch; median
of ``--repeats`` saves, with the file's size), a fixed cost of every epoch.

``fit - jit`` is the input pipeline and Keras's loop; ``jit - scan`` the per-step dispatch.
Before timing, the scan's result is checked against ``--scan`` single steps from the same
state (same loss), so both time the same work. The device and host time of a real epoch are
what ``bench.gpu_speed`` measures; this splits its per-step part.

``--trace DIR`` then records, per stage, JAX profiler traces of ``--trace-steps`` steps of the
jitted loop (``DIR/<stage>-jit``) and of a ``fit`` epoch of that many batches
(``DIR/<stage>-fit``), each with a ``meta.json`` (steps, wall seconds); ``bench.trace_summary``
turns them into the device's busy time, kernels and copies per step.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

STAGES = ("teacher", "scratch", "distill", "host")


def build_stage(stage: str, preset: str, batch_size: int, steps: int, mixed: bool) -> Any:
    """The compiled training model of ``stage``, from the builders ``kd.train`` trains with."""
    from kd.config import DistillConfig, StudentConfig, TeacherConfig
    from kd.distill import distill_trainer
    from kd.models import build_model
    from kd.train import supervised_trainer

    common = {"preset": preset, "batch_size": batch_size, "mixed_precision": mixed, "seed": 0}
    if stage == "host":
        return host_stand_in(StudentConfig(**common), steps)
    if stage == "distill":
        teacher = build_model(preset, "teacher", seed=1, mixed_precision=mixed)
        return distill_trainer(teacher, DistillConfig(**common), steps)[1]
    if stage == "teacher":
        return supervised_trainer(TeacherConfig(**common), "teacher", steps)[1]
    return supervised_trainer(StudentConfig(**common), "student", steps)[1]


def host_stand_in(cfg: Any, steps: int) -> Any:
    """A compiled model with the training models' inputs and next to no device work: the
    mean of four pixels of each image into one dense layer (the ``host`` stage)."""
    import keras

    from kd.distill import hard_loss
    from kd.train import AUGMENT_KEY, IMAGE_KEY, make_optimizer

    image = keras.Input((32, 32, 3), dtype="uint8", name=IMAGE_KEY)
    params = keras.Input((3,), dtype="int32", name=AUGMENT_KEY)
    corner = keras.layers.Lambda(
        lambda t: keras.ops.mean(keras.ops.cast(t[:, :2, :2, :], "float32"), axis=(1, 2)),
        output_shape=(3,),
        name="corner_mean",
    )(image)
    logits = keras.layers.Dense(10, name="logits")(corner)
    model = keras.Model({IMAGE_KEY: image, AUGMENT_KEY: params}, logits, name="host_stand_in")
    model.compile(optimizer=make_optimizer(cfg, steps), loss=hard_loss(0.0), metrics=["accuracy"])
    return model


def time_host_epochs(
    cfg: Any, steps: int, train: tuple[Any, Any], val: tuple[Any, Any], fit_ms: float
) -> dict[str, Any]:
    """Three epochs of the host stand-in through ``kd.train.fit``; the steady epoch's time,
    and what it takes beyond ``steps`` training steps at ``fit_ms`` each."""
    import tempfile

    from kd.train import fit

    model = host_stand_in(cfg, steps)
    with tempfile.TemporaryDirectory(prefix="kd-steps-") as tmp:
        history = fit(model, train, val, cfg, tmp, name="host", log=lambda line: None)
    epoch = statistics.median(history["epoch_time_s"][1:])
    return {
        "train_images": len(train[0]),
        "validation_images": len(val[0]),
        "fit_epoch_s": epoch,
        "epoch_minus_steps_s": epoch - steps * fit_ms / 1000,
    }


def time_checkpoint(model: Any, repeats: int) -> dict[str, Any]:
    """ms per ``EpochCheckpoint.save`` of ``model`` (weights and optimizer state, temporary
    file then rename), median of ``repeats``, and the file's size in bytes."""
    import tempfile

    from kd.train import EpochCheckpoint

    with tempfile.TemporaryDirectory(prefix="kd-ckpt-") as tmp:
        saver = EpochCheckpoint(Path(tmp))
        saver.set_model(model)
        ms = _median_ms(lambda: saver.save(0), 1, repeats)
        size = saver.latest()[1].stat().st_size  # type: ignore[union-attr]
    return {"save_ms": ms, "bytes": size}


def _median_ms(fn: Any, steps: int, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1000 / steps)
    return statistics.median(times)


def _write_meta(folder: Path, steps: int, wall_s: float, untraced_ms: float) -> None:
    meta = {"steps": steps, "wall_s": wall_s, "untraced_ms_per_step": untraced_ms}
    (folder / "meta.json").write_text(json.dumps(meta))


def trace_fit(model: Any, seq: Any, folder: Path, untraced_ms: float) -> None:
    """A JAX profiler trace of ``fit``'s second epoch over ``seq`` (the first may compile);
    the wall time runs from the epoch's start to its end, once its logs are on the host."""
    import jax
    import keras

    class TraceEpoch(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            if epoch == 1:
                jax.profiler.start_trace(str(folder))
                self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            if epoch == 1:
                wall = time.perf_counter() - self.t0
                jax.profiler.stop_trace()
                _write_meta(folder, len(seq), wall, untraced_ms)

    folder.mkdir(parents=True, exist_ok=True)
    model.fit(
        seq,
        epochs=2,
        steps_per_epoch=len(seq),
        verbose=0,
        shuffle=False,
        callbacks=[TraceEpoch()],
    )


def trace_loop(run: Any, steps: int, folder: Path, untraced_ms: float) -> None:
    """A JAX profiler trace of ``run()`` (``steps`` training steps, synchronised at the end)."""
    import jax

    folder.mkdir(parents=True, exist_ok=True)
    jax.profiler.start_trace(str(folder))
    t0 = time.perf_counter()
    run()
    wall = time.perf_counter() - t0
    jax.profiler.stop_trace()
    _write_meta(folder, steps, wall, untraced_ms)


def time_stage(
    model: Any,
    seq: Any,
    steps: int,
    scan: int,
    repeats: int,
    unroll: bool = False,
    trace: tuple[Path, str, Any] | None = None,
) -> dict[str, Any]:
    """ms per step through ``fit``, a jitted loop and a scan (see the module docstring).

    ``trace``: ``(folder, stage, short sequence)``: also trace a ``fit`` epoch over the short
    sequence and as many steps of the jitted loop (:func:`trace_fit`, :func:`trace_loop`).
    """
    import jax
    import keras
    import numpy as np

    class EpochTimes(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.times: list[float] = []

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.t0 = time.perf_counter()

        def on_epoch_end(self, epoch: int, logs: Any = None) -> None:
            self.times.append(time.perf_counter() - self.t0)

    timer = EpochTimes()
    # steps_per_epoch: the sequence is endless, as kd.train.fit's (one input iterator)
    model.fit(
        seq,
        epochs=1 + repeats,
        steps_per_epoch=steps,
        verbose=0,
        shuffle=False,
        callbacks=[timer],
    )
    fit_ms = statistics.median(t * 1000 / steps for t in timer.times[1:])
    checkpoint = time_checkpoint(model, repeats)  # before the loops below donate the variables
    if trace is not None:
        folder, stage, short = trace
        trace_fit(model, short, folder / f"{stage}-fit", fit_ms)

    state = model._get_jax_state(
        trainable_variables=True,
        non_trainable_variables=True,
        optimizer_variables=True,
        metrics_variables=True,
    )
    batch = jax.device_put(seq.batch(0, 0))

    def body(carry: Any, data: Any) -> Any:
        logs, carry = model.train_step(carry, data)
        return carry, logs["loss"]

    def one_step(s: Any, d: Any) -> Any:
        return body(s, d)

    def scanned_steps(s: Any, ds: Any) -> Any:
        return jax.lax.scan(body, s, ds, unroll=unroll)

    one = jax.jit(one_step, donate_argnums=0)
    many = jax.jit(scanned_steps, donate_argnums=0)
    stacked = jax.tree_util.tree_map(lambda a: jax.numpy.stack([a] * scan), batch)

    # The scan does the work of `scan` single steps: same losses from the same state.
    def copy(s: Any) -> Any:
        return jax.tree_util.tree_map(jax.numpy.copy, s)

    s1, losses = copy(state), []
    for _ in range(scan):
        s1, loss = one(s1, batch)
        losses.append(float(loss))
    _, scanned = many(copy(state), stacked)
    np.testing.assert_allclose(np.asarray(scanned, np.float64), losses, rtol=1e-3, atol=1e-5)

    holder = {"state": s1}

    def run_jit(n: int = steps) -> None:
        s = holder["state"]
        for _ in range(n):
            s, _ = one(s, batch)
        jax.block_until_ready(s)
        holder["state"] = s

    def run_scan() -> None:
        s = holder["state"]
        for _ in range(steps // scan):
            s, _ = many(s, stacked)
        jax.block_until_ready(s)
        holder["state"] = s

    run_jit()  # warm (first call of the loop after the check)
    jit_ms = _median_ms(run_jit, steps, repeats)
    if trace is not None:
        folder, stage, short = trace
        trace_loop(lambda: run_jit(len(short)), len(short), folder / f"{stage}-jit", jit_ms)
    run_scan()
    scan_ms = _median_ms(run_scan, steps // scan * scan, repeats)
    return {
        "fit_ms_per_step": fit_ms,
        "jit_ms_per_step": jit_ms,
        "scan_ms_per_step": scan_ms,
        "input_and_keras_loop_ms": fit_ms - jit_ms,
        "dispatch_ms": jit_ms - scan_ms,
        "scan_losses_match_single_steps": True,
        "checkpoint": checkpoint,
    }


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--preset", default="seed")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--steps", type=int, default=150, help="steps per timing")
    ap.add_argument("--scan", type=int, default=8, help="steps per compiled call in `scan`")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--unroll", action="store_true", help="unroll the scan's loop")
    ap.add_argument("--mixed-precision", action="store_true")
    ap.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    ap.add_argument(
        "--trace", type=Path, help="also write JAX profiler traces here (bench.trace_summary)"
    )
    ap.add_argument("--trace-steps", type=int, default=20, help="steps per trace")
    ap.add_argument(
        "--val-images", type=int, default=10000, help="validation images of the host epochs"
    )
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    import keras
    import numpy as np

    if keras.backend.backend() != "jax":
        ap.error("this benchmark times JAX's compiled steps: run it with KERAS_BACKEND=jax")
    if args.steps < args.scan or args.scan < 1:
        ap.error("--scan must be between 1 and --steps")
    if not 1 <= args.trace_steps <= args.steps:
        ap.error("--trace-steps must be between 1 and --steps")
    if args.val_images < 1:
        ap.error("--val-images must be >= 1")
    from kd.config import StudentConfig
    from kd.evaluate import machine_info
    from kd.train import BatchSequence

    n = args.steps * args.batch_size
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)  # speed does not depend on pixels
    y = rng.integers(0, 10, n)
    result: dict[str, Any] = {
        "command": " ".join(["python -m bench.step_time", *sys.argv[1:]]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "backend": f"keras-{keras.__version__}/{keras.backend.backend()}",
        "batch_size": args.batch_size,
        "precision": "bfloat16" if args.mixed_precision else "float32",
        "scan": {"steps_per_call": args.scan, "unrolled": args.unroll},
        "stages": {},
    }
    for stage in args.stages:
        model = build_stage(stage, args.preset, args.batch_size, args.steps, args.mixed_precision)
        seq = BatchSequence(x, y, args.batch_size, seed=0, shuffle=True, augment=True, endless=True)
        trace = None
        if args.trace is not None:
            k = args.trace_steps * args.batch_size
            short = BatchSequence(
                x[:k], y[:k], args.batch_size, seed=0, shuffle=True, augment=True, endless=True
            )
            trace = (args.trace, stage, short)
        result["stages"][stage] = time_stage(
            model, seq, args.steps, args.scan, args.repeats, args.unroll, trace
        )
        if stage == "host":
            # A fresh stand-in: the loops above donated this one's variables.
            cfg = StudentConfig(
                batch_size=args.batch_size, epochs=3, divergence_check_epoch=0, seed=0
            )
            xv = rng.integers(0, 256, (args.val_images, 32, 32, 3), dtype=np.uint8)
            yv = rng.integers(0, 10, args.val_images)
            result["stages"][stage]["epoch"] = time_host_epochs(
                cfg, args.steps, (x, y), (xv, yv), result["stages"][stage]["fit_ms_per_step"]
            )
        print(json.dumps({stage: result["stages"][stage]}), flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
