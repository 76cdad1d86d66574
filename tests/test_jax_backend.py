"""The same library code on the JAX backend (how the GPU machine, which has no TensorFlow,
runs it): the KD loss, distillation with a frozen teacher, batches gathered (and mixed views
blended) on the device (the same bytes and the same training as batches the host gathers),
and a model saved under JAX that TensorFlow loads and predicts with identically."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax")


@pytest.mark.slow
def test_library_runs_on_jax(tmp_path):
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    worker = Path(__file__).with_name("jax_worker.py")
    r = subprocess.run(
        [sys.executable, str(worker), str(tmp_path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["loss"] == pytest.approx(out["reference"], rel=1e-4)
    assert out["teacher_unchanged"] is True
    assert out["history"]["epoch"] == [1, 2] and "val_accuracy" in out["history"]
    assert out["device_batches_are_device_arrays"] is True
    assert out["device_and_host_batches_identical"] is True
    assert out["device_and_host_training_identical"] is True
    cached = out["cached_history"]
    assert out["cached_on_device"] is True and cached["epoch"] == [1, 2]
    assert all(np.isfinite(cached[k]).all() for k in ("loss", "distillation_loss", "val_loss"))
    assert cached["distillation_loss"][0] > 0
    assert out["cached_device_and_host_training_identical"] is True
    assert out["mixed_device_and_host_batches_identical"] is True

    from kd.data import load_cifar10
    from kd.model_folder import load_model

    model = load_model(tmp_path / "distill")  # saved under JAX, loaded under TensorFlow
    x = load_cifar10("sample").x_test[:8].astype("float32")
    np.testing.assert_allclose(model.predict(x, verbose=0), out["logits"], rtol=1e-4, atol=1e-4)
