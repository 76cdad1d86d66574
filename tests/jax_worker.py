"""Runs under KERAS_BACKEND=jax (see test_jax_backend.py): KD loss and a short training."""

import json
import sys

import keras
import numpy as np

from kd.config import DistillConfig, StudentConfig
from kd.data import load_cifar10
from kd.distill import kd_loss_reference, make_distiller
from kd.train import distill_student, load_model, train_student_scratch

assert keras.backend.backend() == "jax", keras.backend.backend()
out = sys.argv[1]
rng = np.random.default_rng(0)

# The distiller's loss against the NumPy reference on fixed logits.
s, t, y = rng.normal(size=(6, 10)) * 3, rng.normal(size=(6, 10)) * 3, rng.integers(0, 10, 6)


def linear(w):
    inp = keras.Input((w.shape[0],))
    layer = keras.layers.Dense(w.shape[1], use_bias=False)
    m = keras.Model(inp, layer(inp))
    layer.set_weights([w.astype("float32")])
    return m


d = make_distiller(linear(t), linear(s), DistillConfig(temperature=5.0, alpha=0.1))
d.compile(optimizer="sgd", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
x = np.eye(6, dtype="float32")
loss = float(d.compute_loss(x=x, y=y, y_pred=d(x), training=False))

data = load_cifar10("sample")
tr, va = (
    (data.x_train[:200], data.y_train[:200]),
    (data.x_train[2000:2100], data.y_train[2000:2100]),
)
cfg = {"epochs": 2, "batch_size": 50, "divergence_check_epoch": 0}
train_student_scratch(tr, va, StudentConfig(**cfg), f"{out}/scratch", log=lambda m: None)
teacher = load_model(f"{out}/scratch")
before = [w.copy() for w in teacher.get_weights()]
res = distill_student(teacher, tr, va, DistillConfig(**cfg), f"{out}/distill", log=lambda m: None)
unchanged = all(np.array_equal(a, b) for a, b in zip(before, teacher.get_weights(), strict=True))
logits = np.asarray(res.model.predict(data.x_test[:8].astype("float32"), verbose=0))
print(
    json.dumps(
        {
            "loss": loss,
            "reference": kd_loss_reference(y, s, t, 5.0, 0.1),
            "teacher_unchanged": unchanged,
            "history": res.history,
            "logits": logits.tolist(),
        }
    )
)
