"""Size the accuracy runs of a GPU session to the time left, from the speeds it measured.

    python -m bench.plan_epochs --speed seed=/root/res/gpu-speed.json \
        --speed resnet=/root/res/gpu-speed-resnet.json --precision bfloat16 \
        --seconds 400 --seeds 3 --fixed seed=60 --fill resnet [--fill-seeds 1]

Prints ``EPOCHS_seed EPOCHS_resnet`` (in the order of ``--speed``): the ``--fixed`` presets get
their epochs, the ``--fill`` preset the most epochs that fit.

The model: every run of the plan goes at once on the one GPU, and the GPU serves them one
kernel at a time, so the wall time is at most the sum of what each run takes alone. A run alone
takes ``sum over its three stages of (first epoch + (E - 1) x steady epoch)`` (the first epoch
holds the compilation) plus ``overhead_s`` (data split and evaluation). Lone runs that leave
the GPU idle part of the time (host-bound) make the sum an over-estimate, so the plan errs
short, never long: a plan that overran the device call would lose every result.

``--sharing F`` multiplies that sum by F < 1 where runs are known to overlap: on the H200,
three seed-preset runs at once took 207 s where the sum predicted 428 s (0.48; session 3,
``bench/results/h200/accuracy-seed-60ep-bf16.json``). The default, 1, is the safe bound.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path
from typing import Any

STAGES = ("teacher", "scratch", "distill")


def run_seconds(speed: dict[str, Any], epochs: int, overhead_s: float) -> float:
    """Seconds one run (three stages of ``epochs`` each) takes alone, by ``speed`` (one
    precision's entry of a ``bench.gpu_speed`` JSON)."""
    if epochs <= 0:
        return 0.0
    return overhead_s + sum(
        speed[s]["first_epoch_s"] + (epochs - 1) * speed[s]["steady_epoch_s"] for s in STAGES
    )


def fill_epochs(
    speeds: dict[str, dict[str, Any]],
    fixed: dict[str, int],
    fill: str,
    seconds: float,
    seeds: int,
    overhead_s: float = 20.0,
    max_epochs: int = 200,
    fill_seeds: int | None = None,
    sharing: float = 1.0,
) -> int:
    """The most epochs for preset ``fill`` such that ``seeds`` runs of each ``fixed`` preset
    and ``fill_seeds`` (default ``seeds``) runs of ``fill`` fit in ``seconds`` (0 when even
    one epoch does not fit)."""
    n_fill = seeds if fill_seeds is None else fill_seeds
    used = seeds * sum(run_seconds(speeds[p], e, overhead_s) for p, e in fixed.items())
    seconds = seconds / sharing
    left = seconds - used - n_fill * run_seconds(speeds[fill], 1, overhead_s)
    if left < 0:
        return 0
    per_epoch = n_fill * sum(speeds[fill][s]["steady_epoch_s"] for s in STAGES)
    return min(max_epochs, 1 + math.floor(left / per_epoch))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--speed", action="append", required=True, help="PRESET=gpu_speed.json")
    ap.add_argument("--precision", default="bfloat16")
    ap.add_argument("--seconds", type=float, required=True, help="time the runs may take")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--fixed", action="append", default=[], help="PRESET=EPOCHS")
    ap.add_argument("--fill", required=True, help="the preset that gets the time left")
    ap.add_argument("--fill-seeds", type=int, default=None, help="its runs (default --seeds)")
    ap.add_argument("--overhead", type=float, default=20.0, help="split + evaluate, s per run")
    ap.add_argument("--sharing", type=float, default=1.0, help="wall / sum of lone runs (<= 1)")
    args = ap.parse_args()
    speeds = {}
    for item in args.speed:
        preset, path = item.split("=", 1)
        speeds[preset] = json.loads(Path(path).read_text())["precisions"][args.precision]
    fixed = {p: int(e) for p, e in (item.split("=", 1) for item in args.fixed)}
    epochs = dict(fixed)
    epochs[args.fill] = fill_epochs(
        speeds,
        fixed,
        args.fill,
        args.seconds,
        args.seeds,
        args.overhead,
        fill_seeds=args.fill_seeds,
        sharing=args.sharing,
    )
    print(" ".join(str(epochs.get(p, 0)) for p in speeds))


if __name__ == "__main__":
    main()
