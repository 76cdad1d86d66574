"""Move the CIFAR-10 copy to the GPU machine in fewer, smaller parts: lossless WebP.

The device tool carries at most 64 MiB a call. The shared copy is two ``np.savez_compressed``
files (171 MB; zlib barely compresses pixels); WebP in lossless mode halves the pixel bytes,
so the data travels in two calls instead of five. Nothing is approximated: ``unpack`` decodes
every image, checks the SHA-256 of the decoded ``x`` and ``y`` arrays against the ones
``pack`` recorded from the original files, and only then writes ``train.npz``/``test.npz``.

    python -m bench.device_data pack --src DIR_WITH_train.npz_test.npz --out DIR [--parts 2]
    python -m bench.device_data unpack --parts PART_FILE... --out DIR

A part is one ``.npz`` holding, per split it carries, the WebP blobs, their offsets, the
index range of the images, the labels and the SHA-256 of the whole original arrays.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np


def _sha(a: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(a).tobytes()).hexdigest()


def _encode(images: np.ndarray) -> list[bytes]:
    from PIL import Image

    out = []
    for im in images:
        b = io.BytesIO()
        Image.fromarray(im).save(b, "WEBP", lossless=True, quality=100, method=4)
        out.append(b.getvalue())
    return out


def _decode(blobs: list[bytes]) -> np.ndarray:
    from PIL import Image

    return np.stack([np.asarray(Image.open(io.BytesIO(b)).convert("RGB")) for b in blobs])


def _chunks(n: int, k: int) -> list[tuple[int, int]]:
    edges = np.linspace(0, n, k + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def _parallel(fn, items: list, workers: int) -> list:
    with ProcessPoolExecutor(workers) as pool:
        return list(pool.map(fn, items))


def pack(src: Path, out: Path, parts: int) -> None:
    """Write ``out/part-K.npz``: all images of train then test, cut into ``parts`` pieces."""
    workers = os.cpu_count() or 1
    splits = {}
    for name in ("train", "test"):
        with np.load(src / f"{name}.npz") as d:
            splits[name] = (d["x"], d["y"])
    # One flat list of (split, index) in order, cut into parts of about equal image count.
    order = [(n, i) for n in ("train", "test") for i in range(len(splits[n][0]))]
    out.mkdir(parents=True, exist_ok=True)
    for k, (a, b) in enumerate(_chunks(len(order), parts)):
        arrays: dict[str, np.ndarray] = {}
        for name, (x, y) in splits.items():
            idx = [i for n, i in order[a:b] if n == name]
            if not idx:
                continue
            lo, hi = idx[0], idx[-1] + 1
            pieces = [(lo + s, lo + e) for s, e in _chunks(hi - lo, workers * 4)]
            blobs = [
                blob
                for part in _parallel(_encode, [x[s:e] for s, e in pieces], workers)
                for blob in part
            ]
            sizes = np.array([len(bl) for bl in blobs], np.int64)
            arrays[f"{name}_blob"] = np.frombuffer(b"".join(blobs), np.uint8)
            arrays[f"{name}_offsets"] = np.concatenate([[0], np.cumsum(sizes)])
            arrays[f"{name}_range"] = np.array([lo, hi, len(x)], np.int64)
            arrays[f"{name}_y"] = y[lo:hi]
            arrays[f"{name}_sha_x"] = np.array(_sha(x))
            arrays[f"{name}_sha_y"] = np.array(_sha(y))
        np.savez(out / f"part-{k}.npz", **arrays)  # type: ignore[arg-type]
        print(f"part-{k}.npz: {(out / f'part-{k}.npz').stat().st_size / 2**20:.1f} MiB")


def unpack(part_files: list[Path], out: Path) -> None:
    """Decode the parts, check the SHA-256 of the whole arrays, write train.npz/test.npz."""
    workers = os.cpu_count() or 1
    got: dict[str, dict] = {}
    for f in part_files:
        with np.load(f) as d:
            names = sorted({k.rsplit("_", 1)[0] for k in d.files if k.endswith("_range")})
            for name in names:
                lo, hi, n = (int(v) for v in d[f"{name}_range"])
                blob, offs = d[f"{name}_blob"].tobytes(), d[f"{name}_offsets"]
                blobs = [blob[offs[i] : offs[i + 1]] for i in range(hi - lo)]
                pieces = [blobs[s:e] for s, e in _chunks(len(blobs), workers * 4)]
                x = np.concatenate(_parallel(_decode, pieces, workers))
                g = got.setdefault(
                    name,
                    {
                        "x": np.zeros((n, 32, 32, 3), np.uint8),
                        "y": np.zeros(n, d[f"{name}_y"].dtype),
                        "seen": np.zeros(n, bool),
                        "sha_x": str(d[f"{name}_sha_x"]),
                        "sha_y": str(d[f"{name}_sha_y"]),
                    },
                )
                g["x"][lo:hi], g["y"][lo:hi], g["seen"][lo:hi] = x, d[f"{name}_y"], True
    # Every split is checked before anything is written; each file appears whole or not at all.
    for name, g in got.items():
        if not g["seen"].all():
            raise SystemExit(f"{name}: images {np.flatnonzero(~g['seen'])[:5]}... missing")
        if _sha(g["x"]) != g["sha_x"] or _sha(g["y"]) != g["sha_y"]:
            raise SystemExit(f"{name}: SHA-256 of the decoded arrays does not match the original")
    out.mkdir(parents=True, exist_ok=True)
    for name, g in got.items():
        tmp = out / f".{name}.tmp.npz"
        np.savez(tmp, x=g["x"], y=g["y"])
        tmp.replace(out / f"{name}.npz")
        print(f"{name}: {len(g['x'])} images, SHA-256 of x and y match the original")


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack")
    p.add_argument("--src", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--parts", type=int, default=2)
    u = sub.add_parser("unpack")
    u.add_argument("--parts", type=Path, nargs="+", required=True)
    u.add_argument("--out", type=Path, required=True)
    a = ap.parse_args()
    if a.cmd == "pack":
        pack(a.src, a.out, a.parts)
    else:
        unpack(a.parts, a.out)


if __name__ == "__main__":
    main()
