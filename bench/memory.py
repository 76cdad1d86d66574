"""Peak memory: the data split on the full dataset, and streamed evaluation of >= 100,000 images.

    python -m bench.memory --data PATH_TO_CIFAR10 [--eval-images 100000] \
        [--out bench/results/memory.json]

Each measurement runs in a fresh process and reports its own peak resident set size
(``VmHWM`` of ``/proc/self/status``) in MB.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SPLIT = """
import sys
from kd.config import SplitConfig
from kd.stages import split_data
d = sys.argv[2]
split_data(SplitConfig(source=sys.argv[1]), d + '/train', d + '/val', d + '/test')
print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])
"""

EVAL = """
import sys, numpy as np
from kd.models import build_model
from kd.evaluate import predict_logits
n = int(sys.argv[1])
x = np.lib.format.open_memmap(sys.argv[2], mode='w+', dtype=np.uint8, shape=(n, 32, 32, 3))
rng = np.random.default_rng(0)
for i in range(0, n, 10000):
    x[i:i + 10000] = rng.integers(0, 256, (min(10000, n - i), 32, 32, 3), dtype=np.uint8)
x.flush()
x = np.load(sys.argv[2], mmap_mode='r')
logits = predict_logits(build_model('seed', 'student'), x, batch_size=256)
assert logits.shape == (n, 10)
print(open('/proc/self/status').read().split('VmHWM:')[1].split()[0])
"""


def peak_mb(code: str, *args: str) -> tuple[float, float]:
    """Run ``code`` in a fresh Python; its peak RSS (MB) and wall time (s)."""
    t0 = time.perf_counter()
    r = subprocess.run(
        [sys.executable, "-c", code, *args],
        capture_output=True,
        text=True,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    if r.returncode != 0:
        raise SystemExit(r.stderr[-2000:])
    peak_kb = int(r.stdout.strip().splitlines()[-1])
    return peak_kb / 1024, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", required=True)
    ap.add_argument("--eval-images", type=int, default=100_000)
    ap.add_argument("--out", default="bench/results/memory.json")
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        split_mb, split_s = peak_mb(SPLIT, a.data, tmp)
    with tempfile.TemporaryDirectory() as tmp:
        eval_mb, eval_s = peak_mb(EVAL, str(a.eval_images), str(Path(tmp) / "x.npy"))
    out = {
        "command": " ".join(["python -m bench.memory", *sys.argv[1:]]),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count()},
        "data_split_full": {
            "peak_rss_mb": round(split_mb, 1),
            "wall_s": round(split_s, 1),
            "target_mb": 1536,
            "met": split_mb <= 1536,
        },
        "evaluate_streamed": {
            "images": a.eval_images,
            "peak_rss_mb": round(eval_mb, 1),
            "wall_s": round(eval_s, 1),
            "images_as_float32_mb": round(a.eval_images * 3072 * 4 / 2**20),
        },
    }
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    Path(a.out).write_text(json.dumps(out, indent=1))
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
