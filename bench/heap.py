"""The heap padding of :func:`kd.train.pad_heap`, measured: the demo's scratch student's epochs
with it and without it, each in a fresh process (the setting is process-wide).

    python -m bench.heap --epochs 6 --repeats 2 --out bench/results/heap-pad-cpu.json

Each child trains the scratch student of ``make demo`` (the ``demo`` profile's parameters
through ``parameters.resolve``, the 2,000 images of its training split) through the
pipeline's stage function for ``--epochs`` epochs; "off" replaces ``kd.train.pad_heap`` with a
no-op before training, "on" is the code as shipped. The runs alternate off, on, off, on so
that a slow spell of the machine hits both. Reported: every epoch's time, and the median of
the epochs after the first (the first includes tracing).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path


def child(mode: str, epochs: int) -> None:
    """One scratch training in this process; prints its history's epoch times as JSON."""
    import parameters
    from kd import stages
    from kd import train as kd_train
    from local_runner.run import PROFILES

    if mode == "off":
        kd_train.pad_heap = lambda *a, **k: False
    params = parameters.resolve({"student_epochs": epochs}, base=PROFILES["demo"])
    cfg = parameters.stage_configs(params)
    with tempfile.TemporaryDirectory(prefix="kd-heap-bench-") as tmp:
        p = {n: f"{tmp}/{n}" for n in ("train", "validation", "test")}
        meta = stages.split_data(cfg["split"], p["train"], p["validation"], p["test"])
        stages.train_student_scratch(
            (p["train"], meta["train"]["sha256"]),
            (p["validation"], meta["validation"]["sha256"]),
            cfg["student"],
            f"{tmp}/s",
            log=lambda *a: None,
        )
        history = json.loads(Path(f"{tmp}/s/history.json").read_text())
    print("RESULT " + json.dumps({"mode": mode, "epoch_time_s": history["epoch_time_s"]}))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--out", help="summary JSON path")
    ap.add_argument("--child", choices=["on", "off"], help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child:
        child(a.child, a.epochs)
        return 0

    from kd.evaluate import machine_info

    runs = []
    for _ in range(a.repeats):
        for mode in ("off", "on"):
            out = subprocess.run(
                [sys.executable, "-m", "bench.heap", "--child", mode, "--epochs", str(a.epochs)],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            line = next(x for x in out.splitlines() if x.startswith("RESULT "))
            r = json.loads(line[len("RESULT ") :])
            r["median_after_first_s"] = statistics.median(r["epoch_time_s"][1:])
            runs.append(r)
            print(json.dumps(r))
    summary = {
        mode: statistics.median(r["median_after_first_s"] for r in runs if r["mode"] == mode)
        for mode in ("off", "on")
    }
    args = argv if argv is not None else sys.argv[1:]
    result = {
        "command": " ".join(["python -m bench.heap", *args]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        "what": "the demo's scratch student (seed preset, 2,000 images, batch 32): seconds per "
        "epoch without and with kd.train.pad_heap, each run in a fresh process",
        "median_epoch_s": summary,
        "speedup": summary["off"] / summary["on"],
        "runs": runs,
    }
    print(json.dumps({k: result[k] for k in ("median_epoch_s", "speedup")}))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
