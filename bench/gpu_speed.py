"""Training speed per stage on an accelerator (or any backend): epoch times, images/s, TFLOP/s.

    KERAS_BACKEND=jax python -m bench.gpu_speed --data DIR [--train-images 40000] \
        [--val-images 10000] [--epochs 3] [--batch-size 256] [--preset seed] \
        [--precisions float32 bfloat16] --out FILE.json

Runs the library's own training functions (``kd.train``: the code the components run, with
its host-side augmentation, checkpoints and history) for a few epochs per stage and precision.
The first epoch includes tracing and compilation; the steady epoch time is the median of the
others. Each epoch time covers the training pass and one validation pass over
``--val-images`` images.

Reported per stage: first and steady epoch time (s), training images/s, the model FLOPs per
training image (forward + backward counted as 3x the forward pass of the trained model; the
distiller adds one teacher forward pass), and the achieved TFLOP/s; per precision: the
distill/scratch epoch-time ratio and a projection of the three trainings' wall time at the
given epoch counts (first epoch + (epochs - 1) x steady).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def forward_flops(model: Any) -> int:
    """Multiply-adds x 2 of one image's forward pass through the conv and dense layers.

    Conv2D: 2 * H_out * W_out * k_h * k_w * C_in * C_out; Dense: 2 * in * out. BatchNorm,
    pooling, activations and the input standardisation are left out (a few percent at most).
    """
    import keras

    total = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, keras.layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            _, h, w, _ = layer.output.shape
            total += 2 * h * w * kh * kw * cin * cout // layer.groups
        elif isinstance(layer, keras.layers.Dense):
            fan_in, fan_out = layer.kernel.shape
            total += 2 * fan_in * fan_out
    return int(total)


def run_precision(
    train: tuple[Any, Any], val: tuple[Any, Any], args: argparse.Namespace, precision: str
) -> dict[str, Any]:
    """The three stages in one precision; returns per-stage timings."""
    from kd import distill as kdd
    from kd import train as kt
    from kd.config import DistillConfig, StudentConfig, TeacherConfig

    common = {
        "preset": args.preset,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "mixed_precision": precision == "bfloat16",
        "divergence_check_epoch": 0,
        "seed": 0,
    }
    n = len(train[0])
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="kd-speed-") as tmp:
        stages = (
            ("teacher", lambda: kt.train_teacher(train, val, TeacherConfig(**common), f"{tmp}/t")),
            (
                "scratch",
                lambda: kt.train_student_scratch(train, val, StudentConfig(**common), f"{tmp}/s"),
            ),
            (
                "distill",
                lambda: kdd.distill_student(
                    teacher.model, train, val, DistillConfig(**common), f"{tmp}/d"
                ),
            ),
        )
        flops: dict[str, int] = {}
        teacher: Any = None
        for name, fn in stages:
            t0 = time.perf_counter()
            result = fn()
            wall = time.perf_counter() - t0
            if name == "teacher":
                teacher = result
            fwd = forward_flops(result.model)
            flops[name] = fwd
            per_image = 3 * fwd + (flops["teacher"] if name == "distill" else 0)
            times = result.history["epoch_time_s"]
            steady = statistics.median(times[1:]) if len(times) > 1 else times[0]
            out[name] = {
                "epoch_times_s": times,
                "first_epoch_s": times[0],
                "steady_epoch_s": steady,
                "images_per_s": n / steady,
                "train_flops_per_image": per_image,
                "achieved_tflops": per_image * n / steady / 1e12,
                "stage_wall_s": wall,
                "final_val_accuracy": result.history["val_accuracy"][-1],
                "final_loss": result.history["loss"][-1],
            }
            print(json.dumps({precision: {name: out[name]}}), flush=True)
    out["distill_over_scratch"] = (
        out["distill"]["steady_epoch_s"] / out["scratch"]["steady_epoch_s"]
    )
    out["projected_three_trainings_s"] = {
        f"{e}_epochs": sum(
            out[s]["first_epoch_s"] + (e - 1) * out[s]["steady_epoch_s"]
            for s in ("teacher", "scratch", "distill")
        )
        for e in (30, 60)
    }
    return out


def use_host_batches() -> None:
    """Make ``kd.train`` build its batch sequences with ``on_device=False``."""
    from kd import train as kt

    device_batches = kt.BatchSequence

    class HostBatches(device_batches):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **{**kwargs, "on_device": False})

    kt.BatchSequence = HostBatches


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", required=True, help="CIFAR-10 source (a path, sample, keras)")
    ap.add_argument("--train-images", type=int, default=40000)
    ap.add_argument("--val-images", type=int, default=10000)
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--preset", default="seed")
    ap.add_argument(
        "--precisions", nargs="+", default=["float32", "bfloat16"], choices=["float32", "bfloat16"]
    )
    ap.add_argument(
        "--host-batches",
        action="store_true",
        help="gather each batch on the host and send its pixels (the input path before "
        "batches were gathered on the device), to compare the two on one machine",
    )
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.epochs < 2:
        ap.error("--epochs must be >= 2 (the first epoch includes compilation)")
    if args.host_batches:
        use_host_batches()
    import keras
    import numpy as np

    from kd import train as kd_train
    from kd.data import load_cifar10
    from kd.evaluate import machine_info

    data = load_cifar10(args.data)
    x, y = data.x_train, data.y_train
    if len(x) < args.train_images + args.val_images:
        # Fewer images than asked (e.g. the shipped sample): repeat them; speed does not
        # depend on the pixels.
        reps = -(-(args.train_images + args.val_images) // len(x))
        x, y = np.concatenate([x] * reps), np.concatenate([y] * reps)
    train = (x[: args.train_images], y[: args.train_images])
    val = (
        x[args.train_images : args.train_images + args.val_images],
        y[args.train_images : args.train_images + args.val_images],
    )
    result: dict[str, Any] = {
        "command": " ".join(["python -m bench.gpu_speed", *sys.argv[1:]]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "backend": f"keras-{keras.__version__}/{keras.backend.backend()}",
        "data": {"source": args.data, "train_images": len(train[0]), "val_images": len(val[0])},
        "batches_gathered_on": "device"
        if kd_train._jax_accelerator() and not args.host_batches
        else "host",
        "precisions": {},
    }
    for precision in args.precisions:
        result["precisions"][precision] = run_precision(train, val, args, precision)
        Path(args.out).write_text(json.dumps(result, indent=1))
    p = result["precisions"]
    if "float32" in p and "bfloat16" in p:
        result["bfloat16_speedup"] = {
            s: p["float32"][s]["steady_epoch_s"] / p["bfloat16"][s]["steady_epoch_s"]
            for s in ("teacher", "scratch", "distill")
        }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=1))
    for precision, r in p.items():
        print(
            precision,
            {s: round(r[s]["steady_epoch_s"], 3) for s in ("teacher", "scratch", "distill")},
            "projected 60 ep:",
            round(r["projected_three_trainings_s"]["60_epochs"]),
        )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
