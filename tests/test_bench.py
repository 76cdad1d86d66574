"""Benchmark helpers: the lossless data transfer to the GPU machine and the FLOP count."""

from __future__ import annotations

import numpy as np
import pytest

from bench.device_data import pack, unpack
from bench.gpu_speed import forward_flops


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
