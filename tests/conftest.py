"""Shared pytest fixtures.

``gcs_emulator``: a real GCS emulator (see ``tests/gcs.py``). One server runs for the whole
session; each test gets it wiped, with an empty bucket ``kd-test`` and ``STORAGE_EMULATOR_HOST``
set (restored afterwards), and receives an anonymous ``google.cloud.storage.Client``::

    def test_upload(gcs_emulator, tmp_path):
        gcs_emulator.bucket("kd-test").blob("a.txt").upload_from_string("hi")
"""

from __future__ import annotations

from collections.abc import Iterator
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
