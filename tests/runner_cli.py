"""The local runner's command line as the end-to-end tests run it: a tiny run and the CLI.

``TINY`` sizes a main run to a minute or two on 2 CPU cores (300 training images, one epoch
each); later options override it (``--teacher-epochs 30`` after it wins).
"""

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TINY = [
    "--teacher-epochs",
    "1",
    "--student-epochs",
    "1",
    "--train-per-class",
    "30",
    "--test-per-class",
    "10",
    "--param",
    "latency_runs=2",
    "--param",
    "export_check_images=16",
    "--param",
    "min_kd_gain=-100",
    "--param",
    "min_accuracy=0",
    # One-epoch students on 300 images may well collapse; the export must still be reached.
    "--param",
    "refuse_collapsed=false",
]


def env() -> dict[str, str]:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def cli(*args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """``python -m local_runner ARGS``, run to the end; output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", "local_runner", *args],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def start(root: Path, *args: str) -> subprocess.Popen:
    """``python -m local_runner run --pipeline-root ROOT ARGS`` in the background."""
    return subprocess.Popen(
        [sys.executable, "-m", "local_runner", "run", "--pipeline-root", str(root), *args],
        cwd=ROOT,
        env=env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
