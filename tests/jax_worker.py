"""Runs under KERAS_BACKEND=jax (see test_jax_backend.py): KD loss and a short training."""

import json
import sys

import keras
import numpy as np

from kd import train as kt
from kd.config import DistillConfig, StudentConfig
from kd.data import load_cifar10
from kd.distill import distill_student, kd_loss_reference, make_distiller
from kd.model_folder import load_model
from kd.train import train_student_scratch

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

# Device-resident batches (the default on JAX with a GPU) against batches the host gathers
# (the default here, on JAX's CPU backend): the same bytes, a partial last batch included, and
# the same training to the bit.
x, yb = data.x_train[:70], data.y_train[:70]
dev = kt.BatchSequence(x, yb, 32, seed=3, shuffle=True, augment=True, on_device=True)
host = kt.BatchSequence(x, yb, 32, seed=3, shuffle=True, augment=True)
same_batches, device_arrays = host._device is None, True
for epoch in range(2):
    for i in range(len(dev)):  # 32, 32, 6
        (a_in, a_y), (b_in, b_y) = dev.batch(epoch, i), host.batch(epoch, i)
        device_arrays &= not isinstance(a_in["image"], np.ndarray)
        same_batches &= a_in["image"].shape == b_in["image"].shape
        same_batches &= np.array_equal(np.asarray(a_in["image"]), b_in["image"])
        same_batches &= np.array_equal(a_in["augment"], b_in["augment"])
        same_batches &= np.array_equal(np.asarray(a_y), b_y)


# Mixed views (DistillConfig.teacher_mixup_views): blended on the device from the cache's
# (partner, weight) rows, the same bytes and labels as the host's blends.
from kd.distill import cache_teacher_views  # noqa: E402

views = cache_teacher_views(teacher, x, 1, seed=2, mixup_views=3)
mix_dev = kt.BatchSequence(
    x, yb, 32, seed=3, shuffle=True, augment=True, on_device=True, views=views
)
mix_host = kt.BatchSequence(x, yb, 32, seed=3, shuffle=True, augment=True, views=views)
same_mixed = mix_host._device is None
for epoch in range(2):
    for i in range(len(mix_dev)):
        (a_in, a_y), (b_in, b_y) = mix_dev.batch(epoch, i), mix_host.batch(epoch, i)
        same_mixed &= not isinstance(a_in["image"], np.ndarray)
        same_mixed &= np.array_equal(np.asarray(a_in["image"]), b_in["image"])
        same_mixed &= np.array_equal(np.asarray(a_y), b_y)
        same_mixed &= np.array_equal(a_in["teacher_logits"], b_in["teacher_logits"])


class DeviceBatches(kt.BatchSequence):
    made = 0

    def __init__(self, *args, **kwargs):
        super().__init__(*args, on_device=True, **kwargs)
        DeviceBatches.made += 1


kt.BatchSequence = DeviceBatches
try:
    train_student_scratch(tr, va, StudentConfig(**cfg), f"{out}/scratch-dev", log=lambda m: None)
finally:
    kt.BatchSequence = DeviceBatches.__bases__[0]
device_arrays &= DeviceBatches.made == 2  # the training and the validation sequence
same_training = all(
    np.array_equal(a, b)
    for a, b in zip(
        teacher.get_weights(), load_model(f"{out}/scratch-dev").get_weights(), strict=True
    )
)
before = [w.copy() for w in teacher.get_weights()]
res = distill_student(teacher, tr, va, DistillConfig(**cfg), f"{out}/distill", log=lambda m: None)
unchanged = all(np.array_equal(a, b) for a, b in zip(before, teacher.get_weights(), strict=True))
logits = np.asarray(res.model.predict(data.x_test[:8].astype("float32"), verbose=0))
# Cached teacher logits (DistillConfig.teacher_views, with mixed views) with device-resident
# batches: the batch's images (blends included) come from the device, its crop rows and
# teacher logits from the host's cache.
mixed_cfg = DistillConfig(**cfg, teacher_views=2, teacher_mixup_views=2)
DeviceBatches.made = 0
kt.BatchSequence = DeviceBatches
try:
    cached = distill_student(teacher, tr, va, mixed_cfg, f"{out}/cached", log=lambda m: None)
finally:
    kt.BatchSequence = DeviceBatches.__bases__[0]
cached_host = distill_student(teacher, tr, va, mixed_cfg, f"{out}/cached-host", log=lambda m: None)
same_cached_training = all(
    np.array_equal(a, b)
    for a, b in zip(cached.model.get_weights(), cached_host.model.get_weights(), strict=True)
)
print(
    json.dumps(
        {
            "loss": loss,
            "reference": kd_loss_reference(y, s, t, 5.0, 0.1),
            "teacher_unchanged": unchanged,
            "history": res.history,
            "logits": logits.tolist(),
            "device_batches_are_device_arrays": bool(device_arrays),
            "device_and_host_batches_identical": bool(same_batches),
            "device_and_host_training_identical": bool(same_training),
            "cached_on_device": DeviceBatches.made == 2,
            "cached_history": cached.history,
            "cached_device_and_host_training_identical": bool(same_cached_training),
            "mixed_device_and_host_batches_identical": bool(same_mixed),
        }
    )
)
