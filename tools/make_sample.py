"""Build the small real CIFAR-10 sample shipped in ``kd/sample_data/`` (the offline default).

Takes a stratified, seeded subset of a full CIFAR-10 copy in the npz layout (a folder holding
``train.npz`` and ``test.npz`` with ``x`` uint8 (N,32,32,3) and ``y``), and writes
``cifar10_sample.npz`` with ``x_train, y_train, x_test, y_test``.

    python tools/make_sample.py --data PATH_TO_CIFAR10_NPZ_FOLDER \
        [--train-per-class 250] [--test-per-class 500] [--seed 0]
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path

import numpy as np


def pick(y: np.ndarray, per_class: int, rng: np.random.Generator) -> np.ndarray:
    idx = [np.sort(rng.choice(np.flatnonzero(y == c), per_class, replace=False)) for c in range(10)]
    return np.sort(np.concatenate(idx))


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--data", required=True, help="folder with train.npz and test.npz")
    ap.add_argument("--train-per-class", type=int, default=250)
    ap.add_argument("--test-per-class", type=int, default=500)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument(
        "--out", default=str(Path(__file__).parents[1] / "kd/sample_data/cifar10_sample.npz")
    )
    a = ap.parse_args()
    rng = np.random.default_rng(a.seed)
    tr, te = np.load(Path(a.data) / "train.npz"), np.load(Path(a.data) / "test.npz")
    itr, ite = pick(tr["y"], a.train_per_class, rng), pick(te["y"], a.test_per_class, rng)
    out = dict(
        x_train=tr["x"][itr],
        y_train=tr["y"][itr].astype(np.uint8),
        x_test=te["x"][ite],
        y_test=te["y"][ite].astype(np.uint8),
        train_index=itr.astype(np.int32),
        test_index=ite.astype(np.int32),
    )
    np.savez_compressed(a.out, **out)
    print(a.out, Path(a.out).stat().st_size, hashlib.sha256(Path(a.out).read_bytes()).hexdigest())


if __name__ == "__main__":
    main()
