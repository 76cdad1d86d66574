"""Atomic writes and ``gs://`` access.

Every file a stage produces is written to a temporary name in the same folder and then renamed
into place (``os.replace`` is atomic on POSIX), so a killed step never leaves a half-written
artifact that a retry or the KFP cache would pick up. ``gs://`` objects go through
google-cloud-storage with Application Default Credentials (``STORAGE_EMULATOR_HOST`` is honoured
for tests against a local emulator).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kd.errors import ArtifactError, DataError


def is_gcs(uri: str) -> bool:
    """True for a ``gs://bucket/path`` URI."""
    return str(uri).startswith("gs://")


def split_gcs(uri: str) -> tuple[str, str]:
    """``gs://bucket/a/b`` -> ``("bucket", "a/b")``."""
    if not is_gcs(uri):
        raise DataError(f"{uri!r} is not a gs:// URI: write it as gs://BUCKET/PATH")
    rest = uri[len("gs://") :]
    bucket, _, path = rest.partition("/")
    if not bucket:
        raise DataError(f"{uri!r} has no bucket: write it as gs://BUCKET/PATH")
    return bucket, path.strip("/")


def gcs_client() -> Any:
    """A google-cloud-storage client: Application Default Credentials, or anonymous against
    ``STORAGE_EMULATOR_HOST`` (the local emulator the tests start)."""
    from google.cloud import storage  # type: ignore[attr-defined]  # heavy; only for gs://

    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project="emulator", credentials=AnonymousCredentials())
    try:
        return storage.Client()
    except Exception as exc:  # google.auth.exceptions.DefaultCredentialsError and friends
        raise DataError(
            f"cannot open Google Cloud Storage: {exc}. Fix: run "
            "`gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS"
        ) from exc


def gcs_exists(uri: str) -> bool:
    """Whether an object, or any object under the prefix, exists at ``uri``.

    Raises DataError when the storage cannot be opened or read (credentials, bucket)."""
    bucket_name, path = split_gcs(uri)
    client = gcs_client()
    try:
        if path and client.bucket(bucket_name).blob(path).exists():
            return True
        prefix = path + "/" if path else ""
        return any(True for _ in client.list_blobs(bucket_name, prefix=prefix, max_results=1))
    except Exception as exc:
        raise DataError(
            f"cannot read {uri}: {exc}. Fix: check the bucket and path (gsutil ls {uri}) and "
            "that your credentials can read it"
        ) from exc


def gcs_download(uri: str, dest: Path) -> Path:
    """Download one object (or every object under a prefix) to ``dest``.

    A single object lands at ``dest`` (a file path); a prefix lands under ``dest`` (a folder),
    keeping relative paths. Raises DataError when nothing exists at ``uri``.
    """
    bucket_name, path = split_gcs(uri)
    client = gcs_client()
    bucket = client.bucket(bucket_name)
    blob = bucket.blob(path) if path else None
    try:
        if blob is not None and blob.exists():
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".part")
            blob.download_to_filename(str(tmp))
            os.replace(tmp, dest)
            return dest
        prefix = path + "/" if path else ""
        blobs = [
            b for b in client.list_blobs(bucket_name, prefix=prefix) if not b.name.endswith("/")
        ]
    except DataError:
        raise
    except Exception as exc:
        raise DataError(
            f"cannot read {uri}: {exc}. Fix: check the bucket and path (gsutil ls {uri}) and "
            "that your credentials can read it"
        ) from exc
    if not blobs:
        raise DataError(
            f"no object at {uri}: check the bucket and path (gsutil ls {uri}) and that your "
            "credentials can read it"
        )
    for b in blobs:
        rel = b.name[len(prefix) :]
        target = safe_join(dest, rel)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(target.name + ".part")
        b.download_to_filename(str(tmp))
        os.replace(tmp, target)
    return dest


def safe_join(root: Path, rel: str) -> Path:
    """``root / rel``, refusing a ``rel`` that is absolute or escapes ``root`` (``..``)."""
    if rel.startswith(("/", "\\")) or os.path.isabs(rel):
        raise DataError(f"refusing absolute member path {rel!r}: it would land outside {root}")
    target = (root / rel).resolve()
    if not target.is_relative_to(root.resolve()):
        raise DataError(f"refusing member path {rel!r}: it would land outside {root}")
    return target


def _disk_full_message(path: Path, exc: OSError) -> str:
    return (
        f"cannot write {path}: {exc.strerror or exc}. Fix: free disk space or choose another "
        "output location; nothing was left half-written"
    )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    Works for a file or a folder written at the temporary path. On any error the temporary
    is removed and ``path`` is left as it was.
    """
    final = Path(path)
    try:
        final.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ArtifactError(
            f"cannot create output folder {final.parent}: {exc.strerror or exc}. Fix: choose a "
            "writable output location"
        ) from exc
    if not os.access(final.parent, os.W_OK):
        raise ArtifactError(
            f"output location {final.parent} is not writable. Fix: choose a writable output "
            "location or fix its permissions"
        )
    fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    os.close(fd)
    os.unlink(tmp_name)
    tmp = Path(tmp_name)
    try:
        yield tmp
        if final.is_dir() and not final.is_symlink():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except OSError as exc:
        _remove(tmp)
        if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            raise ArtifactError(_disk_full_message(final, exc)) from exc
        raise
    except BaseException:
        _remove(tmp)
        raise


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p, ignore_errors=True)
    elif p.exists() or p.is_symlink():
        p.unlink()


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_metrics_file(path: str | os.PathLike[str], metadata: dict[str, Any]) -> Path:
    """Write a Metrics / ClassificationMetrics artifact's values into its own file (JSON).

    KFP records those values in the executor output only and leaves the artifact's file
    unwritten; ``kfp.local``'s cache treats an output whose file is missing as a miss, so
    without this no training stage was ever reused. Every component writes each such output.
    """
    return write_text_atomic(path, json.dumps(metadata, indent=1, sort_keys=True) + "\n")


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)
