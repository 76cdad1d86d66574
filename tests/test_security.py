"""Security properties that are not covered elsewhere: no credential in the compiled pipeline,
Application Default Credentials for GCS, pinned dependencies.

(Covered elsewhere: safe_mode model loading in test_train.py and test_predict.py, the
restricted unpickler and tar checks in test_data.py, the non-root image without credentials in
test_docker_image.py, tokens kept out of submit errors in test_submit.py.)
"""

import json
import re
from pathlib import Path

import pipeline
from kd import storage

ROOT = Path(__file__).resolve().parents[1]


def test_compiled_pipeline_carries_no_credentials(tmp_path, monkeypatch):
    marker = "sEcReT-marker-7f3a"
    cred = tmp_path / "sa.json"
    cred.write_text(json.dumps({"private_key": marker}))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(cred))
    monkeypatch.setenv("KFP_TOKEN", marker)
    for which in ("main", "sweep"):
        text = pipeline.compile_pipeline(tmp_path / f"{which}.yaml", which=which).read_text()
        assert marker not in text and str(cred) not in text
        assert "GOOGLE_APPLICATION_CREDENTIALS" not in text


def test_gcs_uses_application_default_credentials(monkeypatch):
    calls = []

    class FakeClient:
        def __init__(self, *args, **kwargs):
            calls.append((args, kwargs))

    import google.cloud.storage

    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.setattr(google.cloud.storage, "Client", FakeClient)
    storage.gcs_client()
    assert calls == [((), {})]  # no explicit key or project: ADC decides


def test_dependencies_are_pinned():
    for name in ("requirements.txt", "requirements-dev.txt"):
        for line in (ROOT / name).read_text().splitlines():
            line = line.split("#")[0].strip()
            if not line or line.startswith("-r "):
                continue
            assert re.fullmatch(r"[A-Za-z0-9_.\[\]-]+==[0-9][0-9A-Za-z.]*", line), line
