"""A real Google Cloud Storage emulator for tests (package ``gcp_storage_emulator``).

:func:`start_emulator` runs the emulator in-process on 127.0.0.1 on a free port, with an
in-memory store and the bucket :data:`DEFAULT_BUCKET` created. :func:`gcs_emulator` is the
context manager the ``gcs_emulator`` fixture (``tests/conftest.py``) is built on: it points
``STORAGE_EMULATOR_HOST`` at the server (so :func:`kd.storage.gcs_client` talks to it) and
yields an anonymous ``google.cloud.storage.Client``::

    with gcs_emulator() as client:
        client.bucket("kd-test").blob("data/x.npz").upload_from_filename("x.npz")
        load_cifar10("gs://kd-test/data/x.npz")
"""

from __future__ import annotations

import contextlib
import os
import socket
import time
from collections.abc import Iterator
from typing import Any

DEFAULT_BUCKET = "kd-test"
HOST = "127.0.0.1"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago.

    Returns:
        The port number.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, timeout_s: float = 10.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with socket.create_connection((HOST, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"GCS emulator did not start listening on {HOST}:{port} within {timeout_s}s. "
                    "Fix: check that gcp-storage-emulator is installed (requirements-dev.txt)"
                ) from None
            time.sleep(0.05)


def start_emulator(bucket: str = DEFAULT_BUCKET, attempts: int = 5) -> tuple[Any, str]:
    """Start an in-memory emulator on a free port.

    Args:
        bucket: bucket created at start ("" for none).
        attempts: ports to try (another process may grab the free port first).

    Returns:
        ``(server, url)``: the running server (call ``server.stop()``) and its
        ``http://127.0.0.1:PORT`` URL, the value for ``STORAGE_EMULATOR_HOST``.
    """
    from gcp_storage_emulator.server import create_server

    last: Exception | None = None
    for _ in range(attempts):
        port = free_port()
        try:
            server = create_server(HOST, port, in_memory=True, default_bucket=bucket or None)
            server.start()
        except OSError as exc:  # port taken in between
            last = exc
            continue
        _wait_listening(port)
        return server, f"http://{HOST}:{port}"
    raise RuntimeError(f"could not start the GCS emulator after {attempts} ports: {last}")


def reset(server: Any, bucket: str = DEFAULT_BUCKET) -> None:
    """Delete every bucket and object, then re-create ``bucket`` (empty).

    Args:
        server: a server from :func:`start_emulator`.
        bucket: bucket to re-create ("" for none).
    """
    from gcp_storage_emulator.handlers import buckets

    server.wipe(keep_buckets=False)
    if bucket:
        buckets.create_bucket(bucket, server._storage)


def client() -> Any:
    """An anonymous storage client for the emulator at ``STORAGE_EMULATOR_HOST``.

    Returns:
        A ``google.cloud.storage.Client``.
    """
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(project="test", credentials=AnonymousCredentials())


@contextlib.contextmanager
def emulator_env(url: str) -> Iterator[None]:
    """Set ``STORAGE_EMULATOR_HOST`` to ``url`` for the block, then restore it.

    Args:
        url: the emulator URL.
    """
    old = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = url
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("STORAGE_EMULATOR_HOST", None)
        else:
            os.environ["STORAGE_EMULATOR_HOST"] = old


@contextlib.contextmanager
def gcs_emulator(bucket: str = DEFAULT_BUCKET) -> Iterator[Any]:
    """Run an emulator for the block, with ``STORAGE_EMULATOR_HOST`` pointing at it.

    Args:
        bucket: bucket created at start.

    Yields:
        An anonymous ``google.cloud.storage.Client`` talking to the emulator.
    """
    server, url = start_emulator(bucket)
    try:
        with emulator_env(url):
            yield client()
    finally:
        server.stop()
