"""Shared pytest fixtures.

``gcs_emulator``: a real GCS emulator (see ``tests/gcs.py``). One server runs for the whole
session; each test gets it wiped, with an empty bucket ``kd-test`` and ``STORAGE_EMULATOR_HOST``
set (restored afterwards), and receives an anonymous ``google.cloud.storage.Client``::

    def test_upload(gcs_emulator, tmp_path):
        gcs_emulator.bucket("kd-test").blob("a.txt").upload_from_string("hi")

``docker_root``: a pipeline root for runs of the Docker runner (under the repository's
``runs/``, which the containers' non-root user can reach; pytest's own temporary folders are
private to root), removed afterwards. Without a Docker engine the test skips loudly, and with
``CI=true`` it fails instead.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

try:  # tests/ as a package (tests/__init__.py) or as a plain folder on sys.path
    from tests import gcs
except ImportError:  # pragma: no cover - depends on how pytest imports conftest
    import gcs  # type: ignore[no-redef]


@pytest.fixture(scope="session")
def _gcs_server() -> Iterator[tuple[Any, str]]:
    server, url = gcs.start_emulator(gcs.DEFAULT_BUCKET)
    try:
        yield server, url
    finally:
        server.stop()


@pytest.fixture
def gcs_emulator(_gcs_server: tuple[Any, str]) -> Iterator[Any]:
    """A storage client on a freshly wiped emulator holding the empty bucket ``kd-test``."""
    server, url = _gcs_server
    gcs.reset(server, gcs.DEFAULT_BUCKET)
    with gcs.emulator_env(url):
        yield gcs.client()


@pytest.fixture
def docker_root() -> Iterator[Path]:
    try:
        import docker

        docker.from_env().ping()
    except Exception:
        msg = "Docker engine not running: run docker/install_engine.sh (make engine)"
        if os.environ.get("CI") == "true":
            pytest.fail(msg)
        pytest.skip(msg)
    runs = Path(__file__).resolve().parents[1] / "runs"
    runs.mkdir(exist_ok=True)
    root = Path(tempfile.mkdtemp(prefix="docker-e2e-", dir=runs))
    root.chmod(0o755)
    yield root
    shutil.rmtree(root, ignore_errors=True)
